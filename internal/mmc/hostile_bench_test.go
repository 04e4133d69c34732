//go:build linux

package mmc

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// BenchmarkHostilePeer (issue #20): 100 honest agents hold sessions with a
// real MMC over loopback UDP and measure their session round trip — a
// TimeRequest the MMC's session loop answers with a TimeReply, the agents'
// clock probe: it crosses the MMC's single receive loop, the connection,
// the message layer, the session goroutine and back, which is what a slow
// MMC makes slow. It is measured for a quiet phase, then while one hostile
// peer, holding an enrolment session (it knows only the bundle), floods at
// line rate with what costs the MMC most per packet.
//
// The MMC runs in a child process (this test binary, re-executed; TestMain
// in hostile_main_test.go), so that its CPU time (/proc/<pid>/stat) is its
// own and not the agents' or the attacker's.
//
//	go test -run '^$' -bench BenchmarkHostilePeer -benchtime 1x ./internal/mmc
func BenchmarkHostilePeer(b *testing.B) {
	const agents = 100
	phase := 4 * time.Second
	mmc := startChildMMC(b)
	bundle, tok := mmc.bundle, mmc.token
	keys, err := bundle.Keys()
	if err != nil {
		b.Fatal(err)
	}
	addr := bundle.MMCs[0].Addr
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		b.Fatal(err)
	}
	port := ap.Port()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Log in the agents, 10 at a time.
	conns := make([]*sudp.Conn, agents)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	errs := make(chan error, agents)
	for i := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := benchLogin(ctx, b, i, addr, keys[0], bundle.ClusterID, tok)
			if err != nil {
				errs <- fmt.Errorf("agent %d: %w", i, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}

	// Every agent probes every 20 ms: 5,000 round trips a second.
	var rttMu sync.Mutex
	var cur *[]time.Duration
	quiet, hostile := []time.Duration{}, []time.Duration{}
	var lost atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			probeLoop(ctx, c, 20*time.Millisecond, &lost, func(d time.Duration) {
				rttMu.Lock()
				if cur != nil {
					*cur = append(*cur, d)
				}
				rttMu.Unlock()
			})
		}()
	}
	setPhase := func(p *[]time.Duration) { rttMu.Lock(); cur = p; rttMu.Unlock() }

	b.ResetTimer()
	time.Sleep(time.Second) // warm up
	cpu0, drop0 := procCPU(b, mmc.pid), udpDrops(b, port)
	setPhase(&quiet)
	time.Sleep(phase)
	setPhase(nil)
	cpu1, drop1 := procCPU(b, mmc.pid), udpDrops(b, port)

	// Control: the same flood, from the same process, aimed at a socket
	// nobody reads. What it costs the agents is the machine's share, not
	// the MMC's.
	decoy, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer decoy.Close()
	var decoyRTT []time.Duration
	fl := startFlooder(b, mmc.bundleText, decoy.LocalAddr().String(), "")
	time.Sleep(500 * time.Millisecond)
	setPhase(&decoyRTT)
	time.Sleep(phase)
	setPhase(nil)
	dsent, _ := fl.counts(b)
	fl.stop()

	fl = startFlooder(b, mmc.bundleText, "", "")
	time.Sleep(500 * time.Millisecond) // the flood is under way
	cpu2, drop2 := procCPU(b, mmc.pid), udpDrops(b, port)
	sent0, _ := fl.counts(b)
	fcpu0 := procCPU(b, fl.cmd.Process.Pid)
	setPhase(&hostile)
	time.Sleep(phase)
	setPhase(nil)
	cpu3, drop3 := procCPU(b, mmc.pid), udpDrops(b, port)
	sent1, sessions := fl.counts(b)
	fcpu1 := procCPU(b, fl.cmd.Process.Pid)
	fl.stop()

	// The same flood from an approved agent that turned hostile: it holds
	// its key and K, and its session is capped at agentRecvRate.
	creds, err := hostileAgentCreds(ctx, agents, addr, keys[0], bundle.ClusterID, tok)
	if err != nil {
		b.Fatal(err)
	}
	var hostileAgent []time.Duration
	fl = startFlooder(b, mmc.bundleText, "", creds)
	time.Sleep(500 * time.Millisecond)
	cpu4, drop4 := procCPU(b, mmc.pid), udpDrops(b, port)
	asent0, _ := fl.counts(b)
	setPhase(&hostileAgent)
	time.Sleep(phase)
	setPhase(nil)
	cpu5, drop5 := procCPU(b, mmc.pid), udpDrops(b, port)
	asent1, _ := fl.counts(b)
	fl.stop()
	b.StopTimer()
	cancel()
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()

	pq, ph, pd := p99(quiet), p99(hostile), p99(decoyRTT)
	secs := phase.Seconds()
	b.ReportMetric(float64(pq.Microseconds())/1000, "p99-quiet-ms")
	b.ReportMetric(float64(ph.Microseconds())/1000, "p99-hostile-ms")
	b.ReportMetric(float64(ph)/float64(pq), "p99-ratio")
	b.ReportMetric(float64(pd.Microseconds())/1000, "p99-decoy-ms")
	b.ReportMetric((cpu1-cpu0).Seconds()/secs, "mmc-cpu-quiet")
	b.ReportMetric((cpu3-cpu2).Seconds()/secs, "mmc-cpu-hostile")
	b.ReportMetric(float64(sent1-sent0)/secs, "hostile-pkts/s")
	b.ReportMetric((fcpu1-fcpu0).Seconds()/secs, "hostile-cpu")
	b.ReportMetric(float64(drop1-drop0)/secs, "drops/s-quiet")
	b.ReportMetric(float64(drop3-drop2)/secs, "drops/s-hostile")
	pa := p99(hostileAgent)
	b.ReportMetric(float64(pa.Microseconds())/1000, "p99-agent-ms")
	b.ReportMetric(float64(pa)/float64(pq), "p99-agent-ratio")
	b.ReportMetric((cpu5-cpu4).Seconds()/secs, "mmc-cpu-agent")
	b.ReportMetric(float64(asent1-asent0)/secs, "agent-pkts/s")
	b.ReportMetric(float64(drop5-drop4)/secs, "drops/s-agent")
	b.Logf("round trips: quiet %d (p50 %v, p99 %v), decoy flood %d (p50 %v, p99 %v; %d packets), hostile %d (p50 %v, p99 %v); %d probes unanswered in 2 s; hostile: %d packets in %d sessions",
		len(quiet), p50(quiet), pq, len(decoyRTT), p50(decoyRTT), pd, dsent, len(hostile), p50(hostile), ph, lost.Load(), sent1, sessions)
	b.Logf("hostile approved agent: %d round trips (p50 %v, p99 %v)", len(hostileAgent), p50(hostileAgent), pa)
	if len(quiet) < agents || len(hostile) < agents || len(hostileAgent) < agents {
		b.Fatalf("too few round trips: %d quiet, %d hostile, %d hostile agent", len(quiet), len(hostile), len(hostileAgent))
	}
}

func p99(d []time.Duration) time.Duration { return percentile(d, 0.99) }
func p50(d []time.Duration) time.Duration { return percentile(d, 0.50) }

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*q))]
}

// childMMC is the MMC process under test.
type childMMC struct {
	pid        int
	bundle     identity.Bundle
	bundleText string
	token      string
}

// startChildMMC re-executes the test binary as an MMC (hostileChildMain)
// and reads its bundle and a join token; closing its stdin stops it.
func startChildMMC(b *testing.B) childMMC {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), hostileChildEnv+"="+b.TempDir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	var lines []string
	for len(lines) < 2 && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < 2 {
		b.Fatalf("child MMC: %v", sc.Err())
	}
	bundle, err := identity.ParseBundle(lines[0])
	if err != nil {
		b.Fatal(err)
	}
	return childMMC{pid: cmd.Process.Pid, bundle: bundle, bundleText: lines[0], token: lines[1]}
}

const (
	hostileChildEnv   = "FERRY_HOSTILE_BENCH_MMC"
	hostileFlooderEnv = "FERRY_HOSTILE_BENCH_FLOOD"
	hostileSinkEnv    = "FERRY_HOSTILE_BENCH_SINK"
	// hostileAgentEnv, if set, makes the flooder an approved agent that
	// turned hostile (hostileAgentCreds' form) instead of an enrolling host.
	hostileAgentEnv = "FERRY_HOSTILE_BENCH_AGENT"
	// hostileFlooderCPUsEnv, if set, is the CPU list (taskset -c) the
	// flooder runs on.
	hostileFlooderCPUsEnv = "FERRY_HOSTILE_BENCH_FLOOD_CPUS"
)

// flooder is the hostile peer's process: the attacker is another machine,
// so it must not share the agents' Go scheduler (a goroutine sending at
// line rate would delay the agents' own goroutines and be measured as the
// MMC's round trip). The cores are still shared.
type flooder struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startFlooder starts the hostile peer; with a sink address its flood goes
// there instead of to the MMC (the handshakes still do).
func startFlooder(b *testing.B, bundle, sink, agent string) *flooder {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if cpus := os.Getenv(hostileFlooderCPUsEnv); cpus != "" {
		// The attacker on cores of its own, as if on another machine
		// (run the benchmark itself under taskset on the others).
		cmd = exec.Command("taskset", "-c", cpus, os.Args[0], "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), hostileFlooderEnv+"="+bundle, hostileSinkEnv+"="+sink, hostileAgentEnv+"="+agent)
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	f := &flooder{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	b.Cleanup(f.stop)
	return f
}

// counts asks the flooder how many packets it has sent, in how many
// sessions.
func (f *flooder) counts(b *testing.B) (sent, sessions int64) {
	if _, err := io.WriteString(f.in, "\n"); err != nil {
		b.Fatal(err)
	}
	if !f.out.Scan() {
		b.Fatalf("flooder: %v", f.out.Err())
	}
	if _, err := fmt.Sscan(f.out.Text(), &sent, &sessions); err != nil {
		b.Fatal(err)
	}
	return sent, sessions
}

func (f *flooder) stop() {
	if f.in != nil {
		f.in.Close()
		_ = f.cmd.Wait()
		f.in = nil
	}
}

// hostileFlooderMain is the flooder process: it floods the bundle's MMC,
// answers each line on stdin with its counts, and stops at EOF.
func hostileFlooderMain(bundleText string) error {
	bundle, err := identity.ParseBundle(bundleText)
	if err != nil {
		return err
	}
	keys, err := bundle.Keys()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var sent, sessions atomic.Int64
	done := make(chan error, 1)
	var sink *net.UDPConn
	if addr := os.Getenv(hostileSinkEnv); addr != "" {
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			cancel()
			return err
		}
		if sink, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 9, 1)}, ua); err != nil {
			cancel()
			return err
		}
		defer sink.Close()
	}
	ua, err := net.ResolveUDPAddr("udp4", bundle.MMCs[0].Addr)
	if err != nil {
		cancel()
		return err
	}
	open := func() (*hostileSession, error) { return hostileHandshake(ua, keys[0], bundle.ClusterID) }
	if creds := os.Getenv(hostileAgentEnv); creds != "" {
		kp, psk, err := parseAgentCreds(creds)
		if err != nil {
			cancel()
			return err
		}
		open = func() (*hostileSession, error) {
			sock, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 9, 1)}, ua)
			if err != nil {
				return nil, err
			}
			h, err := hostileHandshakeAs(sock, kp, psk, keys[0], bundle.ClusterID)
			if err != nil {
				sock.Close()
			}
			return h, err
		}
	}
	go func() { done <- floodMMC(ctx, open, sink, &sent, &sessions) }()
	rd := bufio.NewReader(os.Stdin)
	for {
		if _, err := rd.ReadString('\n'); err != nil {
			break
		}
		fmt.Printf("%d %d\n", sent.Load(), sessions.Load())
	}
	cancel()
	return <-done
}

// hostileChildMain is the child: an MMC on loopback, with re-authentication
// out of the way (its challenges would be part of neither phase), printing
// its bundle and a join token for the agents, until stdin closes.
func hostileChildMain(dir string) error {
	s, err := New(Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "-", ReauthMin: time.Hour})
	if err != nil {
		return err
	}
	tok, id, hash, err := identity.NewToken(s.cfg.Rand)
	if err != nil {
		return err
	}
	if err := s.st.PutToken(store.Token{ID: id, Hash: hash, Expires: time.Now().Add(time.Hour), UsesLeft: 1000}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	fmt.Printf("%s\n%s\n", s.Bundle().Encode(), tok)
	_, _ = bufio.NewReader(os.Stdin).ReadString(0) // until EOF
	cancel()
	return <-done
}

// procCPU is a process's user+system CPU time.
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14, stime 15, in clock ticks (100 Hz on Linux).
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// udpDrops is the kernel's count of datagrams dropped at the socket bound
// to port (its receive buffer was full: the receive loop fell behind).
func udpDrops(b *testing.B, port uint16) int64 {
	raw, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		b.Fatal(err)
	}
	want := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(raw), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 13 && strings.HasSuffix(f[1], want) {
			n, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			return n
		}
	}
	return 0
}

// benchLogin enrols agent i with the join token and logs it in, from its
// own loopback address (the MMC limits handshakes per source).
func benchLogin(ctx context.Context, b *testing.B, i int, addr string, mmcKey [32]byte, cluster, tok string) (*sudp.Conn, error) {
	k, err := handshake.GenerateKeypair(nil)
	if err != nil {
		return nil, err
	}
	src := netip.AddrFrom4([4]byte{127, 0, 2 + byte(i/250), 1 + byte(i%250)})
	ep, err := sudp.Listen(sudp.Config{Listen: netip.AddrPortFrom(src, 0).String(), Static: k, ClusterID: cluster})
	if err != nil {
		return nil, err
	}
	b.Cleanup(func() { ep.Close() })
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	facts, psk, err := benchEnrol(dctx, ep, i, addr, mmcKey, cluster, tok)
	if err != nil {
		return nil, err
	}
	c, err := ep.Dial(dctx, addr, mmcKey, psk)
	if err != nil {
		return nil, err
	}
	if err := message.Send(dctx, c, message.Hello{Facts: facts}); err != nil {
		return nil, err
	}
	if e, err := message.Receive(dctx, c); err != nil || e.Type != message.TypeWelcome {
		return nil, fmt.Errorf("login: %v %v", e.Type, err)
	}
	return c, nil
}

// benchEnrol enrols agent i (ep's key) with the join token, returning its
// facts and its login psk K.
func benchEnrol(dctx context.Context, ep *sudp.Endpoint, i int, addr string, mmcKey [32]byte, cluster, tok string) (identity.Facts, [32]byte, error) {
	facts := identity.Facts{Hostname: fmt.Sprintf("bench-%03d", i), MACs: []string{fmt.Sprintf("02:00:00:00:01:%02x", i)}, DiskID: fmt.Sprintf("disk-%03d", i)}
	c, err := ep.Dial(dctx, addr, mmcKey, identity.EnrolPSK(cluster))
	if err != nil {
		return facts, [32]byte{}, err
	}
	if err := message.Send(dctx, c, message.EnrolRequest{Facts: facts, Token: tok}); err != nil {
		return facts, [32]byte{}, err
	}
	e, err := message.Receive(dctx, c)
	if err != nil {
		return facts, [32]byte{}, err
	}
	rep, err := message.Decode[message.EnrolReply](e)
	if err != nil || rep.State != "approved" {
		return facts, [32]byte{}, fmt.Errorf("enrol: %+v %v", rep, err)
	}
	var code identity.Code
	copy(code[:], rep.Code)
	if err := message.Send(dctx, c, message.EnrolAck{}); err != nil {
		return facts, [32]byte{}, err
	}
	select {
	case <-c.Done():
	case <-dctx.Done():
		return facts, [32]byte{}, dctx.Err()
	}
	return facts, identity.DerivePSK(code, cluster, facts), nil
}

// hostileAgentCreds enrols one more agent (number i) and returns what an
// approved agent that turned hostile holds: its key pair and its K, in
// the form the flooder takes them (hex private key, public key, psk).
func hostileAgentCreds(ctx context.Context, i int, addr string, mmcKey [32]byte, cluster, tok string) (string, error) {
	k, err := handshake.GenerateKeypair(nil)
	if err != nil {
		return "", err
	}
	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.9.2:0", Static: k, ClusterID: cluster})
	if err != nil {
		return "", err
	}
	defer ep.Close()
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, psk, err := benchEnrol(dctx, ep, i, addr, mmcKey, cluster, tok)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(k.Private) + ":" + hex.EncodeToString(k.Public) + ":" + hex.EncodeToString(psk[:]), nil
}

// parseAgentCreds reads hostileAgentCreds' form.
func parseAgentCreds(s string) (noise.DHKey, [32]byte, error) {
	var k noise.DHKey
	var psk [32]byte
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return k, psk, fmt.Errorf("agent credentials: want 3 parts, got %d", len(parts))
	}
	priv, err1 := hex.DecodeString(parts[0])
	pub, err2 := hex.DecodeString(parts[1])
	p, err3 := hex.DecodeString(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil || len(p) != 32 {
		return k, psk, fmt.Errorf("agent credentials: %v", err)
	}
	copy(psk[:], p)
	return noise.DHKey{Private: priv, Public: pub}, psk, nil
}

// probeLoop measures session round trips until ctx ends: a TimeRequest,
// then the TimeReply carrying its T1 (other messages — policy — are
// skipped). A probe unanswered for probeTimeout is counted lost, recorded
// as taking probeTimeout (the percentiles must not leave out the worst
// probes) and a new one sent.
const probeTimeout = 2 * time.Second

func probeLoop(ctx context.Context, c *sudp.Conn, every time.Duration, lost *atomic.Int64, record func(time.Duration)) {
	rd := message.NewReader(ctx, c)
	defer rd.Stop()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for ctx.Err() == nil {
		t1 := time.Now()
		if err := message.Send(ctx, c, message.TimeRequest{T1: t1.UnixNano()}); err != nil {
			return
		}
		timeout := time.NewTimer(probeTimeout)
	wait:
		for {
			select {
			case <-ctx.Done():
				timeout.Stop()
				return
			case <-rd.Done:
				timeout.Stop()
				return
			case <-timeout.C:
				lost.Add(1)
				record(probeTimeout)
				break wait
			case e := <-rd.C:
				if e.Type != message.TypeTimeReply {
					continue
				}
				r, err := message.Decode[message.TimeReply](e)
				if err == nil && r.T1 == t1.UnixNano() {
					record(time.Since(t1))
					timeout.Stop()
					break wait
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// floodMMC is the hostile peer: it runs the handshake by hand with a fresh
// key and the bundle's enrolment PSK (any host with the bundle may), then
// sends as fast as one goroutine can seal and write the traffic that costs
// the receiver most per byte: one-byte STREAM frames at every other offset,
// in descending order, spread over new streams (each a hole: a range to
// insert and account), and datagram fragments of new messages, never
// completed (reassembly state). Each session first sends tiny frames up to
// somewhat less than the receive budget's range bound (crossing it would
// close the session), then fragments. A new session replaces it every half
// second, within the MMC's per-source handshake rate (it gets a fresh
// enrolment session's burst); while no handshake succeeds it keeps flooding
// the last one.
func floodMMC(ctx context.Context, open func() (*hostileSession, error), sink *net.UDPConn, sent, sessions *atomic.Int64) error {
	// A new session every half second, each on a socket of its own (the
	// handshake reads its reply there while the flood goes on), within
	// the MMC's per-source handshake rate.
	fresh := make(chan *hostileSession)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			h, err := open()
			if err == nil {
				select {
				case fresh <- h:
				case <-ctx.Done():
					h.sock.Close()
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	var h *hostileSession
	defer func() {
		if h != nil {
			h.sock.Close()
		}
	}()
	var pkt []byte
	for ctx.Err() == nil {
		select {
		case nh := <-fresh:
			if h != nil {
				h.sock.Close()
			}
			h = nh
			sessions.Add(1)
		default:
		}
		if h == nil {
			time.Sleep(time.Millisecond)
			continue
		}
		pkt = pkt[:0]
		switch {
		case h.pn < 120: // 64 holes a packet: 7,680, under the default MaxRecvRanges (8,664)
			stream := uint64(h.pn%200) << 2
			base := uint64(h.pn/200*128+1) + 2<<10
			for k := 63; k >= 0; k-- {
				pkt = append(wire.AppendStreamHeader(pkt, stream, base+2*uint64(k), 1, false), 'x')
			}
		default: // datagram fragments, 1 of 2, each of a new message
			for k := 0; k < 50; k++ {
				h.dg++
				pkt = wire.AppendDatagram(pkt, h.dg, 0, 2, []byte("xxxxxxxxxx"))
			}
		}
		if err := h.send(pkt, sink); err != nil {
			continue // a full socket buffer: line rate reached
		}
		sent.Add(1)
	}
	return nil
}

// hostileSession is the attacker's half of a session: its send key.
type hostileSession struct {
	sock *net.UDPConn
	dcid uint64
	aead cipher.AEAD
	iv   [12]byte
	pn   uint64
	dg   uint64
}

// hostileHandshake runs Noise IKpsk2 as an enrolling host and derives the
// first send key generation as docs/protocol.md §6 specifies.
func hostileHandshake(mmc *net.UDPAddr, mmcKey [32]byte, cluster string) (*hostileSession, error) {
	sock, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 9, 1)}, mmc)
	if err != nil {
		return nil, err
	}
	h, err := hostileHandshakeOn(sock, mmcKey, cluster)
	if err != nil {
		sock.Close()
		return nil, err
	}
	return h, nil
}

func hostileHandshakeOn(sock *net.UDPConn, mmcKey [32]byte, cluster string) (*hostileSession, error) {
	kp, err := handshake.GenerateKeypair(nil)
	if err != nil {
		return nil, err
	}
	return hostileHandshakeAs(sock, kp, identity.EnrolPSK(cluster), mmcKey, cluster)
}

// hostileHandshakeAs is hostileHandshakeOn with a given key pair and psk
// (an approved agent's, for one that turned hostile).
func hostileHandshakeAs(sock *net.UDPConn, kp noise.DHKey, psk, mmcKey [32]byte, cluster string) (*hostileSession, error) {
	in, err := handshake.NewInitiator(handshake.InitiatorConfig{Static: kp, RemoteStatic: mmcKey, PSK: psk, ClusterID: cluster})
	if err != nil {
		return nil, err
	}
	var cid [8]byte
	if _, err := rand.Read(cid[:]); err != nil {
		return nil, err
	}
	pkt, err := in.Initiation(time.Now(), binary.BigEndian.Uint64(cid[:]))
	if err != nil {
		return nil, err
	}
	if _, err := sock.Write(pkt); err != nil {
		return nil, err
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(200 * time.Millisecond)
	for {
		_ = sock.SetReadDeadline(deadline)
		n, err := sock.Read(buf)
		if err != nil {
			return nil, err
		}
		if n > 0 && buf[0] == wire.TypeCookieReply {
			// Under load the MMC asks for proof of address first.
			if err := in.HandleCookieReply(time.Now(), buf[:n]); err != nil {
				return nil, err
			}
			if pkt, err = in.Initiation(time.Now(), binary.BigEndian.Uint64(cid[:])); err != nil {
				return nil, err
			}
			if _, err := sock.Write(pkt); err != nil {
				return nil, err
			}
			continue
		}
		if n == 0 || buf[0] != wire.TypeResponse {
			continue
		}
		s, err := in.HandleResponse(time.Now(), buf[:n])
		if err != nil {
			continue
		}
		k, err := hkdf.Expand(sha256.New, s.SendKey[:], "ferry sudp key", 32)
		if err != nil {
			return nil, err
		}
		iv, err := hkdf.Expand(sha256.New, s.SendKey[:], "ferry sudp iv", 12)
		if err != nil {
			return nil, err
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		h := &hostileSession{sock: sock, dcid: s.RemoteCID, aead: aead}
		copy(h.iv[:], iv)
		return h, nil
	}
}

// send seals frames as the session's next packet.
func (h *hostileSession) send(frames []byte, sink *net.UDPConn) error {
	b := wire.AppendHeader(make([]byte, 0, 1500), wire.Header{DstCID: h.dcid, PN: h.pn})
	nonce := h.iv
	var p [8]byte
	binary.BigEndian.PutUint64(p[:], h.pn)
	for i := range p {
		nonce[4+i] ^= p[i]
	}
	h.pn++
	b = h.aead.Seal(b, nonce[:], frames, b[:wire.DataHeaderSize])
	sock := h.sock
	if sink != nil {
		sock = sink
	}
	_, err := sock.Write(b)
	return err
}
