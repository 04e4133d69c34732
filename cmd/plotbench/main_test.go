package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseCSV(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		header  []string
		rows    [][]string
		lines   []int
		wantErr string // substring; "" means success
	}{
		{
			name:   "plain",
			in:     "x,y\n1,2\n3,4\n",
			header: []string{"x", "y"},
			rows:   [][]string{{"1", "2"}, {"3", "4"}},
			lines:  []int{2, 3},
		},
		{
			name:   "comments, blank lines and spaces",
			in:     "# from BENCHMARKS.md 4.1\nx, y ,s\n\n# a note\n 1 , 2,sudp\n3,4, tcp bbr\n",
			header: []string{"x", "y", "s"},
			rows:   [][]string{{"1", "2", "sudp"}, {"3", "4", "tcp bbr"}},
			lines:  []int{5, 6},
		},
		{
			name:   "quoted field with a comma, no final newline",
			in:     "x,s\n1,\"a, b\"",
			header: []string{"x", "s"},
			rows:   [][]string{{"1", "a, b"}},
			lines:  []int{2},
		},
		{
			name:   "empty cell kept",
			in:     "x,y\n1,\n",
			header: []string{"x", "y"},
			rows:   [][]string{{"1", ""}},
			lines:  []int{2},
		},
		{name: "header only", in: "# c\nx,y\n", header: []string{"x", "y"}},
		{name: "too few fields", in: "x,y,s\n1,2,a\n3,4\n", wantErr: "line 3: 2 fields, the header has 3"},
		{name: "too many fields", in: "x,y\n1,2,3\n", wantErr: "line 2: 3 fields, the header has 2"},
		{name: "bare quote", in: "x,y\n1,2\"\n", wantErr: "line 2"},
		{name: "empty", in: "", wantErr: "no header line"},
		{name: "comments only", in: "# nothing\n# here\n", wantErr: "no header line"},
		{name: "unnamed column", in: "x,,y\n", wantErr: "header column 2 has no name"},
		{name: "duplicate column", in: "x,y,x\n", wantErr: `names column "x" twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCSV(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.header, tc.header) || !reflect.DeepEqual(got.rows, tc.rows) || !reflect.DeepEqual(got.lines, tc.lines) {
				t.Fatalf("got header %q rows %q lines %v, want %q %q %v", got.header, got.rows, got.lines, tc.header, tc.rows, tc.lines)
			}
		})
	}
}

func TestSeries(t *testing.T) {
	const in = "# test\nloss,proto,goodput\n5,sudp,86.3\n0,sudp,92.2\n0,kcp,61.6\n1,kcp,\n5,kcp,48.8\n"
	for _, tc := range []struct {
		name, in, x, y, s string
		want              []series
		wantErr           string
	}{
		{
			name: "grouped, sorted by x, empty cell left out",
			in:   in, x: "loss", y: "goodput", s: "proto",
			want: []series{
				{"sudp", []point{{0, 92.2}, {5, 86.3}}},
				{"kcp", []point{{0, 61.6}, {5, 48.8}}},
			},
		},
		{
			name: "no series column",
			in:   "a,b\n2,20\n1,10\n", x: "a", y: "b",
			want: []series{{"b", []point{{1, 10}, {2, 20}}}},
		},
		{name: "unknown column", in: in, x: "loss", y: "rtt", wantErr: `no column "rtt" (columns: loss, proto, goodput)`},
		{name: "not a number", in: "a,b\n1,2\n3,fast\n", x: "a", y: "b", wantErr: `line 3, column b: "fast" is not a finite number`},
		{name: "NaN", in: "a,b\nNaN,2\n", x: "a", y: "b", wantErr: `line 2, column a: "NaN" is not a finite number`},
		{name: "infinity", in: "a,b\n1,+Inf\n", x: "a", y: "b", wantErr: "not a finite number"},
		{name: "no points", in: "a,b\n1,\n", x: "a", y: "b", wantErr: "no data points"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := parseCSV(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			got, err := tab.series(tc.x, tc.y, tc.s)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// checkSVG decodes the whole document and returns how many elements of
// each name it holds.
func checkSVG(t testing.TB, svg []byte) map[string]int {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	count := map[string]int{}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok {
			count[se.Name.Local]++
			// encoding/xml accepts a repeated attribute; XML does not.
			seen := map[xml.Name]bool{}
			for _, a := range se.Attr {
				if seen[a.Name] {
					t.Fatalf("<%s> repeats attribute %s\n%s", se.Name.Local, a.Name.Local, svg)
				}
				seen[a.Name] = true
			}
		}
	}
	if count["svg"] != 1 {
		t.Fatalf("%d <svg> elements", count["svg"])
	}
	return count
}

func TestRender(t *testing.T) {
	const data = "loss,proto,goodput\n0,sudp,92.2\n1,sudp,88.9\n15,sudp,76.7\n0,tcp <cubic> & co,95.1\n1,tcp <cubic> & co,2.27\n15,tcp <cubic> & co,0.09\n0,one point,50\n"
	hl := 100.0
	for _, tc := range []struct {
		name    string
		c       chart
		wantErr string
	}{
		{name: "linear", c: chart{title: "Goodput & loss", xlabel: "loss (%)", ylabel: "Mbit/s"}},
		{name: "log y, explicit x ticks", c: chart{logy: true, xticks: []float64{0, 1, 5, 15}}},
		{name: "reference line", c: chart{hline: &hl, hlineLabel: "target <100>"}},
		{name: "log x with zero", c: chart{logx: true}, wantErr: "log x axis: value 0 is not positive"},
		{name: "too small", c: chart{width: 10, height: 10}, wantErr: "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.c.width == 0 {
				tc.c.width, tc.c.height = 720, 420
			}
			tab, err := parseCSV(strings.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			ss, err := tab.series("loss", "goodput", "proto")
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			err = tc.c.render(&buf, ss)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			count := checkSVG(t, buf.Bytes())
			if count["polyline"] != len(ss) {
				t.Fatalf("%d polylines for %d series", count["polyline"], len(ss))
			}
			if !strings.Contains(buf.String(), "tcp &lt;cubic&gt; &amp; co") {
				t.Fatal("series name not escaped into the legend")
			}
		})
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.csv")
	out := filepath.Join(dir, "out.svg")
	if err := os.WriteFile(in, []byte("# c\nrate,setting,total\n0,a,1\n10,a,2\n0,b,3\n10,b,\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run([]string{"-in", in, "-out", out, "-x", "rate", "-y", "total", "-series", "setting",
		"-title", "T", "-xticks", "0,10", "-hline", "2.5:limit", "-logy"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if n := checkSVG(t, svg)["polyline"]; n != 2 {
		t.Fatalf("%d polylines, want 2", n)
	}
	for _, args := range [][]string{
		{"-in", in, "-x", "rate"},
		{"-in", in, "-x", "rate", "-y", "nope"},
		{"-in", in, "-x", "rate", "-y", "total", "-xticks", "0,x"},
		{"-in", filepath.Join(dir, "missing.csv"), "-x", "a", "-y", "b"},
	} {
		if err := run(args, io.Discard); err == nil {
			t.Errorf("run %q: no error", args)
		}
	}
	if err := run([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// FuzzParseCSV feeds arbitrary bytes to the parser and, when they parse,
// plots the first columns: errors are fine, panics and malformed SVG are not.
func FuzzParseCSV(f *testing.F) {
	// More seeds, bad ones among them, in testdata/fuzz/FuzzParseCSV.
	f.Add([]byte("# c\nx,y,s\n0,1,a\n1,2,a\n0,3,b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, err := parseCSV(bytes.NewReader(data))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if len(tab.header) < 2 {
			return
		}
		scol := ""
		if len(tab.header) > 2 {
			scol = tab.header[2]
		}
		ss, err := tab.series(tab.header[0], tab.header[1], scol)
		if err != nil {
			return
		}
		for _, c := range []chart{
			{width: 720, height: 420, title: tab.header[0]},
			{width: 720, height: 420, logx: true, logy: true},
		} {
			var buf bytes.Buffer
			if err := c.render(&buf, ss); err != nil {
				continue
			}
			if n := checkSVG(t, buf.Bytes())["polyline"]; n != len(ss) {
				t.Fatalf("%d polylines for %d series", n, len(ss))
			}
		}
	})
}
