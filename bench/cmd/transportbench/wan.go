package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/bench/internal/harness"
	"github.com/ferry-vm/ferry/bench/internal/lab"
	"github.com/ferry-vm/ferry/bench/internal/report"
)

// KCP windows (segments) by mode: a 2-core loopback does best with 1024
// (larger windows only build queues and spurious retransmissions there);
// on the WAN kcp-go's README recommends 4096 for long fat paths.
const (
	loopbackKCPWindow = 1024
	labKCPWindow      = 4096
)

// matrixProfiles is issue 3's set: 100 Mbit/s 50 ms RTT at 0/1/5/15 % loss
// and the 1 Gbit/s 100 ms path.
const matrixProfiles = "wan@0%,wan@1%,wan@5%,wan@15%,wan1g"

// labSpec is one lab to bring up.
type labSpec struct {
	Label string   // as shown in the report
	Args  []string // wanlab up flags
}

func newLabSpec(profile, loss, flags string) labSpec {
	args := []string{"--profile", profile}
	label := profile
	if loss != "" {
		args = append(args, "--loss", loss)
		label += " --loss " + loss
	}
	if extra := strings.Fields(flags); len(extra) > 0 {
		args = append(args, extra...)
		label += " " + strings.Join(extra, " ")
	}
	return labSpec{Label: label, Args: args}
}

// parseLabProfiles parses PROFILE[@LOSS],...
func parseLabProfiles(list, flags string) ([]labSpec, error) {
	var out []labSpec
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		profile, loss, _ := strings.Cut(item, "@")
		if profile == "" || strings.ContainsAny(profile, " \t") {
			return nil, fmt.Errorf("bad lab profile %q (want PROFILE or PROFILE@LOSS, e.g. wan@5%%)", item)
		}
		out = append(out, newLabSpec(profile, loss, flags))
	}
	if len(out) == 0 {
		return nil, errors.New("no lab profiles given")
	}
	return out, nil
}

// wanRun is one WAN-mode invocation.
type wanRun struct {
	cfg     harness.Config
	wanlab  string
	labs    []labSpec
	protos  []string
	n       int64
	reps    int
	jsonOut bool
	mdOut   bool
	stdout  io.Writer
	stderr  io.Writer
}

// checkWAN says why WAN mode cannot run here ("" if it can).
func checkWAN(wanlab string) string {
	if os.Geteuid() != 0 {
		return "WAN mode needs root: the lab creates network namespaces and TUN devices. " +
			"Run it as root (e.g. `sudo make bench-wan`), or leave out --lab-profile/--lab-profiles/--matrix for the loopback benchmark."
	}
	if st, err := os.Stat(wanlab); err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Sprintf("wanlab binary %q not usable: build it with `make build` in the repository root (it lands in bin/wanlab) or pass --wanlab PATH", wanlab)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "WAN mode needs the ip command (iproute2)"
	}
	return ""
}

func (w *wanRun) run(args []string) int {
	if msg := checkWAN(w.wanlab); msg != "" {
		fmt.Fprintln(w.stderr, "transportbench:", msg)
		return 2
	}
	if abs, err := filepath.Abs(w.wanlab); err == nil {
		w.wanlab = abs
	}
	fp := ""
	for _, p := range w.protos {
		if harness.IsSUDP(p) {
			fp = w.cfg.Ferry
		}
	}
	out := report.WAN{Env: report.CollectEnv(commandLine(args), fp)}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed := false
	for i, spec := range w.labs {
		if ctx.Err() != nil {
			break
		}
		doc, ok := w.section(ctx, lab.UniqueName(os.Getpid(), i), spec)
		failed = failed || !ok
		doc.Env = out.Env
		out.Sections = append(out.Sections, doc)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(w.stderr, "transportbench: interrupted; labs removed; reporting the runs done so far")
		failed = true
	}
	var err error
	switch {
	case w.jsonOut:
		err = report.JSONValue(w.stdout, out)
	case w.mdOut:
		err = report.WANMarkdown(w.stdout, out)
	default:
		err = report.WANText(w.stdout, out)
	}
	if err != nil {
		fmt.Fprintf(w.stderr, "transportbench: write output: %v\n", err)
		return 1
	}
	if failed {
		return 1
	}
	return 0
}

// section brings up one lab, runs every protocol reps times interleaved,
// and always takes the lab down again (also on error or interrupt).
func (w *wanRun) section(ctx context.Context, name string, spec labSpec) (doc report.Document, ok bool) {
	doc = report.Document{
		Params: report.Params{Bytes: w.n, Reps: w.reps, Protos: w.protos, KCPWindow: w.cfg.KCPWindow,
			TimeCapSeconds: w.cfg.TimeCap.Seconds()},
		Lab: &report.LabInfo{Label: spec.Label, Name: name, Args: spec.Args},
	}
	fmt.Fprintf(w.stderr, "transportbench: lab %s: wanlab up %s %s\n", name, name, strings.Join(spec.Args, " "))
	l, err := lab.Up(ctx, w.wanlab, name, spec.Args)
	if err != nil {
		doc.Error = err.Error()
		fmt.Fprintf(w.stderr, "transportbench: %v\n", err)
		return doc, false
	}
	defer func() {
		if err := l.Down(); err != nil {
			fmt.Fprintf(w.stderr, "transportbench: lab %s: %v\n", name, err)
			ok = false
		} else {
			fmt.Fprintf(w.stderr, "transportbench: lab %s removed\n", name)
		}
	}()
	// A panic must not leave the lab behind either.
	defer func() {
		if r := recover(); r != nil {
			_ = l.Down()
			panic(r)
		}
	}()
	li := doc.Lab
	li.Delay, li.Loss, li.RateBps = l.AB.Delay, l.AB.Loss, l.AB.RateBps
	li.ClientNetns, li.ServerNetns, li.ServerAddr = l.Client.Netns, l.Server.Netns, l.Server.Addr
	doc.Params.Addr, doc.Params.ServerNetns, doc.Params.ClientNetns = l.Server.Addr, l.Server.Netns, l.Client.Netns

	cfg := w.cfg
	cfg.Addr, cfg.Listen = l.Server.Addr, l.Server.Addr
	cfg.ServerNetns, cfg.ClientNetns = l.Server.Netns, l.Client.Netns
	fmt.Fprintf(w.stderr, "transportbench: %s (%s): %s per transfer, %d reps of %s, time cap %v, kcp window %d\n",
		spec.Label, li.Describe(), report.Size(w.n), w.reps, strings.Join(w.protos, ","), cfg.TimeCap, cfg.KCPWindow)

	ok = true
	quietMax := 5 * time.Second
	before, err := l.Quiet(ctx, time.Now(), quietMax)
	if err != nil {
		doc.Error = err.Error()
		return doc, false
	}
loop:
	for rep := 1; rep <= w.reps; rep++ {
		for _, p := range w.protos {
			if ctx.Err() != nil {
				ok = false
				break loop
			}
			start := time.Now()
			m, err := cfg.Transfer(ctx, p, w.n)
			m.Rep = rep
			after, qerr := l.Quiet(ctx, time.Now(), quietMax)
			if qerr == nil {
				m.Link = lab.Diff(before, after)
				before = after
			} else if ctx.Err() == nil {
				m.Warnings = append(m.Warnings, "lab counters unavailable: "+qerr.Error())
			}
			doc.Runs = append(doc.Runs, m)
			if err != nil {
				ok = false
				fmt.Fprintf(w.stderr, "rep %d/%d %-9s FAILED after %.1fs: %v\n", rep, w.reps, p, time.Since(start).Seconds(), err)
				continue
			}
			note := ""
			if m.Capped {
				note = fmt.Sprintf("  CAPPED at %.1fs (%s delivered)", m.Seconds, report.Size(m.Delivered))
			}
			wire := "—"
			if m.Link != nil && m.Delivered > 0 {
				wire = fmt.Sprintf("%.3f", float64(m.Link.AB.WireBytes)/float64(m.Delivered))
			}
			stats := fmt.Sprintf("retransmit %.4f  rtt %.1f ms", m.RetransmitRatio, m.RTTMs)
			if m.NoSenderStats {
				stats = "retransmit —  rtt —"
			}
			fmt.Fprintf(w.stderr, "rep %d/%d %-9s %8.2f Mbit/s  wire/byte %s  %s%s\n",
				rep, w.reps, p, m.GoodputBps/1e6, wire, stats, note)
			for _, warn := range m.Warnings {
				fmt.Fprintf(w.stderr, "    warning: %s\n", warn)
			}
		}
	}
	doc.Summary = report.Summarize(w.protos, doc.Runs)
	doc.Targets = report.Targets(*li, doc.Summary)
	return doc, ok
}
