// Command plotbench draws an SVG line chart from a CSV of benchmark results:
// one line with point markers per series, axes with ticks, a legend and a
// title. Standard library only. scripts/plots.sh regenerates docs/img from
// docs/data with it.
//
//	go run ./cmd/plotbench -in docs/data/wan-goodput-vs-loss.csv -out x.svg \
//	    -x loss_percent -y goodput_mbit_s -series transport -logy
//
// The CSV's first non-comment line names the columns; lines starting with
// '#' are comments. A row whose x or y cell is empty is left out.
package main

import (
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
)

func main() {
	err := run(os.Args[1:], os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "plotbench:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("plotbench", flag.ContinueOnError)
	in := fs.String("in", "", "CSV file to read (required)")
	out := fs.String("out", "-", "SVG file to write, - for standard output")
	xcol := fs.String("x", "", "column for the x axis (required)")
	ycol := fs.String("y", "", "column for the y axis (required)")
	scol := fs.String("series", "", "column naming each row's series (default: one series)")
	var c chart
	fs.StringVar(&c.title, "title", "", "chart title")
	fs.StringVar(&c.xlabel, "xlabel", "", "x axis label (default: the x column)")
	fs.StringVar(&c.ylabel, "ylabel", "", "y axis label (default: the y column)")
	fs.BoolVar(&c.logx, "logx", false, "logarithmic x axis (values must be positive)")
	fs.BoolVar(&c.logy, "logy", false, "logarithmic y axis (values must be positive)")
	xticks := fs.String("xticks", "", "comma-separated x tick values instead of automatic ones")
	hline := fs.String("hline", "", "dashed reference line across the chart, VALUE or VALUE:LABEL")
	fs.IntVar(&c.width, "width", 720, "width in pixels")
	fs.IntVar(&c.height, "height", 420, "height in pixels")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *in == "" || *xcol == "" || *ycol == "" {
		return errors.New("-in, -x and -y are required")
	}
	if c.xlabel == "" {
		c.xlabel = *xcol
	}
	if c.ylabel == "" {
		c.ylabel = *ycol
	}
	if *xticks != "" {
		for _, s := range strings.Split(*xticks, ",") {
			v, err := parseNumber(s)
			if err != nil {
				return fmt.Errorf("-xticks: %w", err)
			}
			c.xticks = append(c.xticks, v)
		}
	}
	if *hline != "" {
		v, label, _ := strings.Cut(*hline, ":")
		y, err := parseNumber(v)
		if err != nil {
			return fmt.Errorf("-hline: %w", err)
		}
		c.hline, c.hlineLabel = &y, label
	}

	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	t, err := parseCSV(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	ss, err := t.series(*xcol, *ycol, *scol)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	var buf bytes.Buffer
	if err := c.render(&buf, ss); err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	if *out == "-" {
		_, err = stdout.Write(buf.Bytes())
		return err
	}
	return os.WriteFile(*out, buf.Bytes(), 0o644)
}

// table is a parsed CSV: the column names and the data rows, each with the
// line it started on.
type table struct {
	header []string
	rows   [][]string
	lines  []int
}

// parseCSV reads a CSV whose first non-comment line is the header. Every
// row must have as many fields as the header; fields are trimmed.
func parseCSV(r io.Reader) (*table, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1 // checked below, with a clearer message
	t := &table{}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		line, _ := cr.FieldPos(0)
		for i := range rec {
			rec[i] = strings.TrimSpace(rec[i])
		}
		if t.header == nil {
			seen := map[string]bool{}
			for i, name := range rec {
				if name == "" {
					return nil, fmt.Errorf("line %d: header column %d has no name", line, i+1)
				}
				if seen[name] {
					return nil, fmt.Errorf("line %d: header names column %q twice", line, name)
				}
				seen[name] = true
			}
			t.header = rec
			continue
		}
		if len(rec) != len(t.header) {
			return nil, fmt.Errorf("line %d: %d fields, the header has %d", line, len(rec), len(t.header))
		}
		t.rows = append(t.rows, rec)
		t.lines = append(t.lines, line)
	}
	if t.header == nil {
		return nil, errors.New("no header line")
	}
	return t, nil
}

func (t *table) column(name string) (int, error) {
	for i, h := range t.header {
		if h == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no column %q (columns: %s)", name, strings.Join(t.header, ", "))
}

type point struct{ x, y float64 }

type series struct {
	name   string
	points []point // sorted by x
}

// series groups the rows by the series column (all in one series if scol
// is empty), in order of first appearance. Rows with an empty x or y cell
// are left out.
func (t *table) series(xcol, ycol, scol string) ([]series, error) {
	xi, err := t.column(xcol)
	if err != nil {
		return nil, err
	}
	yi, err := t.column(ycol)
	if err != nil {
		return nil, err
	}
	si := -1
	if scol != "" {
		if si, err = t.column(scol); err != nil {
			return nil, err
		}
	}
	var ss []series
	index := map[string]int{}
	for r, rec := range t.rows {
		if rec[xi] == "" || rec[yi] == "" {
			continue
		}
		x, err := parseNumber(rec[xi])
		if err != nil {
			return nil, fmt.Errorf("line %d, column %s: %w", t.lines[r], xcol, err)
		}
		y, err := parseNumber(rec[yi])
		if err != nil {
			return nil, fmt.Errorf("line %d, column %s: %w", t.lines[r], ycol, err)
		}
		name := ycol
		if si >= 0 {
			name = rec[si]
		}
		i, ok := index[name]
		if !ok {
			i = len(ss)
			index[name] = i
			ss = append(ss, series{name: name})
		}
		ss[i].points = append(ss[i].points, point{x, y})
	}
	if len(ss) == 0 {
		return nil, errors.New("no data points")
	}
	for _, s := range ss {
		sort.SliceStable(s.points, func(a, b int) bool { return s.points[a].x < s.points[b].x })
	}
	return ss, nil
}

func parseNumber(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a finite number", s)
	}
	return v, nil
}

// chart holds the presentation options.
type chart struct {
	title, xlabel, ylabel string
	logx, logy            bool
	xticks                []float64
	hline                 *float64
	hlineLabel            string
	width, height         int
}

// Okabe–Ito colours (distinguishable with colour blindness), and one marker
// shape per series as a second cue.
var colours = []string{"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"}

const (
	fontSize  = 12
	charWidth = 7 // rough advance of a 12px sans-serif character
	maxLegend = 24
	inset     = 8 // pixels between the axes and the outermost data
)

func (c *chart) render(w io.Writer, ss []series) error {
	if c.width < 200 || c.height < 150 || c.width > 10000 || c.height > 10000 {
		return fmt.Errorf("size %dx%d out of range (200x150 to 10000x10000)", c.width, c.height)
	}
	var xs, ys []float64
	for _, s := range ss {
		for _, p := range s.points {
			xs = append(xs, p.x)
			ys = append(ys, p.y)
		}
	}
	xs = append(xs, c.xticks...)
	if c.hline != nil {
		ys = append(ys, *c.hline)
	}

	legendChars := 0
	for _, s := range ss {
		legendChars = max(legendChars, len([]rune(legendName(s.name))))
	}
	left, right := 72.0, float64(c.width)-float64(36+charWidth*legendChars)-16
	top, bottom := 44.0, float64(c.height)-54
	if right-left < 100 {
		return errors.New("chart too narrow for its legend")
	}
	xa, err := newAxis("x", xs, c.logx, c.xticks, false, left+inset, right-inset)
	if err != nil {
		return err
	}
	ya, err := newAxis("y", ys, c.logy, nil, true, bottom-inset, top+inset)
	if err != nil {
		return err
	}

	b := &svgWriter{}
	b.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="%d">`+"\n",
		c.width, c.height, c.width, c.height, fontSize)
	b.printf(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	b.text(float64(c.width)/2, 24, "middle", ink+` font-size="16" font-weight="bold"`, c.title)

	// Grid, ticks and tick labels.
	b.printf(`<g stroke="#e6e6e6" stroke-width="1">` + "\n")
	for _, v := range xa.minor {
		b.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#f3f3f3"/>`+"\n", f1(xa.pos(v)), f1(top), f1(xa.pos(v)), f1(bottom))
	}
	for _, v := range ya.minor {
		b.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#f3f3f3"/>`+"\n", f1(left), f1(ya.pos(v)), f1(right), f1(ya.pos(v)))
	}
	for _, t := range xa.ticks {
		b.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", f1(xa.pos(t.v)), f1(top), f1(xa.pos(t.v)), f1(bottom))
	}
	for _, t := range ya.ticks {
		b.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", f1(left), f1(ya.pos(t.v)), f1(right), f1(ya.pos(t.v)))
	}
	b.printf("</g>\n")
	b.printf(`<rect x="%s" y="%s" width="%s" height="%s" fill="none" stroke="#333333"/>`+"\n", f1(left), f1(top), f1(right-left), f1(bottom-top))
	for _, t := range xa.ticks {
		x := xa.pos(t.v)
		b.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#333333"/>`+"\n", f1(x), f1(bottom), f1(x), f1(bottom+5))
		b.text(x, bottom+19, "middle", ink, t.label)
	}
	for _, t := range ya.ticks {
		y := ya.pos(t.v)
		b.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#333333"/>`+"\n", f1(left-5), f1(y), f1(left), f1(y))
		b.text(left-8, y+4, "end", ink, t.label)
	}
	b.text((left+right)/2, float64(c.height)-14, "middle", ink, c.xlabel)
	b.printf(`<g transform="translate(18 %s) rotate(-90)">`, f1((top+bottom)/2))
	b.text(0, 0, "middle", ink, c.ylabel)
	b.printf("</g>\n")

	if c.hline != nil {
		y := ya.pos(*c.hline)
		b.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#666666" stroke-dasharray="6 4"/>`+"\n", f1(left), f1(y), f1(right), f1(y))
		ly := y - 5
		if ly-fontSize < top { // no room above: label below the line
			ly = y + fontSize + 3
		}
		b.text(right-4, ly, "end", `fill="#444444"`, c.hlineLabel)
	}

	// One polyline and its markers per series.
	for i, s := range ss {
		col := colours[i%len(colours)]
		b.printf(`<g fill="%s" stroke="%s">`+"\n", col, col)
		var pts []string
		for _, p := range s.points {
			pts = append(pts, f1(xa.pos(p.x))+","+f1(ya.pos(p.y)))
		}
		b.printf(`<polyline fill="none" stroke-width="2" points="%s"/>`+"\n", strings.Join(pts, " "))
		for _, p := range s.points {
			b.marker(i, xa.pos(p.x), ya.pos(p.y))
		}
		b.printf("</g>\n")
	}

	// Legend, right of the plot so it never covers data.
	lx := right + 16
	for i, s := range ss {
		col := colours[i%len(colours)]
		y := top + 8 + float64(i)*20
		b.printf(`<g fill="%s" stroke="%s"><line x1="%s" y1="%s" x2="%s" y2="%s" stroke-width="2"/>`, col, col, f1(lx), f1(y), f1(lx+24), f1(y))
		b.marker(i, lx+12, y)
		b.printf("</g>\n")
		b.text(lx+30, y+4, "start", ink, legendName(s.name))
	}
	b.printf("</svg>\n")
	_, err = w.Write(b.Bytes())
	return err
}

func legendName(s string) string {
	if r := []rune(s); len(r) > maxLegend {
		return string(r[:maxLegend-1]) + "…"
	}
	return s
}

type svgWriter struct{ bytes.Buffer }

func (b *svgWriter) printf(format string, args ...any) { fmt.Fprintf(b, format, args...) }

// ink is the colour of most text.
const ink = `fill="#222222"`

// text writes a <text> element; s is escaped (and invalid XML characters
// replaced), attrs is trusted attribute text.
func (b *svgWriter) text(x, y float64, anchor, attrs, s string) {
	if s == "" {
		return
	}
	b.printf(`<text x="%s" y="%s" text-anchor="%s" %s>`, f1(x), f1(y), anchor, attrs)
	xml.EscapeText(b, []byte(s)) // writes to a bytes.Buffer: cannot fail
	b.printf("</text>\n")
}

// marker draws series i's marker shape centred on (x, y).
func (b *svgWriter) marker(i int, x, y float64) {
	switch i % 5 {
	case 0:
		b.printf(`<circle cx="%s" cy="%s" r="4"/>`, f1(x), f1(y))
	case 1:
		b.printf(`<rect x="%s" y="%s" width="7" height="7"/>`, f1(x-3.5), f1(y-3.5))
	case 2:
		b.printf(`<path d="M%s %sl4.5 8h-9z"/>`, f1(x), f1(y-5))
	case 3:
		b.printf(`<path d="M%s %sl5 5-5 5-5-5z"/>`, f1(x), f1(y-5))
	case 4:
		b.printf(`<path d="M%s %sl4.5-8h-9z"/>`, f1(x), f1(y+5))
	}
	b.printf("\n")
}

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

type tick struct {
	v     float64
	label string
}

// axis maps data values to pixels, linearly or by log10.
type axis struct {
	log    bool
	lo, hi float64 // domain; log10 of the values on a log axis
	p0, p1 float64 // pixels for lo and hi
	ticks  []tick
	minor  []float64 // unlabelled grid lines (log axes)
}

func (a *axis) pos(v float64) float64 {
	if a.log {
		v = math.Log10(v)
	}
	return a.p0 + (v-a.lo)/(a.hi-a.lo)*(a.p1-a.p0)
}

// newAxis chooses the domain and ticks covering vals (explicit ticks if
// given). A linear axis with zeroBased starts at 0 when all values are
// positive.
func newAxis(name string, vals []float64, log bool, explicit []float64, zeroBased bool, p0, p1 float64) (*axis, error) {
	mn, mx := math.Inf(1), math.Inf(-1)
	for _, v := range vals {
		mn, mx = math.Min(mn, v), math.Max(mx, v)
	}
	a := &axis{log: log, p0: p0, p1: p1}
	if log {
		if mn <= 0 {
			return nil, fmt.Errorf("log %s axis: value %g is not positive", name, mn)
		}
		a.lo, a.hi = math.Floor(math.Log10(mn)), math.Ceil(math.Log10(mx))
		if a.lo < -300 || a.hi > 300 {
			return nil, fmt.Errorf("log %s axis: values %g to %g out of range", name, mn, mx)
		}
		if a.lo == a.hi {
			a.hi++
		}
		if explicit == nil {
			stride := math.Ceil((a.hi - a.lo + 1) / 8)
			for e := a.lo; e <= a.hi; e += stride {
				v := math.Pow(10, e)
				a.ticks = append(a.ticks, tick{v, shortNumber(v)})
			}
			if a.hi-a.lo <= 6 {
				for e := a.lo; e < a.hi; e++ {
					for m := 2.0; m <= 9; m++ {
						a.minor = append(a.minor, m*math.Pow(10, e))
					}
				}
			}
		}
	} else {
		if zeroBased {
			mn, mx = math.Min(mn, 0), math.Max(mx, 0)
		}
		if mn == mx {
			pad := math.Max(math.Abs(mn)/10, 1)
			mn, mx = mn-pad, mx+pad
		}
		a.lo, a.hi = mn, mx
		if explicit == nil {
			step := niceStep((mx - mn) / 6)
			a.lo, a.hi = math.Floor(mn/step)*step, math.Ceil(mx/step)*step
			n := math.Round((a.hi - a.lo) / step)
			if !(step > 0) || math.IsInf(step, 0) || math.IsInf(a.hi-a.lo, 0) || math.IsNaN(n) || n > 100 {
				return nil, fmt.Errorf("%s axis: cannot choose ticks for values %g to %g", name, mn, mx)
			}
			for i := 0.0; i <= n; i++ {
				v := a.lo + i*step
				a.ticks = append(a.ticks, tick{v, linearLabel(v, step)})
			}
		}
	}
	if math.IsInf(a.hi-a.lo, 0) || !(a.hi > a.lo) {
		return nil, fmt.Errorf("%s axis: values %g to %g cannot be plotted", name, mn, mx)
	}
	for _, v := range explicit {
		a.ticks = append(a.ticks, tick{v, shortNumber(v)})
	}
	return a, nil
}

// niceStep rounds a raw tick spacing up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

// linearLabel prints v with as many decimals as the step needs.
func linearLabel(v, step float64) string {
	if math.Abs(v) < step/2 {
		return "0"
	}
	d := max(0, int(-math.Floor(math.Log10(step)+1e-9)))
	if d > 6 || math.Abs(v) >= 1e6 {
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
	return strconv.FormatFloat(v, 'f', d, 64)
}

func shortNumber(v float64) string {
	if a := math.Abs(v); v != 0 && (a < 1e-4 || a >= 1e6) {
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
