package harness

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/bench/internal/peers"
)

// TestMain lets the test binary act as the child processes: `serve`/`send`
// (the Go peers) and, for the fake-ferry tests, `perf server`/`perf client`
// mapped onto the tcp peer.
func TestMain(m *testing.M) {
	args := os.Args[1:]
	if peers.IsChildCommand(args) {
		os.Exit(peers.ChildMain(args, os.Stdout, os.Stderr))
	}
	if len(args) >= 2 && args[0] == "perf" {
		os.Exit(fakeFerry(args[1:]))
	}
	os.Exit(m.Run())
}

// fakeFerry implements ferry's perf CLI contract on top of the tcp peer.
func fakeFerry(args []string) int {
	if os.Getenv("FAKE_FERRY_MODE") == "garbage" && args[0] == "server" {
		fmt.Println("starting up, not JSON")
		time.Sleep(time.Minute)
		return 0
	}
	var rest []string
	for _, a := range args[1:] {
		if a != "--json" {
			rest = append(rest, a)
		}
	}
	switch args[0] {
	case "server":
		return peers.ChildMain(append([]string{"serve", "--proto", "tcp"}, rest...), os.Stdout, os.Stderr)
	case "client":
		return peers.ChildMain(append([]string{"send", "--proto", "tcp"}, rest...), os.Stdout, os.Stderr)
	}
	return 2
}

func self(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func checkSane(t *testing.T, m Measurement, n int64) {
	t.Helper()
	if m.Error != "" {
		t.Fatalf("%s: %s", m.Proto, m.Error)
	}
	if m.Bytes != n || m.Seconds <= 0 || m.GoodputBps <= 0 {
		t.Fatalf("%s: bad measurement %+v", m.Proto, m)
	}
	if m.Server.Total() <= 0 || m.Client.Total() <= 0 || m.CPUSeconds <= 0 || m.CPUPerGiB <= 0 {
		t.Fatalf("%s: no CPU accounted: server %+v client %+v", m.Proto, m.Server, m.Client)
	}
	if m.Client.MaxRSSKiB <= 0 || m.Server.MaxRSSKiB <= 0 {
		t.Errorf("%s: no max RSS: %+v %+v", m.Proto, m.Server, m.Client)
	}
	if len(m.SenderReport) == 0 {
		t.Errorf("%s: no sender report", m.Proto)
	}
	t.Logf("%s: %.2f Gbit/s, %.2f CPU s/GiB (server %.3fs client %.3fs), wire %d, retrans %.4f, rtt %.3f ms",
		m.Proto, m.GoodputBps/1e9, m.CPUPerGiB, m.Server.Total(), m.Client.Total(), m.WireBytes, m.RetransmitRatio, m.RTTMs)
}

// TestGoPeersTwoProcess runs each Go peer through the real two-process path.
func TestGoPeersTwoProcess(t *testing.T) {
	const n = 8 << 20
	cfg := Config{Self: self(t), Timeout: 30 * time.Second}
	for _, proto := range peers.Names() {
		t.Run(proto, func(t *testing.T) {
			if err := cfg.Check([]string{proto}); err != nil {
				t.Fatal(err)
			}
			m, err := cfg.Transfer(context.Background(), proto, n)
			if err != nil {
				t.Fatal(err)
			}
			checkSane(t, m, n)
		})
	}
}

// TestSUDPContractWithFakeFerry drives the sudp path (ferry's perf CLI
// contract) against a stand-in ferry, so the parsing and process handling
// are covered even before the real binary exists.
func TestSUDPContractWithFakeFerry(t *testing.T) {
	const n = 1 << 20
	cfg := Config{Self: self(t), Ferry: self(t), Timeout: 20 * time.Second}
	m, err := cfg.Transfer(context.Background(), SUDP, n)
	if err != nil {
		t.Fatal(err)
	}
	checkSane(t, m, n)
}

func TestSUDPBadAnnouncement(t *testing.T) {
	t.Setenv("FAKE_FERRY_MODE", "garbage")
	cfg := Config{Self: self(t), Ferry: self(t), StartTimeout: 5 * time.Second}
	start := time.Now()
	_, err := cfg.Transfer(context.Background(), SUDP, 1024)
	if err == nil || !strings.Contains(err.Error(), "not {\"addr\",\"key\"} JSON") {
		t.Fatalf("want a clear announcement error, got %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %v to give up", time.Since(start))
	}
}

func TestMissingFerryFailsClearly(t *testing.T) {
	cfg := Config{Self: self(t), Ferry: filepath.Join(t.TempDir(), "ferry")}
	err := cfg.Check([]string{"tcp", SUDP})
	if err == nil || !strings.Contains(err.Error(), "make build") || !strings.Contains(err.Error(), "--ferry") {
		t.Fatalf("want a clear error, got %v", err)
	}
	if err := cfg.Check([]string{"tcp", "bogus"}); err == nil {
		t.Fatal("unknown protocol accepted")
	}
}

// ferryBinary finds the real ferry binary: $FERRY_BIN or <repo>/bin/ferry.
func ferryBinary() string {
	if p := os.Getenv("FERRY_BIN"); p != "" {
		return p
	}
	p, _ := filepath.Abs(filepath.Join("..", "..", "..", "bin", "ferry"))
	return p
}

// TestSUDPRealFerry runs SUDP through the real ferry binary when it exists.
func TestSUDPRealFerry(t *testing.T) {
	bin := ferryBinary()
	cfg := Config{Self: self(t), Ferry: bin, Timeout: 30 * time.Second}
	if err := cfg.Check([]string{SUDP}); err != nil {
		t.Skipf("skipping the real SUDP transfer: %v", err)
	}
	const n = 8 << 20
	m, err := cfg.Transfer(context.Background(), SUDP, n)
	if err != nil {
		t.Fatal(err)
	}
	checkSane(t, m, n)
}

// TestNetns runs a transfer with both processes inside a throw-away network
// namespace, when running as root with iproute2 available.
func TestNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for ip netns")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command")
	}
	ns := fmt.Sprintf("ferrybench-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("ip netns add failed: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	cfg := Config{Self: self(t), ServerNetns: ns, ClientNetns: ns, Addr: "127.0.0.1", Timeout: 20 * time.Second}
	if err := cfg.Check([]string{"tcp", "kcp"}); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"tcp", "kcp"} {
		const n = 1 << 20
		m, err := cfg.Transfer(context.Background(), proto, n)
		if err != nil {
			t.Fatal(err)
		}
		checkSane(t, m, n)
	}
	// A server in the namespace is not reachable from outside it.
	cfg.ClientNetns = ""
	cfg.Timeout = 3 * time.Second
	if _, err := cfg.Transfer(context.Background(), "tcp", 1024); err == nil {
		t.Fatal("transfer from outside the namespace succeeded: netns not applied")
	}
}

func TestParseReport(t *testing.T) {
	out := []byte("progress...\n{\"bytes\": 10, \"seconds\": 0.5, \"goodput_bps\": 160, \"wire_bytes\": 12, \"retransmit_ratio\": 0, \"rtt_ms\": 0.1, \"extra\": true}\n")
	// Non-JSON leading text is an error unless a JSON object follows; the
	// contract says stdout holds only JSON, so accept the strict case.
	if _, _, err := parseReport(out[len("progress...\n"):]); err != nil {
		t.Fatal(err)
	}
	r, raw, err := parseReport([]byte("{\n \"bytes\": 1e3, \"seconds\": 2, \"goodput_bps\": 4000,\n \"wire_bytes\": 1100, \"retransmit_ratio\": 0.01, \"rtt_ms\": 1}\n"))
	if err != nil || r.Bytes != 1000 || r.Seconds != 2 || r.WireBytes != 1100 || len(raw) == 0 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, _, err := parseReport([]byte(`{"bytes": 1, "seconds": 1}`)); err == nil || !strings.Contains(err.Error(), "wire_bytes") {
		t.Fatalf("missing fields not reported: %v", err)
	}
}

// TestTimeCap runs a transfer that cannot finish within the cap: it must
// come back as a capped run whose goodput is the receiver's count ÷ time.
func TestTimeCap(t *testing.T) {
	const n = 1 << 40 // never finishes in 300 ms
	cfg := Config{Self: self(t), TimeCap: 300 * time.Millisecond}
	start := time.Now()
	m, err := cfg.Transfer(context.Background(), "tcp-cubic", n)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("capped run took %v", took)
	}
	if !m.Capped || m.Delivered <= 0 || m.Delivered >= n || m.NoSenderStats {
		t.Fatalf("not a capped run: %+v", m)
	}
	if m.Seconds < 0.3 || m.Seconds > 2 {
		t.Errorf("seconds %v, want about the cap", m.Seconds)
	}
	if want := float64(m.Delivered) * 8 / m.Seconds; math.Abs(m.GoodputBps-want) > 1 {
		t.Errorf("goodput %v, want delivered*8/seconds = %v", m.GoodputBps, want)
	}
	// The receiver's count is read just after the sender stopped, so it may
	// include what was in flight then: compare loosely.
	if m.WireBytes == 0 || float64(m.WireBytes) < 0.9*float64(m.Delivered) {
		t.Errorf("sender stats missing: wire %d, delivered %d", m.WireBytes, m.Delivered)
	}
	t.Logf("capped: %d bytes in %.3fs = %.2f Gbit/s", m.Delivered, m.Seconds, m.GoodputBps/1e9)

	// A run that finishes before the cap is not capped.
	m, err = cfg.Transfer(context.Background(), "tcp", 1<<20)
	if err != nil || m.Capped || m.Delivered != 1<<20 {
		t.Fatalf("uncapped run: %+v %v", m, err)
	}
}

func TestParseStreamReceived(t *testing.T) {
	text := []byte(`# HELP ferry_sudp_stream_bytes_total Application stream bytes
# TYPE ferry_sudp_stream_bytes_total counter
ferry_sudp_stream_bytes_total{direction="received",role="perf-server"} 1.2345678e+07
ferry_sudp_stream_bytes_total{direction="sent",role="perf-server"} 8
ferry_sudp_bytes_total{direction="received",role="perf-server"} 9.9e+09
`)
	got, err := parseStreamReceived(text)
	if err != nil || got != 12345678 {
		t.Fatalf("got %d, %v", got, err)
	}
	if _, err := parseStreamReceived([]byte("go_goroutines 3\n")); err == nil {
		t.Fatal("missing metric accepted")
	}
}

func TestAnnounceWriter(t *testing.T) {
	a := newAnnounceWriter()
	for _, chunk := range []string{`{"addr":"1.2.3.4:5",`, `"key":"k"}` + "\n" + `{"received_bytes":`, "42}\n"} {
		_, _ = a.Write([]byte(chunk))
	}
	ann, err := readAnnouncement(a.first, time.Second)
	if err != nil || ann.Addr != "1.2.3.4:5" || ann.Key != "k" {
		t.Fatalf("%+v %v", ann, err)
	}
	if got, ok := a.received(); !ok || got != 42 {
		t.Fatalf("received %d %v", got, ok)
	}
}
