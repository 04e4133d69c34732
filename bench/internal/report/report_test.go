package report

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/bench/internal/harness"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"1GiB": 1 << 30, "256MiB": 256 << 20, "8 MiB": 8 << 20, "1000000": 1000000,
		"1GB": 1e9, "1.5KiB": 1536, "2k": 2000, "10b": 10,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "1XB", "-1MiB", "abc"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
	if Size(256<<20) != "256 MiB" || Size(1000) != "1000 bytes" {
		t.Errorf("Size: %q %q", Size(256<<20), Size(1000))
	}
}

func TestMedian(t *testing.T) {
	if Median(nil) != 0 || Median([]float64{3, 1, 2}) != 2 || Median([]float64{4, 1, 3, 2}) != 2.5 {
		t.Fatal("median wrong")
	}
}

func ms(proto string, gbps, cpu float64) harness.Measurement {
	return harness.Measurement{Proto: proto, Bytes: 1 << 30, GoodputBps: gbps * 1e9, CPUPerGiB: cpu, WireBytes: 1 << 30}
}

func TestSummarizeRatios(t *testing.T) {
	runs := []harness.Measurement{
		ms("sudp", 4, 2), ms("quic", 1, 8), ms("tcp", 8, 1),
		ms("sudp", 6, 2), ms("quic", 3, 8), ms("tcp", 8, 1),
		{Proto: "quic", Error: "boom"},
	}
	sum := Summarize([]string{"sudp", "quic", "tcp", "kcp"}, runs)
	if len(sum) != 4 {
		t.Fatal(len(sum))
	}
	s, q, tc, k := sum[0], sum[1], sum[2], sum[3]
	if s.GoodputMedianBps != 5e9 || s.GoodputMinBps != 4e9 || s.GoodputMaxBps != 6e9 {
		t.Errorf("sudp %+v", s)
	}
	if q.Runs != 2 || q.Failed != 1 || math.Abs(q.SUDPGoodputRatio-2.5) > 1e-9 || math.Abs(q.SUDPCPURatio-0.25) > 1e-9 {
		t.Errorf("quic %+v", q)
	}
	if math.Abs(tc.SUDPGoodputRatio-0.625) > 1e-9 {
		t.Errorf("tcp %+v", tc)
	}
	if k.Runs != 0 || k.SUDPGoodputRatio != 0 {
		t.Errorf("kcp %+v", k)
	}
	h := Headline(sum)
	if !strings.Contains(h, "sudp/quic 2.50×") || !strings.Contains(h, "sudp/tcp 0.62×") || strings.Contains(h, "kcp") {
		t.Errorf("headline %q", h)
	}

	doc := Document{Env: CollectEnv("transportbench --markdown", ""), Params: Params{Bytes: 1 << 30, Reps: 2, Addr: "127.0.0.1"}, Summary: sum, Runs: runs}
	var md bytes.Buffer
	if err := Markdown(&md, doc); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"$ transportbench --markdown", "uname -r", "nproc", "CPU:", "Date:", "| sudp |", "| quic | 2 (1 failed) |", "2.50×"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	noSUDP := Summarize([]string{"tcp"}, runs)
	if Headline(noSUDP) != "" || noSUDP[0].SUDPGoodputRatio != 0 {
		t.Error("ratios without sudp")
	}
}
