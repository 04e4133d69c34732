package wanlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/nat"
	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

func TestMain(m *testing.M) {
	// Up re-executes the test binary as the emulator.
	MaybeRunChild()
	// A race-enabled emulator would otherwise sleep 1 s at exit (TSan's
	// atexit_sleep_ms), slowing every Down.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	os.Exit(m.Run())
}

// needLab skips the test, with the reason, unless labs can be built here.
func needLab(t *testing.T, natToo bool) {
	t.Helper()
	if err := CheckEnv(natToo); err != nil {
		t.Skip("skipping:", err)
	}
}

var labSeq atomic.Int32

// upLab creates a lab with a unique short name and always removes it.
func upLab(t *testing.T, spec Spec) string {
	t.Helper()
	name := fmt.Sprintf("t%d%d", os.Getpid()%100000, labSeq.Add(1))
	t.Cleanup(func() {
		if err := Down(name); err != nil {
			t.Errorf("Down(%s): %v", name, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Up(ctx, name, spec); err != nil {
		t.Fatalf("Up(%s): %v", name, err)
	}
	return name
}

func TestSpecAndAddresses(t *testing.T) {
	st := newState("x", 3, Spec{NATB: nat.Symmetric})
	a, b := st.Sites[0], st.Sites[1]
	if a.Netns != "x-a" || a.Addr != "198.18.6.1" || a.PublicAddr != a.Addr || a.Router != "" || a.WANNetns != "x-a" {
		t.Errorf("site a = %+v", a)
	}
	if b.Netns != "x-b" || b.Addr != "198.19.7.2" || b.PublicAddr != "198.18.7.1" || b.Router != "x-rb" ||
		b.RouterLAN != "198.19.7.1" || b.WANNetns != "x-rb" || b.WANPrefix != "198.18.7.0/24" {
		t.Errorf("site b = %+v", b)
	}
	last := newState("y", MaxLabs-1, Spec{NATA: nat.EIM})
	if got := last.Sites[1].PublicAddr; got != "198.18.255.1" {
		t.Errorf("last lab's site b = %s", got)
	}
	if got := last.Sites[0].Addr; got != "198.19.254.2" {
		t.Errorf("last lab's private site a = %s", got)
	}
	for _, n := range []string{"", "-x", "a b", "x/y", strings.Repeat("x", 21)} {
		if ValidName(n) == nil {
			t.Errorf("ValidName(%q) accepted", n)
		}
	}
	if err := ValidName("lab_1-x"); err != nil {
		t.Error(err)
	}
}

func TestBuildConfigs(t *testing.T) {
	spec := Spec{
		Profile: "wan",
		Both:    map[string]string{"delay": "10ms", "queue": "64KiB"},
		BA:      map[string]string{"loss": "5%", "rate": "10mbit"},
		AB:      map[string]string{"loss": "ge:1%,30%"},
	}
	ab, ba, err := BuildConfigs(spec)
	if err != nil {
		t.Fatal(err)
	}
	if ab.Delay != 10*time.Millisecond || ab.Rate != 100e6 || ab.Loss != 0 || ab.GE == nil || ab.GE.P != 0.01 || ab.GE.R != 0.3 || ab.GE.H != 1 {
		t.Errorf("ab = %+v (GE %+v)", ab, ab.GE)
	}
	if ba.Delay != 10*time.Millisecond || ba.Rate != 10e6 || ba.Loss != 0.05 || ba.QueueBytes != 64<<10 {
		t.Errorf("ba = %+v", ba)
	}
	for _, bad := range []Spec{
		{Profile: "nope"},
		{Both: map[string]string{"delay": "soon"}},
		{Both: map[string]string{"loss": "150%"}},
		{AB: map[string]string{"colour": "red"}},
	} {
		if err := ValidateSpec(bad); err == nil {
			t.Errorf("ValidateSpec(%+v) accepted", bad)
		}
	}
}

func TestNATRuleset(t *testing.T) {
	inside := netip.MustParseAddr("198.19.0.2")
	eim, err := nat.Ruleset(nat.EIM, "wan0", inside)
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := nat.Ruleset(nat.PortRestricted, "wan0", inside)
	sym, _ := nat.Ruleset(nat.Symmetric, "wan0", inside)
	for _, want := range []string{
		`oifname "wan0" masquerade` + "\n",
		"update @contacted { ip daddr . udp sport }",
		"ip saddr . udp dport @contacted dnat to 198.19.0.2",
		"timeout 120s",
	} {
		if !strings.Contains(eim, want) {
			t.Errorf("eim ruleset lacks %q:\n%s", want, eim)
		}
	}
	if !strings.Contains(pr, `oifname "wan0" masquerade`+"\n") || strings.Contains(pr, "contacted") {
		t.Errorf("port-restricted ruleset:\n%s", pr)
	}
	if !strings.Contains(sym, "masquerade fully-random") || strings.Contains(sym, "contacted") {
		t.Errorf("symmetric ruleset:\n%s", sym)
	}
	if _, err := nat.Ruleset(nat.EIM, "wan0", netip.Addr{}); err == nil {
		t.Error("eim without an inside address accepted")
	}
	for in, want := range map[string]nat.Mode{"symmetric": nat.Symmetric, "eim": nat.EIM, "cone": nat.EIM,
		"port-restricted": nat.PortRestricted, "": nat.None, "none": nat.None} {
		if m, err := nat.ParseMode(in); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, m, err, want)
		}
	}
	if _, err := nat.ParseMode("full"); err == nil {
		t.Error("ParseMode(full) accepted")
	}
}

func TestLifecycle(t *testing.T) {
	needLab(t, false)
	name := upLab(t, Spec{Both: map[string]string{"delay": "1ms"}})

	info, err := Status(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Sites) != 2 || info.Sites[0].Netns != name+"-a" || info.Sites[1].Netns != name+"-b" {
		t.Fatalf("sites = %+v", info.Sites)
	}
	if !info.Running || info.PID <= 0 {
		t.Fatalf("emulator not running: %+v", info)
	}
	if js, _ := json.Marshal(info); info.Hub != nil || strings.Contains(string(js), `"hub"`) {
		t.Errorf("a lab without --hub has a hub: %s", js)
	}
	for _, s := range info.Sites {
		if !netns.Exists(s.Netns) {
			t.Errorf("namespace %s missing", s.Netns)
		}
		if !strings.HasPrefix(s.Addr, "198.18.") {
			t.Errorf("address %s outside 198.18.0.0/15", s.Addr)
		}
	}
	var ab struct {
		Enqueued *uint64 `json:"enqueued"`
	}
	if err := json.Unmarshal(info.Link.AB, &ab); err != nil || ab.Enqueued == nil {
		t.Errorf("link counters %s: %v", info.Link.AB, err)
	}

	if err := Up(context.Background(), name, Spec{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Up: %v, want ErrExists", err)
	}
	if st, _ := Status(name); st == nil || !st.Running || st.PID != info.PID {
		t.Fatalf("second Up disturbed the lab: %+v", st)
	}

	// A crashed emulator: down must still remove everything.
	if err := syscall.Kill(info.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := Down(name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, info.PID)
	if err := Down(name); err != nil {
		t.Fatalf("second Down: %v", err)
	}
	if _, err := Status(name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Status after Down: %v", err)
	}
}

func assertGone(t *testing.T, name string, pid int) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, name+"-") {
			t.Errorf("namespace left behind: %s", l)
		}
	}
	if pid > 0 && alive(pid) {
		t.Errorf("emulator %d still alive", pid)
	}
	if pids := emulatorPids(name); len(pids) > 0 {
		t.Errorf("emulator processes left: %v", pids)
	}
	if _, err := os.Stat(labDir(name)); err == nil {
		t.Errorf("state dir %s left behind", labDir(name))
	}
}

func TestDownPartial(t *testing.T) {
	needLab(t, false)
	name := fmt.Sprintf("t%dp", os.Getpid()%100000)
	t.Cleanup(func() { _ = Down(name) })
	// What a crash of up half-way leaves: a namespace, a router namespace
	// and a state dir without a usable state file.
	for _, ns := range []string{name + "-a", name + "-rb", name + "-hub"} {
		if err := netns.Add(ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(labDir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(labDir(name)+"/state.json", []byte("{trunc"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Up(context.Background(), name, Spec{}); !errors.Is(err, ErrExists) {
		t.Errorf("Up over leftovers: %v, want ErrExists", err)
	}
	if err := Down(name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, 0)
}

var rttRE = regexp.MustCompile(`= ([\d.]+)/([\d.]+)/([\d.]+)/`)

func TestPingRTT(t *testing.T) {
	needLab(t, false)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("skipping: no ping")
	}
	name := upLab(t, Spec{Both: map[string]string{"delay": "25ms"}})
	info, err := Status(name)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", info.Sites[0].Netns,
		"ping", "-c", "10", "-i", "0.1", "-W", "2", "-q", info.Sites[1].Addr).CombinedOutput()
	if err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	m := rttRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no rtt in:\n%s", out)
	}
	avg, _ := strconv.ParseFloat(m[2], 64)
	t.Logf("rtt min/avg/max = %s/%s/%s ms", m[1], m[2], m[3])
	if avg < 45 || avg > 55 {
		t.Errorf("avg RTT %.2f ms, want 50 ms ± 10 %%", avg)
	}
	// stats.json is rewritten every StatsInterval.
	var ab, ba struct {
		Delivered uint64 `json:"delivered"`
	}
	var st *StatusInfo
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st, err = Status(name); err != nil {
			t.Fatal(err)
		}
		_ = json.Unmarshal(st.Link.AB, &ab)
		_ = json.Unmarshal(st.Link.BA, &ba)
		if ab.Delivered >= 10 && ba.Delivered >= 10 {
			return
		}
	}
	t.Errorf("counters after 10 pings: ab %s ba %s", st.Link.AB, st.Link.BA)
}

// udpIn opens a UDP socket inside namespace ns.
func udpIn(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := netns.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(mustAddrPort(t, addr)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// echoSource answers every datagram with the source address it came from.
func echoSource(c *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		_, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteToUDP([]byte(from.String()), from)
	}
}

// observed sends from c to dst and returns the source dst saw.
func observed(t *testing.T, c *net.UDPConn, dst string) string {
	t.Helper()
	buf := make([]byte, 1500)
	for try := 0; try < 5; try++ {
		if _, err := c.WriteToUDP([]byte("who am i"), net.UDPAddrFromAddrPort(mustAddrPort(t, dst))); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := c.ReadFromUDP(buf)
		if err == nil {
			return string(buf[:n])
		}
	}
	t.Fatalf("no answer from %s", dst)
	return ""
}

func TestNAT(t *testing.T) {
	needLab(t, true)
	for _, mode := range []nat.Mode{nat.EIM, nat.PortRestricted, nat.Symmetric} {
		t.Run(string(mode), func(t *testing.T) {
			name := upLab(t, Spec{NATA: mode, Both: map[string]string{"delay": "1ms"}})
			info, err := Status(name)
			if err != nil {
				t.Fatal(err)
			}
			a, b := info.Sites[0], info.Sites[1]
			if a.NAT != string(mode) || a.RouterNetns != name+"-ra" || a.Addr == a.PublicAddr || !strings.HasPrefix(a.Addr, "198.19.") {
				t.Fatalf("site a = %+v", a)
			}
			for _, port := range []string{"7001", "7002"} {
				go echoSource(udpIn(t, b.Netns, b.Addr+":"+port))
			}
			client := udpIn(t, a.Netns, a.Addr+":5555")
			src1 := observed(t, client, b.Addr+":7001")
			src2 := observed(t, client, b.Addr+":7002")
			t.Logf("%s NAT: %s → %s and %s", mode, a.Addr+":5555", src1, src2)
			host1, port1, _ := net.SplitHostPort(src1)
			host2, port2, _ := net.SplitHostPort(src2)
			if host1 != a.PublicAddr || host2 != a.PublicAddr {
				t.Errorf("seen from %s and %s, want the router's public address %s", src1, src2, a.PublicAddr)
			}
			switch mode {
			case nat.EIM, nat.PortRestricted:
				if port1 != port2 {
					t.Errorf("EIM NAT mapped one socket to ports %s and %s", port1, port2)
				}
			case nat.Symmetric:
				if port1 == port2 {
					t.Errorf("symmetric NAT kept port %s for two destinations", port1)
				}
			}
		})
	}
}
