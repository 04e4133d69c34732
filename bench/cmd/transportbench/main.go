// Command transportbench measures Ferry's SUDP transport against baseline
// peers (plain TCP, TCP+TLS 1.3, QUIC via quic-go, KCP via kcp-go) in the same
// run, interleaving the protocols in every repetition, and reports goodput,
// CPU cost per GiB and SUDP's ratio to each peer.
//
//	go run ./cmd/transportbench [--bytes 1GiB] [--reps 3] [--protos sudp,tcp,tls,quic,kcp]
//	    [--ferry ../bin/ferry] [--json | --markdown]
//	    [--addr HOST] [--listen HOST] [--server-netns NS] [--client-netns NS] [--timeout D]
//	    [--kcp-window N] [--time-cap D]
//
// WAN mode brings up Ferry's WAN lab (`wanlab`) and runs every protocol's
// server in site b and its client in site a, one lab per profile:
//
//	go run ./cmd/transportbench --lab-profile wan [--lab-loss 5%] [--lab-flags '...']
//	    [--wanlab ../bin/wanlab] [--time-cap 60s] ...
//	go run ./cmd/transportbench --matrix ...      # issue 3's profiles
//	go run ./cmd/transportbench --lab-profiles wan@0%,wan@15%,wan1g ...
//
// Every transfer runs as two OS processes: `ferry perf server/client` for
// sudp, and this program re-executed as `transportbench serve/send` for the
// Go peers. See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/bench/internal/harness"
	"github.com/ferry-vm/ferry/bench/internal/peers"
	"github.com/ferry-vm/ferry/bench/internal/report"
)

func main() {
	args := os.Args[1:]
	if peers.IsChildCommand(args) {
		os.Exit(peers.ChildMain(args, os.Stdout, os.Stderr))
	}
	os.Exit(run(args, os.Stdout, os.Stderr))
}

// defaultWanlab is $WANLAB_BIN, else ../bin/wanlab.
func defaultWanlab() string {
	if p := os.Getenv("WANLAB_BIN"); p != "" {
		return p
	}
	return filepath.Join("..", "bin", "wanlab")
}

// defaultFerry is $FERRY_BIN, else ../bin/ferry (the repository's build
// output, relative to bench/).
func defaultFerry() string {
	if p := os.Getenv("FERRY_BIN"); p != "" {
		return p
	}
	return filepath.Join("..", "bin", "ferry")
}

// run is the benchmark driver; it returns the exit code: 0 all runs ok, 1
// some run failed (results are still printed), 2 bad usage or setup.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("transportbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bytesFlag := fs.String("bytes", "1GiB", "payload per transfer (e.g. 1GiB, 256MiB, 1000000)")
	reps := fs.Int("reps", 3, "repetitions; each runs every protocol once, interleaved")
	protosFlag := fs.String("protos", "sudp,tcp,tls,quic,kcp", "protocols, in run order; known: "+strings.Join(harness.Known(), ","))
	ferry := fs.String("ferry", defaultFerry(), "ferry binary for sudp (default $FERRY_BIN or ../bin/ferry)")
	jsonOut := fs.Bool("json", false, "print one JSON document")
	mdOut := fs.Bool("markdown", false, "print a Markdown block for docs/BENCHMARKS.md")
	addr := fs.String("addr", "127.0.0.1", "host the client dials (the server's address)")
	listen := fs.String("listen", "", "host the server binds (default: --addr)")
	serverNS := fs.String("server-netns", "", "run the server via `ip netns exec NS`")
	clientNS := fs.String("client-netns", "", "run the client via `ip netns exec NS`")
	timeout := fs.Duration("timeout", 0, "per-transfer timeout (default 60s + 1s per MiB)")
	kcpWindow := fs.Int("kcp-window", 0, fmt.Sprintf("kcp send/receive window in segments (default %d on loopback, %d in the WAN lab)", loopbackKCPWindow, labKCPWindow))
	timeCap := fs.Duration("time-cap", 0, "stop a run after this long and record it as capped (goodput = bytes delivered so far / time); default none on loopback, 60s in the WAN lab")
	labProfile := fs.String("lab-profile", "", "WAN mode: run in a wanlab lab with this profile (wan, lossy, wan1g, metro, ...)")
	labLoss := fs.String("lab-loss", "", "WAN mode: override the profile's loss (e.g. 5%), with --lab-profile")
	labFlags := fs.String("lab-flags", "", "WAN mode: extra `wanlab up` flags, e.g. '--queue 50ms' (applied to every lab)")
	labProfiles := fs.String("lab-profiles", "", "WAN mode: several labs, one after the other: PROFILE[@LOSS],... (e.g. wan@0%,wan@5%,wan1g)")
	matrix := fs.Bool("matrix", false, "WAN mode: issue 3's set: --lab-profiles "+matrixProfiles)
	wanlabBin := fs.String("wanlab", defaultWanlab(), "wanlab binary for WAN mode (default $WANLAB_BIN or ../bin/wanlab)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *jsonOut && *mdOut {
		fmt.Fprintln(stderr, "--json and --markdown are exclusive")
		return 2
	}
	n, err := report.ParseSize(*bytesFlag)
	if err != nil || n <= 0 {
		fmt.Fprintf(stderr, "--bytes: %v\n", errOr(err, "must be positive"))
		return 2
	}
	if *kcpWindow < 0 || *timeCap < 0 {
		fmt.Fprintln(stderr, "--kcp-window and --time-cap must not be negative")
		return 2
	}
	var labs []labSpec
	switch {
	case *matrix && (*labProfiles != "" || *labProfile != ""), *labProfiles != "" && *labProfile != "":
		fmt.Fprintln(stderr, "use one of --matrix, --lab-profiles, --lab-profile")
		return 2
	case *matrix:
		labs, err = parseLabProfiles(matrixProfiles, *labFlags)
	case *labProfiles != "":
		labs, err = parseLabProfiles(*labProfiles, *labFlags)
	case *labProfile != "":
		labs = []labSpec{newLabSpec(*labProfile, *labLoss, *labFlags)}
	case *labLoss != "" || *labFlags != "":
		err = errors.New("--lab-loss and --lab-flags need --lab-profile, --lab-profiles or --matrix")
	}
	if err != nil {
		fmt.Fprintf(stderr, "transportbench: %v\n", err)
		return 2
	}
	if *labLoss != "" && *labProfile == "" {
		fmt.Fprintln(stderr, "--lab-loss goes with --lab-profile (use PROFILE@LOSS in --lab-profiles)")
		return 2
	}
	wan := len(labs) > 0
	if wan {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for _, f := range []string{"addr", "listen", "server-netns", "client-netns"} {
			if set[f] {
				fmt.Fprintf(stderr, "--%s cannot be combined with WAN mode (the lab's sites decide)\n", f)
				return 2
			}
		}
		if *timeCap == 0 {
			*timeCap = 60 * time.Second
		}
	}
	if *kcpWindow == 0 {
		*kcpWindow = loopbackKCPWindow
		if wan {
			*kcpWindow = labKCPWindow
		}
	}
	if *reps < 1 {
		fmt.Fprintln(stderr, "--reps must be at least 1")
		return 2
	}
	var protos []string
	for _, p := range strings.Split(*protosFlag, ",") {
		if p = strings.TrimSpace(strings.ToLower(p)); p != "" {
			protos = append(protos, p)
		}
	}
	if len(protos) == 0 {
		fmt.Fprintln(stderr, "--protos is empty")
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "cannot find own executable: %v\n", err)
		return 2
	}
	ferryPath := *ferry
	if abs, err := filepath.Abs(ferryPath); err == nil {
		ferryPath = abs
	}
	cfg := harness.Config{
		Self: self, Ferry: ferryPath, Addr: *addr, Listen: *listen,
		ServerNetns: *serverNS, ClientNetns: *clientNS, Timeout: *timeout, KCPWindow: *kcpWindow,
		TimeCap: *timeCap,
	}
	if err := cfg.Check(protos); err != nil {
		fmt.Fprintf(stderr, "transportbench: %v\n", err)
		return 2
	}
	if wan {
		w := wanRun{cfg: cfg, wanlab: *wanlabBin, labs: labs, protos: protos, n: n, reps: *reps,
			jsonOut: *jsonOut, mdOut: *mdOut, stdout: stdout, stderr: stderr}
		return w.run(args)
	}

	usesSUDP := false
	for _, p := range protos {
		usesSUDP = usesSUDP || harness.IsSUDP(p)
	}
	fp := ""
	if usesSUDP {
		fp = ferryPath
	}
	doc := report.Document{
		Env: report.CollectEnv(commandLine(args), fp),
		Params: report.Params{Bytes: n, Reps: *reps, Protos: protos, Addr: *addr,
			ServerNetns: *serverNS, ClientNetns: *clientNS, KCPWindow: *kcpWindow, TimeCapSeconds: timeCap.Seconds()},
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(stderr, "transportbench: %s per transfer, %d reps of %s, kcp window %d\n", report.Size(n), *reps, strings.Join(protos, ","), *kcpWindow)
	failed := false
loop:
	for rep := 1; rep <= *reps; rep++ {
		for _, p := range protos {
			if ctx.Err() != nil {
				break loop
			}
			start := time.Now()
			m, err := cfg.Transfer(ctx, p, n)
			m.Rep = rep
			doc.Runs = append(doc.Runs, m)
			if err != nil {
				failed = true
				fmt.Fprintf(stderr, "rep %d/%d %-5s FAILED after %.1fs: %v\n", rep, *reps, p, time.Since(start).Seconds(), err)
				continue
			}
			capped := ""
			if m.Capped {
				capped = "  CAPPED"
			}
			fmt.Fprintf(stderr, "rep %d/%d %-5s %7s Gbit/s  %6.2f CPU s/GiB  retransmit %.4f%s\n",
				rep, *reps, p, report.Gbps(m.GoodputBps), m.CPUPerGiB, m.RetransmitRatio, capped)
			for _, w := range m.Warnings {
				fmt.Fprintf(stderr, "    warning: %s\n", w)
			}
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "transportbench: interrupted; reporting the runs done so far")
		failed = true
	}
	doc.Summary = report.Summarize(protos, doc.Runs)

	switch {
	case *jsonOut:
		err = report.JSON(stdout, doc)
	case *mdOut:
		err = report.Markdown(stdout, doc)
	default:
		err = report.Text(stdout, doc)
	}
	if err != nil {
		fmt.Fprintf(stderr, "transportbench: write output: %v\n", err)
		return 1
	}
	if failed {
		return 1
	}
	return 0
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

// commandLine reconstructs the command as typed: `go run ./cmd/transportbench`
// when run through go run, else the program path.
func commandLine(args []string) string {
	prog := os.Args[0]
	if strings.Contains(prog, string(filepath.Separator)+"go-build") {
		prog = "go run ./cmd/transportbench"
	}
	parts := []string{prog}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\*?;&|<>()") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
