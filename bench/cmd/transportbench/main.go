// Command transportbench measures Ferry's SUDP transport against baseline
// peers (plain TCP, TCP+TLS 1.3, QUIC via quic-go, KCP via kcp-go) in the same
// run, interleaving the protocols in every repetition, and reports goodput,
// CPU cost per GiB and SUDP's ratio to each peer.
//
//	go run ./cmd/transportbench [--bytes 1GiB] [--reps 3] [--protos sudp,tcp,tls,quic,kcp]
//	    [--ferry ../bin/ferry] [--json | --markdown]
//	    [--addr HOST] [--listen HOST] [--server-netns NS] [--client-netns NS] [--timeout D]
//	    [--kcp-window N]
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
	kcpWindow := fs.Int("kcp-window", peers.KCPWindow, "kcp send/receive window in segments")
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
	if *kcpWindow < 1 {
		fmt.Fprintln(stderr, "--kcp-window must be positive")
		return 2
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
	}
	if err := cfg.Check(protos); err != nil {
		fmt.Fprintf(stderr, "transportbench: %v\n", err)
		return 2
	}

	usesSUDP := false
	for _, p := range protos {
		usesSUDP = usesSUDP || p == harness.SUDP
	}
	fp := ""
	if usesSUDP {
		fp = ferryPath
	}
	doc := report.Document{
		Env: report.CollectEnv(commandLine(args), fp),
		Params: report.Params{Bytes: n, Reps: *reps, Protos: protos, Addr: *addr,
			ServerNetns: *serverNS, ClientNetns: *clientNS, KCPWindow: *kcpWindow},
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(stderr, "transportbench: %s per transfer, %d reps of %s\n", report.Size(n), *reps, strings.Join(protos, ","))
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
			fmt.Fprintf(stderr, "rep %d/%d %-5s %7s Gbit/s  %6.2f CPU s/GiB  retransmit %.4f\n",
				rep, *reps, p, report.Gbps(m.GoodputBps), m.CPUPerGiB, m.RetransmitRatio)
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
