package wanlab

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/link"
	"github.com/ferry-vm/ferry/internal/wanlab/nat"
	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

func TestHalfConfigs(t *testing.T) {
	c := link.Config{Delay: 25*time.Millisecond + 1, Jitter: 3 * time.Millisecond, Loss: 0.05, Rate: 100e6,
		QueueBytes: 1 << 16, Reorder: 0.01, Duplicate: 0.02, Corrupt: 0.001, Seed: 7}
	first, second := HalfConfigs(c)
	if first.Delay+second.Delay != c.Delay || first.Jitter+second.Jitter != c.Jitter ||
		first.Delay != 12500*time.Microsecond {
		t.Errorf("delays %v+%v, jitter %v+%v; want them to sum to %v, %v", first.Delay, second.Delay, first.Jitter, second.Jitter, c.Delay, c.Jitter)
	}
	for _, h := range []link.Config{first, second} {
		for _, x := range []struct {
			name      string
			half, all float64
		}{{"loss", h.Loss, c.Loss}, {"reorder", h.Reorder, c.Reorder}, {"duplicate", h.Duplicate, c.Duplicate}, {"corrupt", h.Corrupt, c.Corrupt}} {
			if got := 1 - (1-x.half)*(1-x.half); math.Abs(got-x.all) > 1e-12 {
				t.Errorf("%s: halves %v compose to %v, want %v", x.name, x.half, got, x.all)
			}
		}
		if h.Rate != c.Rate || h.QueueBytes != c.QueueBytes || h.Validate() != nil {
			t.Errorf("half %+v", h)
		}
	}
	if first.Seed == second.Seed || first.Seed == c.Seed {
		t.Errorf("seeds %d %d %d", c.Seed, first.Seed, second.Seed)
	}
	ge := link.Config{GE: &link.GilbertElliott{P: 0.01, R: 0.3, H: 1}}
	first, second = HalfConfigs(ge)
	if first.GE == nil || *first.GE != *ge.GE || first.GE == ge.GE || second.GE != nil || second.Loss != 0 {
		t.Errorf("GE halves: %+v %+v", first, second)
	}
}

// TestLinkConfigsHub: the emulator's links through the hub are the halves of
// the configured directions; a↔b is the configured link itself.
func TestLinkConfigsHub(t *testing.T) {
	spec := Spec{Both: map[string]string{"delay": "30ms", "rate": "10mbit"}, AB: map[string]string{"loss": "19%"}}
	two, err := linkConfigs(spec, 2)
	if err != nil {
		t.Fatal(err)
	}
	three, err := linkConfigs(spec, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(two) != 2 || *two[portA][portB] != *three[portA][portB] || *two[portB][portA] != *three[portB][portA] ||
		three[portA][portB].Delay != 30*time.Millisecond || three[portA][portB].Loss != 0.19 {
		t.Errorf("a↔b changed by the hub: %+v / %+v", two[portA][portB], three[portA][portB])
	}
	for _, x := range []struct {
		src, dst int
		loss     float64
	}{{portA, portHub, 0.1}, {portHub, portB, 0.1}, {portB, portHub, 0}, {portHub, portA, 0}} {
		c := three[x.src][x.dst]
		if c == nil || c.Delay != 15*time.Millisecond || c.Rate != 10e6 || math.Abs(c.Loss-x.loss) > 1e-12 {
			t.Errorf("link %d→%d = %+v, want 15 ms, 10 Mbit/s, loss %v", x.src, x.dst, c, x.loss)
		}
	}
	if three[portA][portA] != nil || three[portHub][portHub] != nil {
		t.Error("links on the diagonal")
	}
}

// rtts sends n probes from c to an echo server at dst, one at a time, and
// returns the round-trip times, sorted.
func rtts(t *testing.T, c *net.UDPConn, dst string, n int) []time.Duration {
	t.Helper()
	to := net.UDPAddrFromAddrPort(mustAddrPort(t, dst))
	buf := make([]byte, 1500)
	var out []time.Duration
	for i := 0; i < n; i++ {
		sent := time.Now()
		if _, err := c.WriteToUDP([]byte("ping"), to); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := c.ReadFromUDP(buf); err != nil {
			t.Fatalf("probe %d to %s: %v", i, dst, err)
		}
		out = append(out, time.Since(sent))
		time.Sleep(10 * time.Millisecond)
	}
	slices.Sort(out)
	return out
}

// TestHub: the hub's namespace and address are in the status (and JSON),
// both sites reach it over UDP, at half the site-to-site delay; down
// removes it.
func TestHub(t *testing.T) {
	needLab(t, false)
	name := upLab(t, Spec{Hub: true, Both: map[string]string{"delay": "25ms"}})
	info, err := Status(name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Hub == nil || info.Hub.Netns != name+"-hub" || !netns.Exists(info.Hub.Netns) || !strings.HasPrefix(info.Hub.Addr, "198.51.100.") {
		t.Fatalf("hub = %+v", info.Hub)
	}
	b, _ := json.Marshal(info)
	var js struct {
		Hub struct{ Netns, Addr string } `json:"hub"`
	}
	if err := json.Unmarshal(b, &js); err != nil || js.Hub.Netns != info.Hub.Netns || js.Hub.Addr != info.Hub.Addr {
		t.Errorf("status JSON hub = %+v (%v) in %s", js.Hub, err, b)
	}
	a, bs := info.Sites[0], info.Sites[1]
	go echoSource(udpIn(t, info.Hub.Netns, info.Hub.Addr+":7000"))
	go echoSource(udpIn(t, bs.Netns, bs.Addr+":7000"))
	// The minimum RTT is the configured delay plus the forwarding cost
	// (never less): robust against other load on the machine, unlike a mean.
	check := func(what string, got []time.Duration, want time.Duration) {
		t.Logf("%s RTT min %v median %v", what, got[0], got[len(got)/2])
		if got[0] < want || got[0] > want+5*time.Millisecond {
			t.Errorf("%s: minimum RTT %v, want %v (+5 ms)", what, got[0], want)
		}
	}
	ca := udpIn(t, a.Netns, a.Addr+":0")
	check("a↔b", rtts(t, ca, bs.Addr+":7000", 20), 50*time.Millisecond)
	check("a↔hub", rtts(t, ca, info.Hub.Addr+":7000", 20), 25*time.Millisecond)
	cb := udpIn(t, bs.Netns, bs.Addr+":0")
	check("b↔hub", rtts(t, cb, info.Hub.Addr+":7000", 20), 25*time.Millisecond)

	// The hub's links counted the probes; a↔b's did not carry them.
	var hub map[string]linkCounters
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, err := Status(name)
		if err != nil {
			t.Fatal(err)
		}
		hub = nil
		_ = json.Unmarshal(st.Link.Hub, &hub)
		if hub["a_hub"].Delivered >= 20 && hub["hub_b"].Delivered >= 20 || time.Now().After(deadline) {
			break
		}
	}
	for _, k := range []string{"a_hub", "hub_a", "b_hub", "hub_b"} {
		if hub[k].Delivered < 20 {
			t.Errorf("hub link %s delivered %d packets, want ≥ 20 (%+v)", k, hub[k].Delivered, hub)
		}
	}

	pid := info.PID
	if err := Down(name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, pid)
}

// TestHubNAT: with both sites behind NATs, both reach the hub, which sees
// them at their routers' public addresses; the symmetric router gives one
// socket a new public port per destination, the eim router keeps one.
func TestHubNAT(t *testing.T) {
	needLab(t, true)
	name := upLab(t, Spec{Hub: true, NATA: nat.EIM, NATB: nat.Symmetric, Both: map[string]string{"delay": "2ms"}})
	info, err := Status(name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Hub == nil {
		t.Fatal("no hub in status")
	}
	for _, port := range []string{"7001", "7002"} {
		go echoSource(udpIn(t, info.Hub.Netns, info.Hub.Addr+":"+port))
	}
	for _, s := range info.Sites {
		c := udpIn(t, s.Netns, s.Addr+":5555")
		src1 := observed(t, c, info.Hub.Addr+":7001")
		src2 := observed(t, c, info.Hub.Addr+":7002")
		t.Logf("site %s (%s NAT): the hub sees %s and %s", s.Name, s.NAT, src1, src2)
		h1, p1, _ := net.SplitHostPort(src1)
		h2, p2, _ := net.SplitHostPort(src2)
		if h1 != s.PublicAddr || h2 != s.PublicAddr {
			t.Errorf("site %s seen from %s and %s, want its public address %s", s.Name, src1, src2, s.PublicAddr)
		}
		if eim := s.NAT == string(nat.EIM); eim != (p1 == p2) {
			t.Errorf("site %s (%s): public ports %s and %s", s.Name, s.NAT, p1, p2)
		}
	}
}

// recv waits up to d for a datagram on c.
func recv(c *net.UDPConn, d time.Duration) (msg string, from netip.AddrPort, err error) {
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, ap, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", ap, err
	}
	return string(buf[:n]), netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// recvMsg waits up to d for the datagram want on c, skipping others (punches
// still in flight).
func recvMsg(c *net.UDPConn, want string, d time.Duration) (netip.AddrPort, error) {
	deadline := time.Now().Add(d)
	for {
		msg, from, err := recv(c, time.Until(deadline))
		if err != nil {
			return from, fmt.Errorf("waiting for %q: %w", want, err)
		}
		if msg == want {
			return from, nil
		}
	}
}

// expectNothing fails if c receives anything within d.
func expectNothing(t *testing.T, c *net.UDPConn, d time.Duration, what string) {
	t.Helper()
	msg, from, err := recv(c, d)
	if err == nil {
		t.Errorf("%s: received %q from %s, want nothing", what, msg, from)
		return
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatal(err)
	}
}

// TestNATFiltering: behind an eim router (restricted cone), after the host
// sent to IP X, packets from X reach it from any port, while an IP it never
// sent to is filtered; behind a port-restricted router only X's contacted
// port gets through.
func TestNATFiltering(t *testing.T) {
	needLab(t, true)
	for _, mode := range []nat.Mode{nat.EIM, nat.PortRestricted} {
		t.Run(string(mode), func(t *testing.T) {
			name := upLab(t, Spec{Hub: true, NATA: mode, Both: map[string]string{"delay": "1ms"}})
			info, err := Status(name)
			if err != nil {
				t.Fatal(err)
			}
			a, b := info.Sites[0], info.Sites[1]
			host := udpIn(t, a.Netns, a.Addr+":5555")
			x1 := udpIn(t, b.Netns, b.Addr+":7001")
			x2 := udpIn(t, b.Netns, b.Addr+":7002")
			third := udpIn(t, info.Hub.Netns, info.Hub.Addr+":7003")

			// A packet from X:7002 before the host ever sent to X (a punch
			// that overtook the host's first packet) is dropped, and must
			// leave no state behind: X:7002's later packets pass below.
			early := &net.UDPAddr{IP: net.ParseIP(a.PublicAddr), Port: 5555}
			if _, err := x2.WriteToUDP([]byte("too early"), early); err != nil {
				t.Fatal(err)
			}
			expectNothing(t, host, 300*time.Millisecond, "a packet before the host sent to X")

			if _, err := host.WriteToUDP([]byte("hello"), x1.LocalAddr().(*net.UDPAddr)); err != nil {
				t.Fatal(err)
			}
			msg, mapped, err := recv(x1, 2*time.Second)
			if err != nil || msg != "hello" {
				t.Fatalf("X:7001 got %q, %v", msg, err)
			}
			if mapped.Addr().String() != a.PublicAddr || mapped.Port() != 5555 {
				t.Fatalf("mapped to %s, want %s:5555 (the port is kept)", mapped, a.PublicAddr)
			}
			to := net.UDPAddrFromAddrPort(mapped)
			send := func(c *net.UDPConn, m string) {
				if _, err := c.WriteToUDP([]byte(m), to); err != nil {
					t.Fatal(err)
				}
			}
			send(third, "from a stranger")
			expectNothing(t, host, 300*time.Millisecond, "an IP the host never sent to")
			send(x2, "from another port of X")
			msg, from, err := recv(host, 300*time.Millisecond)
			switch mode {
			case nat.EIM:
				if err != nil || msg != "from another port of X" || from.String() != b.Addr+":7002" {
					t.Errorf("X:7002 → host: got %q from %s, %v; want it delivered (address-dependent filtering)", msg, from, err)
				}
			case nat.PortRestricted:
				if err == nil {
					t.Errorf("X:7002 → host: got %q from %s through a port-restricted NAT", msg, from)
				}
			}
			send(x1, "reply")
			if msg, _, err := recv(host, 2*time.Second); err != nil || msg != "reply" {
				t.Errorf("X:7001 → host: got %q, %v", msg, err)
			}
			// The stranger is still filtered after all this.
			send(third, "again")
			expectNothing(t, host, 300*time.Millisecond, "the stranger again")
		})
	}
}

// punch sends to the peer from c every 20 ms until it hears from it (or 3 s
// pass), answering every punch it receives to the address it came from (as
// a handshake responder does), and reports the first datagram it heard and
// from where: the address to use for this peer from now on.
func punch(c *net.UDPConn, peer netip.AddrPort, me string) (string, netip.AddrPort, error) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			_, _ = c.WriteToUDPAddrPort([]byte("punch from "+me), peer)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	msg, from, err := recv(c, 3*time.Second)
	if err == nil && strings.HasPrefix(msg, "punch") {
		_, _ = c.WriteToUDPAddrPort([]byte("answer from "+me), from)
	}
	return msg, from, err
}

// TestHolePunch is what the agents will do, with plain UDP sockets: each host
// learns its public address from the hub, they exchange them (here: through
// the test), and both send to each other at once. eim×eim: both punches get
// through. eim×symmetric: the symmetric side's public port towards the peer
// is not the one the hub saw, but its packets pass the eim side's
// address-dependent filter once the eim side has sent one packet to its IP.
func TestHolePunch(t *testing.T) {
	needLab(t, true)
	for _, tc := range []struct{ natA, natB nat.Mode }{{nat.EIM, nat.EIM}, {nat.EIM, nat.Symmetric}} {
		t.Run(fmt.Sprintf("%s-%s", tc.natA, tc.natB), func(t *testing.T) {
			name := upLab(t, Spec{Hub: true, NATA: tc.natA, NATB: tc.natB, Both: map[string]string{"delay": "10ms"}})
			info, err := Status(name)
			if err != nil {
				t.Fatal(err)
			}
			go echoSource(udpIn(t, info.Hub.Netns, info.Hub.Addr+":3478"))
			var (
				conns [2]*net.UDPConn
				seen  [2]netip.AddrPort
			)
			for i, s := range info.Sites {
				conns[i] = udpIn(t, s.Netns, s.Addr+":0")
				seen[i] = mustAddrPort(t, observed(t, conns[i], info.Hub.Addr+":3478"))
				t.Logf("site %s (%s): %s seen at the hub as %s", s.Name, s.NAT, conns[i].LocalAddr(), seen[i])
			}
			type result struct {
				msg  string
				from netip.AddrPort
				err  error
			}
			var res [2]chan result
			for i := range 2 {
				res[i] = make(chan result, 1)
				go func() {
					m, f, err := punch(conns[i], seen[1-i], info.Sites[i].Name)
					res[i] <- result{m, f, err}
				}()
			}
			var learned [2]netip.AddrPort // learned[i]: where site i reaches its peer
			for i := range 2 {
				r := <-res[i]
				if r.err != nil {
					t.Fatalf("site %s heard nothing from its peer: %v", info.Sites[i].Name, r.err)
				}
				t.Logf("site %s got %q from %s", info.Sites[i].Name, r.msg, r.from)
				if r.from.Addr().String() != info.Sites[1-i].PublicAddr {
					t.Errorf("site %s heard from %s, want its peer's public address %s", info.Sites[i].Name, r.from, info.Sites[1-i].PublicAddr)
				}
				learned[i] = r.from
			}
			// The hole stays open both ways: each side sends to the address
			// it heard its peer from (for a symmetric peer: not the one the
			// hub saw), and the peer answers to where that came from.
			for i := range 2 {
				if _, err := conns[i].WriteToUDPAddrPort([]byte("data"), learned[i]); err != nil {
					t.Fatal(err)
				}
				from, err := recvMsg(conns[1-i], "data", 2*time.Second)
				if err != nil {
					t.Fatalf("site %s → site %s after the punch: %v", info.Sites[i].Name, info.Sites[1-i].Name, err)
				}
				if _, err := conns[1-i].WriteToUDPAddrPort([]byte("ack"), from); err != nil {
					t.Fatal(err)
				}
				if _, err := recvMsg(conns[i], "ack", 2*time.Second); err != nil {
					t.Errorf("site %s's answer to %s: %v", info.Sites[1-i].Name, from, err)
				}
			}
		})
	}
}
