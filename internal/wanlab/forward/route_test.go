package forward

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/link"
)

func ipv4To(dst string) []byte {
	p := make([]byte, 28)
	p[0] = 0x45
	a := netip.MustParseAddr(dst).As4()
	copy(p[16:20], a[:])
	return p
}

func TestRouteByDest(t *testing.T) {
	route := RouteByDest([]netip.Prefix{
		netip.MustParsePrefix("198.18.0.0/24"),
		netip.MustParsePrefix("198.18.1.0/24"),
		netip.MustParsePrefix("198.18.1.128/32"), // more specific than port 1's
		netip.MustParsePrefix("2001:db8::/32"),   // ignored
	})
	v6 := make([]byte, 40)
	v6[0] = 0x60
	for _, c := range []struct {
		pkt  []byte
		want int
	}{
		{ipv4To("198.18.0.1"), 0},
		{ipv4To("198.18.0.255"), 0},
		{ipv4To("198.18.1.1"), 1},
		{ipv4To("198.18.1.128"), 2},
		{ipv4To("198.18.2.1"), -1},
		{ipv4To("10.0.0.1"), -1},
		{v6, -1},
		{ipv4To("198.18.0.1")[:19], -1},
		{nil, -1},
	} {
		if got := route(0, c.pkt); got != c.want {
			t.Errorf("route(%x) = %d, want %d", c.pkt, got, c.want)
		}
	}
}

// TestMeshRoutes: three ports, each packet arrives at the port its
// destination names, after the delay of its own link; unroutable packets
// are counted, not delivered.
func TestMeshRoutes(t *testing.T) {
	prefixes := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/24"),
		netip.MustParsePrefix("10.0.1.0/24"),
		netip.MustParsePrefix("10.0.2.1/32"),
	}
	devs := []*memDevice{newMem(), newMem(), newMem()}
	type arrival struct {
		port int
		dst  netip.Addr
		at   time.Time
	}
	var (
		mu  sync.Mutex
		got []arrival
	)
	for i, d := range devs {
		d.onWrite = func(p []byte) {
			mu.Lock()
			got = append(got, arrival{i, netip.AddrFrom4([4]byte(p[16:20])), time.Now()})
			mu.Unlock()
		}
	}
	links := make([][]*link.Link, 3)
	for i := range 3 {
		links[i] = make([]*link.Link, 3)
		for j := range 3 {
			if i != j {
				// Delay (i+1)·10 + j ms: each link is recognisable by it.
				links[i][j] = mustLink(t, link.Config{Delay: time.Duration(10*(i+1)+j) * time.Millisecond, Seed: uint64(i*3 + j)})
			}
		}
	}
	f := NewMesh([]Device{devs[0], devs[1], devs[2]}, links, RouteByDest(prefixes), Options{})
	start(t, f)
	sent := time.Now()
	devs[0].rx <- ipv4To("10.0.1.1") // 0→1, 11 ms
	devs[0].rx <- ipv4To("10.0.2.1") // 0→2, 12 ms
	devs[2].rx <- ipv4To("10.0.0.1") // 2→0, 30 ms
	devs[1].rx <- ipv4To("10.0.1.7") // 1→1: back out of its own port: dropped
	devs[1].rx <- ipv4To("10.9.9.9") // nowhere: dropped
	// Wait for the three (a loaded host delivers late, never early), then
	// a little longer for any that should not come.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 3 {
			break
		}
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	want := map[int]struct {
		dst   string
		delay time.Duration
	}{1: {"10.0.1.1", 11 * time.Millisecond}, 2: {"10.0.2.1", 12 * time.Millisecond}, 0: {"10.0.0.1", 30 * time.Millisecond}}
	if len(got) != 3 {
		t.Fatalf("delivered %d packets, want 3: %+v", len(got), got)
	}
	for _, a := range got {
		w := want[a.port]
		if a.dst.String() != w.dst {
			t.Errorf("port %d got a packet for %s, want %s", a.port, a.dst, w.dst)
		}
		// Never before its link's delay; the bound above only catches a
		// packet held for no reason (a loaded host adds tens of ms).
		if d := a.at.Sub(sent); d < w.delay || d > w.delay+250*time.Millisecond {
			t.Errorf("packet for %s after %v, want %v", a.dst, d, w.delay)
		}
	}
	if n := f.Unroutable(); n != 2 {
		t.Errorf("Unroutable = %d, want 2", n)
	}
	if s := f.LinkStats(0, 2); s.Delivered != 1 {
		t.Errorf("link 0→2 delivered %d", s.Delivered)
	}
	if err := f.SetLinkConfig(0, 0, &link.Config{}); err == nil {
		t.Error("SetLinkConfig on the diagonal accepted")
	}
}

// BenchmarkMesh is BenchmarkForwarder through a three-port forwarder: the
// same packet rate, plus the routing decision (RouteByDest) per packet.
func BenchmarkMesh(b *testing.B) {
	sink := &countDevice{}
	pkt := make([]byte, 1500)
	copy(pkt, ipv4To("10.0.1.1"))
	src := &genDevice{pkt: pkt, written: &sink.n, window: 1024}
	idle := &countDevice{}
	links := [][]*link.Link{
		{nil, mustLink(b, link.Config{}), mustLink(b, link.Config{})},
		{mustLink(b, link.Config{}), nil, mustLink(b, link.Config{})},
		{mustLink(b, link.Config{}), mustLink(b, link.Config{}), nil},
	}
	route := RouteByDest([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.0.2.1/32"),
	})
	f := NewMesh([]Device{src, sink, idle}, links, route, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	b.ReportAllocs()
	b.ResetTimer()
	t0, c0 := time.Now(), cpuTime()
	for sink.n.Load() < int64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	wall, cpu := time.Since(t0), cpuTime()-c0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/wall.Seconds(), "pkts/s")
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
	cancel()
	<-done
}
