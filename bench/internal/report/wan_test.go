package report

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/bench/internal/harness"
	"github.com/ferry-vm/ferry/bench/internal/lab"
)

// wanRun is a lab-mode measurement: mbit of goodput, wire = link a→b bytes
// per delivered byte.
func wanRun(proto string, mbit, wire float64, capped bool) harness.Measurement {
	const n = 64 << 20
	delivered := int64(n)
	secs := float64(n) * 8 / (mbit * 1e6)
	if capped {
		secs = 45
		delivered = int64(mbit * 1e6 * secs / 8)
	}
	return harness.Measurement{
		Proto: proto, Bytes: n, Delivered: delivered, Capped: capped, Seconds: secs,
		GoodputBps: float64(delivered) * 8 / secs, RetransmitRatio: 0.01, RTTMs: 50,
		Link: &lab.Delta{AB: lab.DirDelta{WireBytes: uint64(wire * float64(delivered))}},
	}
}

func TestCappedAccountingAndWANTable(t *testing.T) {
	runs := []harness.Measurement{
		wanRun("sudp", 94, 1.05, false), wanRun("tcp-bbr", 91, 1.06, false), wanRun("tcp-cubic", 3, 1.04, true),
		wanRun("sudp", 93, 1.06, false), wanRun("tcp-bbr", 90, 1.07, false), wanRun("tcp-cubic", 2, 1.05, true),
		wanRun("sudp", 95, 1.04, false), wanRun("tcp-bbr", 92, 1.05, false), wanRun("tcp-cubic", 4, 1.03, false),
	}
	// A capped sudp run without sender statistics counts for goodput and
	// wire, not for retransmissions.
	c := wanRun("sudp", 50, 1.2, true)
	c.NoSenderStats, c.RetransmitRatio = true, 0
	runs = append(runs, c)
	sum := Summarize([]string{"sudp", "tcp-bbr", "tcp-cubic"}, runs)
	s, b, cu := sum[0], sum[1], sum[2]
	if s.Runs != 4 || s.Capped != 1 || s.RetransmitKnown != 3 || s.RetransmitRatioMedian != 0.01 {
		t.Errorf("sudp %+v", s)
	}
	if math.Abs(s.GoodputMedianBps-93.5e6) > 1e3 || math.Abs(s.GoodputMinBps-50e6) > 1e3 {
		t.Errorf("sudp goodput %+v", s)
	}
	if cu.Capped != 2 || math.Abs(cu.GoodputMedianBps-3e6) > 1e3 {
		t.Errorf("capped cubic %+v", cu)
	}
	if math.Abs(cu.LinkWirePerByteMedian-1.04) > 1e-3 || math.Abs(b.LinkWirePerByteMedian-1.06) > 1e-3 {
		t.Errorf("wire per byte: cubic %v bbr %v", cu.LinkWirePerByteMedian, b.LinkWirePerByteMedian)
	}

	li := LabInfo{Label: "wan", Name: "bw1a", Args: []string{"--profile", "wan"}, Delay: "25ms", Loss: 0.01, RateBps: 100e6,
		ClientNetns: "bw1a-a", ServerNetns: "bw1a-b", ServerAddr: "198.18.1.1"}
	tg := Targets(li, sum)
	if len(tg) != 3 {
		t.Fatalf("targets %+v", tg)
	}
	// 93.5 ≥ 92; wire 1.055 ≤ 1/0.99+0.1; 93.5 ≥ bbr 91.
	for _, x := range tg {
		if x.Status() != "met" {
			t.Errorf("target %+v not met", x)
		}
	}
	li5 := li
	li5.Loss = 0.05
	if tg5 := Targets(li5, sum); tg5[0].Limit != 86e6 || tg5[0].Status() != "met" {
		t.Errorf("5%% targets %+v", tg5)
	}
	li15 := li
	li15.Loss = 0.15
	if tg15 := Targets(li15, sum); tg15[0].Limit != 60e6 {
		t.Errorf("15%% targets %+v", tg15)
	}
	gig := LabInfo{Label: "wan1g", Delay: "50ms", RateBps: 1e9}
	if g := Targets(gig, sum); g[0].Limit != 900e6 || g[0].Status() != "missed" {
		t.Errorf("wan1g targets %+v", g)
	}
	if Targets(LabInfo{Label: "clean", Delay: "0s"}, sum) != nil {
		t.Error("targets for a profile without any")
	}
	if g := Targets(li, sum[1:]); g[0].Status() != "n/a" || g[0].Got != "no SUDP run" {
		t.Errorf("no sudp: %+v", g)
	}

	doc := Document{Params: Params{Bytes: 64 << 20, Reps: 3, KCPWindow: 4096, TimeCapSeconds: 45}, Lab: &li, Summary: sum, Targets: tg, Runs: runs}
	w := WAN{Env: CollectEnv("transportbench --matrix --markdown", ""), Sections: []Document{doc, {Params: doc.Params, Lab: &gig, Error: "wanlab up failed"}}}
	var md bytes.Buffer
	if err := WANMarkdown(&md, w); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"$ transportbench --matrix --markdown", "### `wan` — 100 Mbit/s, 50ms RTT, 1 % loss",
		"client in `bw1a-a`, server in `bw1a-b`", "time cap 45 s", "kcp window 4096",
		"| sudp | 4 (1 capped) | 93.5 (capped) | 50.0–95.0 | 1.055 | 1.00% | 50.0 | 1.00× |",
		"| tcp-cubic | 3 (2 capped) | 3.00 (capped) |",
		"goodput (median) ≥ 92.0 Mbit/s: 93.5 Mbit/s — **met**",
		"≤ 1/(1−0.01) + 0.10 = 1.110: 1.055 — **met**",
		"not below TCP BBR", "`wan1g` — 1 Gbit/s, 100ms RTT, 0 % loss", "**Not run: wanlab up failed**",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	var txt bytes.Buffer
	if err := WANText(&txt, w); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(txt.String(), "MET") || !strings.Contains(txt.String(), "3 (2 capped)") {
		t.Errorf("text:\n%s", txt.String())
	}
}
