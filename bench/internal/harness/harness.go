// Package harness runs one measured transfer of a protocol as two separate
// OS processes (a receiving server and a sending client), optionally each in
// its own network namespace, and collects wall time, goodput and the CPU time
// of both processes.
//
// SUDP is driven through the ferry binary's fixed CLI (`ferry perf server` /
// `ferry perf client`); the Go peers through the same program re-executed as
// `serve` / `send` (see peers.ChildMain), whose CLI mirrors ferry's, so every
// protocol is started, timed and accounted for in exactly the same way.
package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/bench/internal/lab"
	"github.com/ferry-vm/ferry/bench/internal/peers"
)

// SUDP is the protocol name of Ferry's transport.
const SUDP = "sudp"

// SUDPLong is SUDP sending with its 18-byte long data header (`ferry perf
// client --long-headers`): the same build, to measure what the short
// header gains in one run.
const SUDPLong = "sudp-long"

// IsSUDP reports whether proto runs through the ferry binary.
func IsSUDP(proto string) bool { return proto == SUDP || proto == SUDPLong }

// GiB is 2^30 bytes.
const GiB = 1 << 30

// Config says how to start the two processes of a transfer.
type Config struct {
	// Self is the executable that implements `serve` and `send`
	// (peers.ChildMain); normally os.Executable().
	Self string
	// Ferry is the ferry binary, needed for sudp only.
	Ferry string
	// Addr is the host the client dials (default 127.0.0.1).
	Addr string
	// Listen is the host the server binds (default Addr).
	Listen string
	// ServerNetns and ClientNetns, when set, run the server / client via
	// `ip netns exec NS ...`.
	ServerNetns string
	ClientNetns string
	// KCPWindow, when positive, overrides the kcp peer's window (segments)
	// on both ends.
	KCPWindow int
	// Timeout bounds one transfer; 0 picks AutoTimeout(n) (or TimeCap + 30 s
	// when TimeCap is set). Reaching it is a failure.
	Timeout time.Duration
	// TimeCap, when positive, stops a transfer after this long and records
	// it as capped: goodput is then the payload the receiver got so far
	// divided by the time until the cap (see Measurement.Capped).
	TimeCap time.Duration
	// StartTimeout bounds how long a server may take to print its first
	// line; 0 means 15s.
	StartTimeout time.Duration
}

// AutoTimeout is the default per-transfer timeout: 60 s plus 1 s per MiB
// (i.e. it assumes at least ~8 Mbit/s).
func AutoTimeout(n int64) time.Duration {
	return 60*time.Second + time.Duration(n>>20)*time.Second
}

// CPU is the CPU time (seconds) and peak memory of one process.
type CPU struct {
	User      float64 `json:"user_s"`
	Sys       float64 `json:"sys_s"`
	MaxRSSKiB int64   `json:"max_rss_kib"`
}

// Total is user+sys seconds.
func (c CPU) Total() float64 { return c.User + c.Sys }

// Measurement is the outcome of one transfer.
type Measurement struct {
	Proto string `json:"proto"`
	Rep   int    `json:"rep"`
	// Bytes is the payload size asked for.
	Bytes int64 `json:"bytes"`
	// Delivered is the payload the receiver holds: Bytes (confirmed by the
	// sender) for a complete run, the receiver's own count for a capped one.
	Delivered int64 `json:"delivered_bytes"`
	// Capped is set when the run hit Config.TimeCap before the receiver
	// had all Bytes.
	Capped bool `json:"capped,omitempty"`
	// Seconds is the sender's wall time from the start of connecting until
	// the receiver confirmed it holds all Bytes (or until the cap).
	Seconds float64 `json:"seconds"`
	// GoodputBps is 8*Delivered/Seconds.
	GoodputBps float64 `json:"goodput_bps"`
	Server     CPU     `json:"server_cpu"`
	Client     CPU     `json:"client_cpu"`
	// CPUSeconds is user+sys of both processes; CPUPerGiB divides it by
	// the GiB transferred.
	CPUSeconds      float64 `json:"cpu_seconds"`
	CPUPerGiB       float64 `json:"cpu_s_per_gib"`
	WireBytes       int64   `json:"wire_bytes"`
	RetransmitRatio float64 `json:"retransmit_ratio"`
	RTTMs           float64 `json:"rtt_ms"`
	// NoSenderStats is set when the sender was stopped before it could
	// report (a capped sudp run): WireBytes, RetransmitRatio and RTTMs are
	// then unknown, not zero.
	NoSenderStats bool `json:"no_sender_stats,omitempty"`
	// Link is the WAN lab's counter delta over this run (lab mode only).
	Link         *lab.Delta      `json:"link,omitempty"`
	SenderReport json.RawMessage `json:"sender_report,omitempty"`
	Warnings     []string        `json:"warnings,omitempty"`
	Error        string          `json:"error,omitempty"`
}

// IsGoPeer reports whether proto is run through Self (not ferry).
func IsGoPeer(proto string) bool {
	_, err := peers.Get(proto)
	return err == nil
}

// Known lists every protocol the harness can run.
func Known() []string { return append([]string{SUDP, SUDPLong}, peers.Names()...) }

// Check validates protocols and paths before any transfer runs, so that a
// missing ferry binary fails at once with a clear message.
func (c Config) Check(protos []string) error {
	for _, p := range protos {
		switch {
		case IsSUDP(p):
			if err := checkExecutable(c.Ferry); err != nil {
				return fmt.Errorf("sudp: ferry binary not usable (%v): build it with `make build` "+
					"in the repository root (it lands in bin/ferry), pass --ferry PATH, or leave sudp out of --protos", err)
			}
		case IsGoPeer(p):
			if err := checkExecutable(c.Self); err != nil {
				return fmt.Errorf("%s: cannot re-execute self: %v", p, err)
			}
		default:
			return fmt.Errorf("unknown protocol %q (known: %s)", p, strings.Join(Known(), ", "))
		}
	}
	if c.ServerNetns != "" || c.ClientNetns != "" {
		if _, err := exec.LookPath("ip"); err != nil {
			return fmt.Errorf("--server-netns/--client-netns need the ip command (iproute2): %v", err)
		}
	}
	return nil
}

func checkExecutable(path string) error {
	if path == "" {
		return errors.New("no path given")
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

func (c Config) addr() string {
	if c.Addr == "" {
		return "127.0.0.1"
	}
	return c.Addr
}

func (c Config) listen() string {
	if c.Listen == "" {
		return c.addr()
	}
	return c.Listen
}

// commands returns the server and client argv for proto.
func (c Config) serverArgv(proto, metrics string) []string {
	listen := net.JoinHostPort(c.listen(), "0")
	if IsSUDP(proto) {
		argv := []string{c.Ferry, "perf", "server", "--listen", listen, "--json"}
		if metrics != "" {
			argv = append(argv, "--metrics", metrics)
		}
		return inNetns(c.ServerNetns, argv...)
	}
	return inNetns(c.ServerNetns, append([]string{c.Self, "serve", "--proto", proto, "--listen", listen}, c.peerArgs(proto)...)...)
}

// peerArgs are the tuning flags passed to both Go-peer processes.
func (c Config) peerArgs(proto string) []string {
	if proto == "kcp" && c.KCPWindow > 0 {
		return []string{"--kcp-window", strconv.Itoa(c.KCPWindow)}
	}
	return nil
}

func (c Config) clientArgv(proto, key, addr string, n int64, timeout time.Duration) []string {
	ns := strconv.FormatInt(n, 10)
	if IsSUDP(proto) {
		argv := []string{c.Ferry, "perf", "client", "--server-key", key, addr, "--bytes", ns, "--json"}
		if proto == SUDPLong {
			argv = append(argv, "--long-headers")
		}
		return inNetns(c.ClientNetns, argv...)
	}
	argv := []string{c.Self, "send", "--proto", proto, "--server-key", key, "--bytes", ns, "--timeout", timeout.String()}
	if c.TimeCap > 0 {
		argv = append(argv, "--time-cap", c.TimeCap.String())
	}
	argv = append(argv, c.peerArgs(proto)...)
	return inNetns(c.ClientNetns, append(argv, addr)...)
}

// inNetns prefixes argv with `ip netns exec NS` when ns is set. ip execs the
// program in place, so the process (and its rusage) is the program's own.
func inNetns(ns string, argv ...string) []string {
	if ns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// Transfer runs one transfer of n bytes with proto and measures it. On
// failure the returned Measurement still carries the proto, size and error.
func (c Config) Transfer(ctx context.Context, proto string, n int64) (Measurement, error) {
	m := Measurement{Proto: proto, Bytes: n}
	err := c.transfer(ctx, proto, n, &m)
	if err != nil {
		m.Error = err.Error()
	}
	return m, err
}

func (c Config) transfer(ctx context.Context, proto string, n int64, m *Measurement) error {
	if !IsSUDP(proto) && !IsGoPeer(proto) {
		return fmt.Errorf("unknown protocol %q", proto)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = AutoTimeout(n)
		if c.TimeCap > 0 {
			timeout = c.TimeCap + 30*time.Second
		}
	}
	startTimeout := c.StartTimeout
	if startTimeout <= 0 {
		startTimeout = 15 * time.Second
	}
	// A capped sudp run learns the receiver's count from ferry's metrics.
	metrics := ""
	if IsSUDP(proto) && c.TimeCap > 0 {
		port, err := freePort()
		if err != nil {
			return err
		}
		metrics = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}

	// Server.
	srv := newProc(c.serverArgv(proto, metrics))
	srvOut := newAnnounceWriter()
	srv.cmd.Stdout = srvOut
	if err := srv.cmd.Start(); err != nil {
		return fmt.Errorf("start server %q: %w", srv.cmd.Path, err)
	}
	defer srv.stop() // no-op once stopped below
	ann, err := readAnnouncement(srvOut.first, startTimeout)
	if err != nil {
		srv.stop()
		return fmt.Errorf("server did not announce itself: %w%s", err, srv.stderrTail())
	}
	_, port, err := net.SplitHostPort(ann.Addr)
	if err != nil {
		srv.stop()
		return fmt.Errorf("server announced a bad addr %q: %w", ann.Addr, err)
	}
	dial := net.JoinHostPort(c.addr(), port)

	// Client.
	cctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	cli := newProc(c.clientArgv(proto, ann.Key, dial, n, timeout))
	var out bytes.Buffer
	cli.cmd.Stdout = &out
	var runErr error
	var sudpCap *sudpCapped
	if metrics != "" {
		sudpCap, runErr = c.runSUDPCapped(cctx, cli.cmd, "http://"+metrics+"/metrics")
	} else {
		runErr = runWithContext(cctx, cli.cmd)
	}

	// The client is done (the receiver acked, or it failed): stop the server
	// and collect both processes' CPU.
	srv.stop()
	m.Server = usage(srv.cmd.ProcessState)
	m.Client = usage(cli.cmd.ProcessState)
	m.CPUSeconds = m.Server.Total() + m.Client.Total()

	if runErr != nil {
		if cctx.Err() != nil && ctx.Err() == nil {
			runErr = fmt.Errorf("timed out after %v", timeout)
		}
		return fmt.Errorf("client %s: %w%s%s", proto, runErr, cli.stderrTail(), srv.stderrTail())
	}
	if sudpCap != nil {
		// ferry was stopped at the cap: no sender report.
		m.Capped, m.NoSenderStats = true, true
		m.Seconds = sudpCap.seconds
		m.Delivered = min(sudpCap.received, n)
		m.GoodputBps = float64(m.Delivered) * 8 / m.Seconds
		m.CPUPerGiB = cpuPerGiB(m.CPUSeconds, m.Delivered)
		return nil
	}
	rep, raw, err := parseReport(out.Bytes())
	if err != nil {
		return fmt.Errorf("client %s output: %w (stdout %q)%s", proto, err, truncate(out.String(), 400), cli.stderrTail())
	}
	m.SenderReport = raw
	if rep.Seconds <= 0 {
		return fmt.Errorf("client %s reports %v seconds", proto, rep.Seconds)
	}
	m.Seconds = rep.Seconds
	m.WireBytes = rep.WireBytes
	m.RetransmitRatio = rep.RetransmitRatio
	m.RTTMs = rep.RTTMs
	if rep.Capped {
		// The sender stopped at the cap; the receiver's count is what
		// arrived (it printed it when stopped).
		got, ok := srvOut.received()
		if !ok {
			return fmt.Errorf("client %s was capped but the server did not report its received bytes%s", proto, srv.stderrTail())
		}
		m.Capped = true
		m.Delivered = min(got, n)
		m.GoodputBps = float64(m.Delivered) * 8 / m.Seconds
		m.CPUPerGiB = cpuPerGiB(m.CPUSeconds, m.Delivered)
		return nil
	}
	if rep.Bytes != n {
		return fmt.Errorf("client %s reports %d bytes, want %d", proto, rep.Bytes, n)
	}
	m.Delivered = n
	m.GoodputBps = float64(n) * 8 / rep.Seconds
	if rep.GoodputBps > 0 {
		if d := rep.GoodputBps/m.GoodputBps - 1; d > 0.05 || d < -0.05 {
			m.Warnings = append(m.Warnings, fmt.Sprintf("sender's goodput_bps %.4g differs from 8*bytes/seconds %.4g", rep.GoodputBps, m.GoodputBps))
		}
	}
	m.CPUPerGiB = cpuPerGiB(m.CPUSeconds, n)
	return nil
}

func cpuPerGiB(cpu float64, n int64) float64 {
	if n <= 0 {
		return 0
	}
	return cpu / (float64(n) / GiB)
}

// sudpCapped is what a capped sudp run measured.
type sudpCapped struct {
	seconds  float64
	received int64
}

// runSUDPCapped runs the ferry client; if it is still running at TimeCap it
// reads the server's delivered stream bytes from its metrics, then kills
// the client. It returns nil (and the client's error) when the run finished
// before the cap.
func (c Config) runSUDPCapped(ctx context.Context, cmd *exec.Cmd, url string) (*sudpCapped, error) {
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	capT := time.NewTimer(c.TimeCap)
	defer capT.Stop()
	select {
	case err := <-done:
		return nil, err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return nil, ctx.Err()
	case <-capT.C:
	}
	secs := time.Since(start).Seconds()
	got, ferr := c.scrapeReceived(ctx, url)
	_ = cmd.Process.Kill()
	<-done
	if ferr != nil {
		return nil, fmt.Errorf("capped after %.1fs, but reading the server's metrics failed: %w", secs, ferr)
	}
	return &sudpCapped{seconds: secs, received: got}, nil
}

// scrapeReceived reads ferry_sudp_stream_bytes_total{direction="received"}
// from ferry's Prometheus endpoint, from inside the server's namespace.
func (c Config) scrapeReceived(ctx context.Context, url string) (int64, error) {
	argv := inNetns(c.ServerNetns, c.Self, "fetch", url)
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(fctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return 0, err
	}
	return parseStreamReceived(out)
}

// parseStreamReceived sums the received-direction stream byte counters in
// a Prometheus text exposition (minus each stream's 8-byte length header is
// not subtracted: it is noise at any size worth capping).
func parseStreamReceived(text []byte) (int64, error) {
	var total float64
	found := false
	for _, l := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(l, "ferry_sudp_stream_bytes_total{") || !strings.Contains(l, `direction="received"`) {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("bad metric line %q", l)
		}
		total += v
		found = true
	}
	if !found {
		return 0, errors.New(`no ferry_sudp_stream_bytes_total{direction="received"} in the metrics`)
	}
	return int64(total), nil
}

// freePort picks a currently free TCP port on 127.0.0.1 (for ferry's
// metrics endpoint; in a fresh namespace any port is free anyway).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// announceWriter is a server's stdout: it hands the first line to
// readAnnouncement and keeps the rest (bounded) for the received_bytes
// line that Go-peer servers print when they stop.
type announceWriter struct {
	mu    sync.Mutex
	line  []byte
	sent  bool
	rest  tailBuffer
	first chan string
}

func newAnnounceWriter() *announceWriter {
	return &announceWriter{first: make(chan string, 1), rest: tailBuffer{max: 16 << 10}}
}

func (a *announceWriter) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sent {
		return a.rest.Write(p)
	}
	a.line = append(a.line, p...)
	if i := bytes.IndexByte(a.line, '\n'); i >= 0 {
		a.first <- string(a.line[:i+1])
		a.sent = true
		_, _ = a.rest.Write(a.line[i+1:])
		a.line = nil
	} else if len(a.line) > 64<<10 {
		a.first <- string(a.line)
		a.sent = true
		a.line = nil
	}
	return len(p), nil
}

// received returns the last {"received_bytes": N} the server printed.
func (a *announceWriter) received() (int64, bool) {
	var got int64
	ok := false
	for _, l := range strings.Split(a.rest.String(), "\n") {
		var v struct {
			Received *int64 `json:"received_bytes"`
		}
		if json.Unmarshal([]byte(strings.TrimSpace(l)), &v) == nil && v.Received != nil {
			got, ok = *v.Received, true
		}
	}
	return got, ok
}

// runWithContext starts cmd and waits for it, killing it when ctx is done.
func runWithContext(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}

// proc is a child process with a bounded copy of its stderr.
type proc struct {
	cmd      *exec.Cmd
	stderr   *tailBuffer
	stopOnce sync.Once
}

func newProc(argv []string) *proc {
	cmd := exec.Command(argv[0], argv[1:]...)
	tb := &tailBuffer{max: 8 << 10}
	cmd.Stderr = tb
	// If the harness dies, its children must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Do not hang on stderr held open by a grandchild after the process exits.
	cmd.WaitDelay = 2 * time.Second
	return &proc{cmd: cmd, stderr: tb}
}

// stop asks a started process to exit (SIGTERM, then SIGKILL after 5 s) and
// reaps it. Safe to call more than once.
func (p *proc) stop() {
	p.stopOnce.Do(func() {
		if p.cmd.Process == nil {
			return
		}
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	})
}

func (p *proc) stderrTail() string {
	s := strings.TrimSpace(p.stderr.String())
	if s == "" {
		return ""
	}
	return fmt.Sprintf("\n  [%s stderr] %s", p.cmd.Args[0], strings.ReplaceAll(s, "\n", "\n  "))
}

func usage(ps *os.ProcessState) CPU {
	if ps == nil {
		return CPU{}
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return CPU{User: ps.UserTime().Seconds(), Sys: ps.SystemTime().Seconds()}
	}
	return CPU{
		User:      tv(ru.Utime),
		Sys:       tv(ru.Stime),
		MaxRSSKiB: ru.Maxrss, // Linux reports KiB
	}
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// Announcement is a server's first stdout line.
type Announcement struct {
	Addr string `json:"addr"`
	Key  string `json:"key"`
}

func readAnnouncement(first <-chan string, timeout time.Duration) (Announcement, error) {
	var line string
	select {
	case line = <-first:
	case <-time.After(timeout):
		return Announcement{}, fmt.Errorf("no first line within %v", timeout)
	}
	got := struct{ line string }{line}
	var a Announcement
	if err := json.Unmarshal([]byte(strings.TrimSpace(got.line)), &a); err != nil {
		return a, fmt.Errorf("first line %q is not {\"addr\",\"key\"} JSON: %w", truncate(got.line, 200), err)
	}
	if a.Addr == "" {
		return a, fmt.Errorf("first line %q has no addr", truncate(got.line, 200))
	}
	return a, nil
}

// report is the part of a sender's JSON the harness uses.
type report struct {
	Bytes           int64
	Seconds         float64
	GoodputBps      float64
	WireBytes       int64
	RetransmitRatio float64
	RTTMs           float64
	Capped          bool
}

// requiredFields are what `ferry perf client --json` must print (CLI.md).
var requiredFields = []string{"bytes", "seconds", "goodput_bps", "wire_bytes", "retransmit_ratio", "rtt_ms"}

// parseReport takes the last JSON object on stdout.
func parseReport(stdout []byte) (report, json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(stdout))
	var last json.RawMessage
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if err == io.EOF {
				break
			}
			if last == nil {
				return report{}, nil, err
			}
			break
		}
		if len(raw) > 0 && raw[0] == '{' {
			last = raw
		}
	}
	if last == nil {
		return report{}, nil, errors.New("no JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(last, &fields); err != nil {
		return report{}, nil, err
	}
	var missing []string
	num := func(name string) float64 {
		v, ok := fields[name]
		if !ok {
			missing = append(missing, name)
			return 0
		}
		f, err := strconv.ParseFloat(strings.Trim(string(v), `"`), 64)
		if err != nil {
			missing = append(missing, name+" (not a number)")
		}
		return f
	}
	var r report
	r.Bytes = int64(num("bytes"))
	r.Seconds = num("seconds")
	r.GoodputBps = num("goodput_bps")
	r.WireBytes = int64(num("wire_bytes"))
	r.RetransmitRatio = num("retransmit_ratio")
	r.RTTMs = num("rtt_ms")
	if v, ok := fields["capped"]; ok && string(v) == "true" {
		r.Capped = true
	}
	if len(missing) > 0 {
		return r, last, fmt.Errorf("sender JSON lacks %s (want at least %s)", strings.Join(missing, ", "), strings.Join(requiredFields, ", "))
	}
	return r, last, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
