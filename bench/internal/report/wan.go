package report

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/ferry-vm/ferry/bench/internal/harness"
)

// Target is one SUDP target of issue 3 checked against a section's medians.
type Target struct {
	What  string  `json:"what"`
	Want  string  `json:"want"`
	Got   string  `json:"got"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	// Met is nil when the target could not be judged (no SUDP run, or no
	// wire measurement).
	Met *bool `json:"met"`
}

// Status is "met", "missed" or "n/a".
func (t Target) Status() string {
	switch {
	case t.Met == nil:
		return "n/a"
	case *t.Met:
		return "met"
	}
	return "missed"
}

// goodputTargets are SUDP's goodput targets (bits/s) for the 100 Mbit/s,
// 50 ms RTT path by loss rate, from issue 3.
var goodputTargets = map[float64]float64{0.01: 92e6, 0.05: 86e6, 0.15: 60e6}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// Targets checks SUDP's medians in sum against issue 3's targets for the
// link in l:
//   - goodput ≥ 92 / 86 / 60 Mbit/s at 1 / 5 / 15 % loss on the 100 Mbit/s
//     50 ms path; ≥ 900 Mbit/s on the 1 Gbit/s 100 ms path;
//   - wire bytes per delivered byte ≤ 1/(1−loss) + 0.10 (lab a→b counter);
//   - never below TCP BBR (median goodput), when tcp-bbr ran.
//
// Only the profiles (100 Mbit/s at 25 ms one-way, 1 Gbit/s at 50 ms
// one-way) get targets; others return nil.
func Targets(l LabInfo, sum []Summary) []Target {
	hundred := near(l.RateBps, 100e6) && l.Delay == "25ms"
	gig := near(l.RateBps, 1e9) && l.Delay == "50ms"
	if !hundred && !gig {
		return nil
	}
	var sudp, bbr *Summary
	for i := range sum {
		switch sum[i].Proto {
		case harness.SUDP:
			sudp = &sum[i]
		case "tcp-bbr":
			bbr = &sum[i]
		}
	}
	var out []Target
	judge := func(t Target, ok bool, known bool) Target {
		if known {
			t.Met = &ok
		}
		return t
	}
	haveSUDP := sudp != nil && sudp.Runs > 0
	gp := 0.0
	if haveSUDP {
		gp = sudp.GoodputMedianBps
	}
	goal := 0.0
	if hundred {
		for loss, g := range goodputTargets {
			if near(loss, l.Loss) {
				goal = g
			}
		}
	} else {
		goal = 900e6
	}
	if goal > 0 {
		out = append(out, judge(Target{
			What: "goodput (median)", Want: fmt.Sprintf("≥ %s Mbit/s", mbps(goal)),
			Got: gotMbps(sudp), Value: gp, Limit: goal,
		}, gp >= goal, haveSUDP))
	}
	wireLimit := 1/(1-l.Loss) + 0.10
	wire := 0.0
	if haveSUDP {
		wire = sudp.LinkWirePerByteMedian
	}
	out = append(out, judge(Target{
		What: "wire bytes per delivered byte (median, lab a→b)",
		Want: fmt.Sprintf("≤ 1/(1−%g) + 0.10 = %.3f", l.Loss, wireLimit),
		Got:  wireCell(wire), Value: wire, Limit: wireLimit,
	}, wire <= wireLimit, haveSUDP && wire > 0))
	if bbr != nil && bbr.Runs > 0 {
		out = append(out, judge(Target{
			What: "not below TCP BBR (median goodput)", Want: fmt.Sprintf("≥ %s Mbit/s", mbps(bbr.GoodputMedianBps)),
			Got: gotMbps(sudp), Value: gp, Limit: bbr.GoodputMedianBps,
		}, gp >= bbr.GoodputMedianBps, haveSUDP))
	}
	return out
}

func gotMbps(s *Summary) string {
	if s == nil || s.Runs == 0 {
		return "no SUDP run"
	}
	return mbps(s.GoodputMedianBps) + " Mbit/s"
}

// mbps formats bits/s as Mbit/s.
func mbps(bps float64) string {
	switch {
	case bps >= 100e6:
		return strconv.FormatFloat(bps/1e6, 'f', 0, 64)
	case bps >= 10e6:
		return strconv.FormatFloat(bps/1e6, 'f', 1, 64)
	}
	return strconv.FormatFloat(bps/1e6, 'f', 2, 64)
}

func wireCell(x float64) string {
	if x <= 0 {
		return "—"
	}
	return strconv.FormatFloat(x, 'f', 3, 64)
}

var wanHeader = []string{"proto", "runs", "goodput median Mbit/s", "min–max Mbit/s",
	"wire bytes / delivered byte (a→b)", "retransmit", "RTT ms", "SUDP goodput ÷ this"}

func wanRow(s Summary) []string {
	runs := strconv.Itoa(s.Runs)
	var notes []string
	if s.Capped > 0 {
		notes = append(notes, fmt.Sprintf("%d capped", s.Capped))
	}
	if s.Failed > 0 {
		notes = append(notes, fmt.Sprintf("%d failed", s.Failed))
	}
	if len(notes) > 0 {
		runs += " (" + strings.Join(notes, ", ") + ")"
	}
	if s.Runs == 0 {
		return []string{s.Proto, runs, "—", "—", "—", "—", "—", "—"}
	}
	gp := mbps(s.GoodputMedianBps)
	if s.Capped > 0 {
		gp += " (capped)"
	}
	rt := "—"
	if s.RetransmitKnown > 0 {
		rt = pct(s.RetransmitRatioMedian)
	}
	return []string{s.Proto, runs, gp, mbps(s.GoodputMinBps) + "–" + mbps(s.GoodputMaxBps),
		wireCell(s.LinkWirePerByteMedian), rt, rttCell(s), ratio(s.SUDPGoodputRatio)}
}

func rttCell(s Summary) string {
	if s.RTTMedianMs <= 0 {
		return "—"
	}
	return strconv.FormatFloat(s.RTTMedianMs, 'f', 1, 64)
}

// Section labels a WAN section.
func sectionTitle(d Document) string {
	if d.Lab == nil {
		return "loopback"
	}
	return fmt.Sprintf("`%s` — %s", d.Lab.Label, d.Lab.Describe())
}

// WANMarkdown writes a WAN run: the machine facts once, then per profile a
// heading, the workload, the table and SUDP's targets.
func WANMarkdown(w io.Writer, r WAN) error {
	e := r.Env
	writeEnvMarkdown(w, e)
	fmt.Fprintln(w)
	for _, d := range r.Sections {
		fmt.Fprintf(w, "### %s\n\n", sectionTitle(d))
		if d.Lab != nil {
			fmt.Fprintf(w, "- Lab `%s` (`wanlab up %s %s`): client in `%s`, server in `%s` (%s)\n", d.Lab.Name, d.Lab.Name,
				strings.Join(d.Lab.Args, " "), d.Lab.ClientNetns, d.Lab.ServerNetns, d.Lab.ServerAddr)
		}
		fmt.Fprintf(w, "- Workload: one %s transfer per run, %d repetitions interleaved across protocols, time cap %s per run; kcp window %d segments\n\n",
			Size(d.Params.Bytes), d.Params.Reps, capText(d.Params.TimeCapSeconds), d.Params.KCPWindow)
		if d.Error != "" {
			fmt.Fprintf(w, "**Not run: %s**\n\n", d.Error)
			continue
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(wanHeader, " | "))
		seps := slices.Repeat([]string{"---:"}, len(wanHeader))
		seps[0] = "---"
		fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
		for _, s := range d.Summary {
			fmt.Fprintf(w, "| %s |\n", strings.Join(wanRow(s), " | "))
		}
		fmt.Fprintln(w)
		if h := Headline(d.Summary); h != "" {
			fmt.Fprintf(w, "**%s**\n\n", h)
		}
		if len(d.Targets) > 0 {
			fmt.Fprintln(w, "SUDP targets (issue 3):")
			fmt.Fprintln(w)
			for _, t := range d.Targets {
				fmt.Fprintf(w, "- %s %s: %s — **%s**\n", t.What, t.Want, t.Got, t.Status())
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintln(w, wanNotes)
	return nil
}

const wanNotes = "Goodput = payload bits delivered ÷ sender wall time from connect until the receiver acknowledged the last byte; " +
	"a *capped* run stopped at the time cap, and its goodput is the payload the receiver had by then ÷ the time to the cap. " +
	"Wire bytes / delivered byte = IP bytes the sender offered to the emulated link a→b (headers, retransmissions, " +
	"packets lost or dropped by the queue included; the lab's counters, identical for every protocol) ÷ payload delivered. " +
	"Retransmit and RTT are each sender's own statistics (see bench/README.md; — when the sender was stopped at the cap)."

func capText(s float64) string {
	if s <= 0 {
		return "none"
	}
	return strconv.FormatFloat(s, 'f', -1, 64) + " s"
}

// WANText writes a WAN run for a terminal.
func WANText(w io.Writer, r WAN) error {
	e := r.Env
	fmt.Fprintf(w, "%s\n%s, %d CPUs, %s, kernel %s, load %s, %s\n", e.Command, e.CPUModel, e.NProc, e.Go, e.Kernel, e.LoadAvg, e.Date)
	for _, d := range r.Sections {
		fmt.Fprintf(w, "\n== %s  (%s, %d reps, cap %s, kcp window %d)\n", strings.ReplaceAll(sectionTitle(d), "`", ""),
			Size(d.Params.Bytes), d.Params.Reps, capText(d.Params.TimeCapSeconds), d.Params.KCPWindow)
		if d.Error != "" {
			fmt.Fprintf(w, "not run: %s\n", d.Error)
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, strings.Join(wanHeader, "\t")+"\t")
		for _, s := range d.Summary {
			fmt.Fprintln(tw, strings.Join(wanRow(s), "\t")+"\t")
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if h := Headline(d.Summary); h != "" {
			fmt.Fprintln(w, h)
		}
		for _, t := range d.Targets {
			fmt.Fprintf(w, "  target: %s %s: %s — %s\n", t.What, t.Want, t.Got, strings.ToUpper(t.Status()))
		}
	}
	return nil
}
