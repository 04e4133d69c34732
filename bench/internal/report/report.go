// Package report summarises transfer measurements (medians, spreads, SUDP
// ratios) and renders them as a text table, Markdown or JSON, together with
// the machine facts needed to read them.
package report

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferry-vm/ferry/bench/internal/harness"
)

// Summary is the per-protocol aggregate over repetitions.
type Summary struct {
	Proto  string `json:"proto"`
	Runs   int    `json:"runs"`
	Failed int    `json:"failed"`
	// Goodput over successful runs, bits/s.
	GoodputMedianBps float64 `json:"goodput_median_bps"`
	GoodputMinBps    float64 `json:"goodput_min_bps"`
	GoodputMaxBps    float64 `json:"goodput_max_bps"`
	// CPU seconds (sender+receiver, user+sys) per GiB, median.
	CPUPerGiBMedian       float64 `json:"cpu_s_per_gib_median"`
	RetransmitRatioMedian float64 `json:"retransmit_ratio_median"`
	// WireOverheadMedian is wire_bytes/bytes - 1 (see each peer's wire_note).
	WireOverheadMedian float64 `json:"wire_overhead_median"`
	// SUDPGoodputRatio is SUDP's median goodput divided by this protocol's
	// (>1: SUDP is faster); SUDPCPURatio is SUDP's median CPU s/GiB divided
	// by this protocol's (<1: SUDP is cheaper). Zero when not computable.
	SUDPGoodputRatio float64 `json:"sudp_goodput_ratio,omitempty"`
	SUDPCPURatio     float64 `json:"sudp_cpu_ratio,omitempty"`
	// Capped counts the successful runs that hit the time cap (their
	// goodput is delivered bytes ÷ time until the cap).
	Capped int `json:"capped,omitempty"`
	// RetransmitKnown counts the runs whose sender reported statistics
	// (a capped sudp run is stopped before it can); RetransmitRatioMedian,
	// WireOverheadMedian and RTTMedianMs are over those.
	RetransmitKnown int `json:"retransmit_known"`
	// LinkWirePerByteMedian is the WAN lab's a→b wire bytes (IP packets
	// offered to the link, headers, losses and queue drops included) per
	// payload byte delivered; 0 outside lab mode.
	LinkWirePerByteMedian float64 `json:"link_wire_per_byte_median,omitempty"`
	// RTTMedianMs is the senders' smoothed RTT at the end, median.
	RTTMedianMs float64 `json:"rtt_ms_median,omitempty"`
}

// Summarize aggregates ms per protocol, in the order of protos.
func Summarize(protos []string, ms []harness.Measurement) []Summary {
	var out []Summary
	for _, p := range protos {
		s := Summary{Proto: p}
		var gp, cpu, rt, ov, lw, rtt []float64
		for _, m := range ms {
			if m.Proto != p {
				continue
			}
			if m.Error != "" {
				s.Failed++
				continue
			}
			s.Runs++
			if m.Capped {
				s.Capped++
			}
			gp = append(gp, m.GoodputBps)
			cpu = append(cpu, m.CPUPerGiB)
			delivered := m.Delivered
			if delivered == 0 && !m.Capped {
				delivered = m.Bytes // measurements from before Delivered existed
			}
			if !m.NoSenderStats {
				s.RetransmitKnown++
				rt = append(rt, m.RetransmitRatio)
				rtt = append(rtt, m.RTTMs)
				if delivered > 0 {
					ov = append(ov, float64(m.WireBytes)/float64(delivered)-1)
				}
			}
			if m.Link != nil && delivered > 0 {
				lw = append(lw, float64(m.Link.AB.WireBytes)/float64(delivered))
			}
		}
		if s.Runs > 0 {
			s.GoodputMedianBps = Median(gp)
			s.GoodputMinBps = slices.Min(gp)
			s.GoodputMaxBps = slices.Max(gp)
			s.CPUPerGiBMedian = Median(cpu)
			s.RetransmitRatioMedian = Median(rt)
			s.WireOverheadMedian = Median(ov)
			s.LinkWirePerByteMedian = Median(lw)
			s.RTTMedianMs = Median(rtt)
		}
		out = append(out, s)
	}
	var sudp *Summary
	for i := range out {
		if out[i].Proto == harness.SUDP && out[i].Runs > 0 {
			sudp = &out[i]
		}
	}
	if sudp != nil {
		for i := range out {
			if out[i].Runs == 0 {
				continue
			}
			if out[i].GoodputMedianBps > 0 {
				out[i].SUDPGoodputRatio = sudp.GoodputMedianBps / out[i].GoodputMedianBps
			}
			if out[i].CPUPerGiBMedian > 0 {
				out[i].SUDPCPURatio = sudp.CPUPerGiBMedian / out[i].CPUPerGiBMedian
			}
		}
	}
	return out
}

// Median of xs (mean of the middle two for an even count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Env is what a reader needs to interpret the numbers.
type Env struct {
	Command  string            `json:"command"`
	Kernel   string            `json:"kernel"`
	NProc    int               `json:"nproc"`
	CPUModel string            `json:"cpu_model"`
	Date     string            `json:"date"`
	LoadAvg  string            `json:"loadavg_at_start"`
	Go       string            `json:"go"`
	Modules  map[string]string `json:"modules,omitempty"`
	Ferry    string            `json:"ferry,omitempty"`
}

// CollectEnv gathers Env; command is the command line to show.
func CollectEnv(command string, ferryPath string) Env {
	e := Env{
		Command:  command,
		Kernel:   firstLine(readFile("/proc/sys/kernel/osrelease")),
		NProc:    runtime.NumCPU(),
		CPUModel: cpuModel(),
		Date:     time.Now().UTC().Format(time.RFC3339),
		LoadAvg:  loadAvg(),
		Go:       runtime.Version(),
		Modules:  map[string]string{},
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/quic-go/quic-go", "github.com/xtaci/kcp-go/v5":
				e.Modules[d.Path] = d.Version
			}
		}
	}
	if ferryPath != "" {
		if b, err := os.ReadFile(ferryPath); err == nil {
			sum := sha256.Sum256(b)
			e.Ferry = fmt.Sprintf("%s (sha256 %s)", ferryPath, hex.EncodeToString(sum[:])[:12])
		}
	}
	return e
}

func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	return strings.Join(f[:min(3, len(f))], " ")
}

func readFile(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return string(b)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSpace(s)
}

func cpuModel() string {
	for _, l := range strings.Split(readFile("/proc/cpuinfo"), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Params describes the run for the header.
type Params struct {
	Bytes       int64    `json:"bytes"`
	Reps        int      `json:"reps"`
	Protos      []string `json:"protos"`
	Addr        string   `json:"addr"`
	ServerNetns string   `json:"server_netns,omitempty"`
	ClientNetns string   `json:"client_netns,omitempty"`
	KCPWindow   int      `json:"kcp_window"`
	// TimeCapSeconds is the per-run time cap (0: none).
	TimeCapSeconds float64 `json:"time_cap_s,omitempty"`
}

// LabInfo describes the WAN lab a section ran on.
type LabInfo struct {
	// Label is the profile as asked for, e.g. "wan --loss 5%".
	Label string   `json:"label"`
	Name  string   `json:"name"`
	Args  []string `json:"wanlab_up_args"`
	// The a→b (data direction) link as the lab reports it.
	Delay   string  `json:"delay"`
	Loss    float64 `json:"loss"`
	RateBps float64 `json:"rate_bps"`
	// Client (site a) and server (site b).
	ClientNetns string `json:"client_netns"`
	ServerNetns string `json:"server_netns"`
	ServerAddr  string `json:"server_addr"`
}

// Describe is a one-line description of the link ("100 Mbit/s, 50ms RTT, 1 % loss").
func (l LabInfo) Describe() string {
	rate := "unlimited rate"
	if l.RateBps > 0 {
		rate = fmt.Sprintf("%g Mbit/s", l.RateBps/1e6)
		if l.RateBps >= 1e9 {
			rate = fmt.Sprintf("%g Gbit/s", l.RateBps/1e9)
		}
	}
	delay := l.Delay
	if d, err := time.ParseDuration(l.Delay); err == nil {
		delay = fmt.Sprintf("%v RTT", 2*d)
	}
	return fmt.Sprintf("%s, %s, %g %% loss", rate, delay, l.Loss*100)
}

// Document is the --json output of a loopback run, and one section (one
// lab profile) of a WAN run.
type Document struct {
	Env     Env                   `json:"env"`
	Params  Params                `json:"params"`
	Lab     *LabInfo              `json:"lab,omitempty"`
	Summary []Summary             `json:"summary"`
	Targets []Target              `json:"sudp_targets,omitempty"`
	Runs    []harness.Measurement `json:"runs"`
	// Error is set when the section could not run (e.g. its lab did not
	// come up).
	Error string `json:"error,omitempty"`
}

// WAN is the --json output of a WAN-lab run: one section per profile.
type WAN struct {
	Env      Env        `json:"env"`
	Sections []Document `json:"profiles"`
}

// JSON writes doc as one indented JSON document.
func JSON(w io.Writer, doc Document) error { return JSONValue(w, doc) }

// JSONValue writes v as one indented JSON document.
func JSONValue(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Gbps formats bits/s as Gbit/s.
func Gbps(bps float64) string { return strconv.FormatFloat(bps/1e9, 'f', 2, 64) }

func ratio(r float64) string {
	if r == 0 {
		return "—"
	}
	return strconv.FormatFloat(r, 'f', 2, 64) + "×"
}

func pct(r float64) string { return strconv.FormatFloat(r*100, 'f', 2, 64) + "%" }

func cpuCell(s Summary) string {
	if s.Runs == 0 {
		return "—"
	}
	return strconv.FormatFloat(s.CPUPerGiBMedian, 'f', 2, 64)
}

func row(s Summary) []string {
	runs := strconv.Itoa(s.Runs)
	if s.Failed > 0 {
		runs += fmt.Sprintf(" (%d failed)", s.Failed)
	}
	if s.Runs == 0 {
		return []string{s.Proto, runs, "—", "—", "—", "—", "—", "—", "—", "—"}
	}
	return []string{s.Proto, runs, Gbps(s.GoodputMedianBps), Gbps(s.GoodputMinBps) + "–" + Gbps(s.GoodputMaxBps),
		cpuCell(s), pct(s.RetransmitRatioMedian), pct(s.WireOverheadMedian), ratio(s.SUDPGoodputRatio), ratio(s.SUDPCPURatio)}
}

var header = []string{"proto", "runs", "goodput median Gbit/s", "min–max Gbit/s", "CPU s/GiB (median)",
	"retransmit", "wire overhead", "SUDP goodput ÷ this", "SUDP CPU ÷ this"}

// Text writes an aligned table for a terminal.
func Text(w io.Writer, doc Document) error {
	fmt.Fprintf(w, "%s\n%s, %d CPUs, %s, kernel %s, load %s, %s\n\n", doc.Env.Command, doc.Env.CPUModel,
		doc.Env.NProc, doc.Env.Go, doc.Env.Kernel, doc.Env.LoadAvg, doc.Env.Date)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, s := range doc.Summary {
		fmt.Fprintln(tw, strings.Join(row(s)[:len(header)], "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if h := Headline(doc.Summary); h != "" {
		fmt.Fprintf(w, "\n%s\n", h)
	} else {
		fmt.Fprintln(w, "\nNo successful SUDP run in this invocation, so no SUDP ratios.")
	}
	return nil
}

// Headline is the one-line SUDP-vs-peers summary ("" without SUDP).
func Headline(sum []Summary) string {
	var parts []string
	for _, s := range sum {
		if s.Proto == harness.SUDP || s.SUDPGoodputRatio == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("sudp/%s %.2f×", s.Proto, s.SUDPGoodputRatio))
	}
	if len(parts) == 0 {
		return ""
	}
	return "SUDP median goodput relative to each peer (same run): " + strings.Join(parts, ", ")
}

// Markdown writes a block ready to paste into docs/BENCHMARKS.md.
func writeEnvMarkdown(w io.Writer, e Env) {
	fmt.Fprintf(w, "```\n$ %s\n```\n\n", e.Command)
	fmt.Fprintf(w, "- Kernel (`uname -r`): %s\n", e.Kernel)
	fmt.Fprintf(w, "- nproc: %d\n", e.NProc)
	fmt.Fprintf(w, "- CPU: %s\n", e.CPUModel)
	fmt.Fprintf(w, "- Date: %s (load average at start: %s)\n", e.Date, e.LoadAvg)
	var mods []string
	for _, k := range slices.Sorted(maps.Keys(e.Modules)) {
		mods = append(mods, k+" "+e.Modules[k])
	}
	fmt.Fprintf(w, "- Go: %s; %s\n", e.Go, strings.Join(mods, "; "))
	if e.Ferry != "" {
		fmt.Fprintf(w, "- ferry: %s\n", e.Ferry)
	}
}

func Markdown(w io.Writer, doc Document) error {
	writeEnvMarkdown(w, doc.Env)
	where := "loopback " + doc.Params.Addr
	if doc.Params.ServerNetns != "" || doc.Params.ClientNetns != "" {
		where = fmt.Sprintf("%s, server netns %q, client netns %q", doc.Params.Addr, doc.Params.ServerNetns, doc.Params.ClientNetns)
	}
	fmt.Fprintf(w, "- Workload: one %s transfer per run, %d repetitions interleaved across protocols, %s\n",
		Size(doc.Params.Bytes), doc.Params.Reps, where)
	fmt.Fprintf(w, "- Peer tuning: see bench/README.md (kcp window %d segments)\n\n", doc.Params.KCPWindow)
	fmt.Fprintf(w, "| %s |\n", strings.Join(header, " | "))
	seps := make([]string, len(header))
	for i := range seps {
		seps[i] = "---:"
	}
	seps[0] = "---"
	fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
	for _, s := range doc.Summary {
		fmt.Fprintf(w, "| %s |\n", strings.Join(row(s)[:len(header)], " | "))
	}
	fmt.Fprintln(w)
	if h := Headline(doc.Summary); h != "" {
		fmt.Fprintf(w, "**%s**\n\n", h)
	} else {
		fmt.Fprintf(w, "_No successful SUDP run in this invocation, so no SUDP ratios._\n\n")
	}
	fmt.Fprintln(w, "Goodput = payload bits ÷ sender wall time from connect until the receiver acknowledged the last byte. "+
		"CPU = user+sys of the sender and receiver processes ÷ GiB of payload. "+
		"Retransmit and wire overhead are as reported by each sender (see bench/README.md).")
	return nil
}

// ParseSize parses a byte count: a plain integer, or a number with a unit
// KiB/MiB/GiB/TiB (powers of 1024; K/M/G/T and KB/MB/GB/TB are decimal).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	}[unit]
	if mult == 0 || num == "" {
		return 0, fmt.Errorf("bad size %q (want e.g. 1GiB, 256MiB, 1000000)", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 1GiB, 256MiB, 1000000)", s)
	}
	return int64(f * mult), nil
}

// Size formats n bytes with a binary unit when exact.
func Size(n int64) string {
	for _, u := range []struct {
		name string
		v    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return fmt.Sprintf("%d %s", n/u.v, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
