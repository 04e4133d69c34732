package peers

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// IsChildCommand reports whether args (without the program name) ask for one
// of the child-process commands handled by ChildMain.
func IsChildCommand(args []string) bool {
	return len(args) > 0 && (args[0] == "serve" || args[0] == "send" || args[0] == "fetch")
}

// ChildMain runs one of the child-process commands that mirror ferry's CLI:
//
//	serve --proto P --listen ADDR [--kcp-window N]
//	    prints {"addr": "...", "key": "..."} as its first stdout line, then
//	    serves transfers until SIGINT/SIGTERM, and then prints
//	    {"received_bytes": N} (payload bytes received, finished or not);
//	send --proto P --server-key KEY --bytes N [--timeout D] [--time-cap D] [--kcp-window N] ADDR
//	    one transfer of N bytes; prints one JSON Result on stdout. When
//	    --time-cap passes first, it stops sending and prints the Result with
//	    "capped": true and its statistics as of the cap (exit status 0);
//	fetch URL
//	    prints the body of an HTTP GET (used to read ferry's metrics from
//	    inside a network namespace).
//
// It returns the process exit code.
func ChildMain(args []string, stdout, stderr io.Writer) int {
	log.SetOutput(stderr)
	log.SetFlags(0)
	if !IsChildCommand(args) {
		fmt.Fprintln(stderr, "usage: serve|send --proto P ...")
		return 2
	}
	cmd := args[0]
	if cmd == "fetch" {
		return fetch(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	proto := fs.String("proto", "", "peer protocol: "+fmt.Sprint(Names()))
	listen := fs.String("listen", "127.0.0.1:0", "serve: address to listen on")
	key := fs.String("server-key", "", "send: server key as printed by serve")
	bytesFlag := fs.String("bytes", "", "send: payload bytes")
	timeout := fs.Duration("timeout", 10*time.Minute, "send: give up after this long")
	timeCap := fs.Duration("time-cap", 0, "send: stop after this long and report a capped run (0: no cap)")
	fs.IntVar(&KCPWindow, "kcp-window", KCPWindow, "kcp: send and receive window in segments")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return 2
	}
	p, err := Get(*proto)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if KCPWindow < 1 {
		fmt.Fprintln(stderr, "--kcp-window must be positive")
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	if cmd == "serve" {
		if len(pos) != 0 {
			fmt.Fprintf(stderr, "serve: unexpected arguments %q\n", pos)
			return 2
		}
		srv, err := p.Listen(ctx, *listen)
		if err != nil {
			fmt.Fprintf(stderr, "%s serve: listen %s: %v\n", p.Name(), *listen, err)
			return 1
		}
		defer srv.Close()
		line, _ := json.Marshal(map[string]string{"addr": srv.Addr(), "key": srv.Key()})
		if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
			return 1
		}
		serr := srv.Serve(ctx)
		line, _ = json.Marshal(map[string]int64{"received_bytes": Received()})
		_, _ = fmt.Fprintf(stdout, "%s\n", line)
		if serr != nil {
			fmt.Fprintf(stderr, "%s serve: %v\n", p.Name(), serr)
			return 1
		}
		return 0
	}

	if len(pos) != 1 {
		fmt.Fprintln(stderr, "send: want exactly one server address argument")
		return 2
	}
	n, err := strconv.ParseInt(*bytesFlag, 10, 64)
	if err != nil || n < 0 {
		fmt.Fprintf(stderr, "send: bad --bytes %q (want a byte count)\n", *bytesFlag)
		return 2
	}
	limit := *timeout
	capped := *timeCap > 0 && *timeCap < limit
	if capped {
		limit = *timeCap
	}
	start := time.Now()
	ctx, cancelT := context.WithTimeout(ctx, limit)
	defer cancelT()
	res, err := p.Send(ctx, pos[0], *key, n)
	if err != nil && capped && time.Since(start) >= limit {
		// The cap, not a failure: report what happened until then.
		res.Capped = true
		res.Seconds = time.Since(start).Seconds()
		res.Bytes = res.BytesSent
		res.GoodputBps = 0
		err = nil
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s send to %s: %v\n", p.Name(), pos[0], err)
		return 1
	}
	out, _ := json.Marshal(res)
	if _, err := fmt.Fprintf(stdout, "%s\n", out); err != nil {
		return 1
	}
	return 0
}

// parseInterspersed parses flags that may come before or after positional
// arguments and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func fetch(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: fetch URL")
		return 2
	}
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(args[0])
	if err != nil {
		fmt.Fprintln(stderr, "fetch:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "fetch:", resp.Status)
		return 1
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintln(stderr, "fetch:", err)
		return 1
	}
	return 0
}
