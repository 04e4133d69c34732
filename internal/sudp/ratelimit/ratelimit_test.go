package ratelimit

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

type call struct {
	at   time.Duration
	addr string
	want bool
}

func TestLimiterTable(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name  string
		cfg   Config
		calls []call
	}{
		{"burst then refill", Config{}, []call{
			{0, "192.0.2.1", true}, {0, "192.0.2.1", true}, {0, "192.0.2.1", true},
			{0, "192.0.2.1", true}, {0, "192.0.2.1", true}, // burst of 5
			{0, "192.0.2.1", false},
			{49 * ms, "192.0.2.1", false}, // 1/20 s not yet elapsed
			{50 * ms, "192.0.2.1", true},  // one token back
			{50 * ms, "192.0.2.1", false},
			{1000 * ms, "192.0.2.1", true}, // long pause: full bucket, but never more than burst
			{1000 * ms, "192.0.2.1", true},
			{1000 * ms, "192.0.2.1", true},
			{1000 * ms, "192.0.2.1", true},
			{1000 * ms, "192.0.2.1", true},
			{1000 * ms, "192.0.2.1", false},
		}},
		{"two sources independent", Config{Burst: 1}, []call{
			{0, "192.0.2.1", true}, {0, "192.0.2.1", false},
			{0, "192.0.2.2", true}, {0, "192.0.2.2", false},
			{0, "198.51.100.7", true},
		}},
		{"ipv6 aggregated per /64", Config{Burst: 2}, []call{
			{0, "2001:db8:1:2::1", true},
			{0, "2001:db8:1:2:ffff:ffff:ffff:ffff", true}, // same /64
			{0, "2001:db8:1:2::99", false},
			{0, "2001:db8:1:3::1", true},                         // next /64
			{0, "fe80::1%eth0", true}, {0, "fe80::2%eth1", true}, // zones do not split a /64
			{0, "fe80::3", false},
		}},
		{"ipv4-mapped ipv6 is the ipv4 host", Config{Burst: 1}, []call{
			{0, "192.0.2.1", true}, {0, "::ffff:192.0.2.1", false},
			{0, "::ffff:192.0.2.2", true}, {0, "192.0.2.2", false},
		}},
		{"ipv4 not aggregated", Config{Burst: 1}, []call{
			{0, "192.0.2.1", true}, {0, "192.0.2.2", true}, {0, "192.0.2.1", false},
		}},
		{"custom rate", Config{Rate: 2, Burst: 1}, []call{
			{0, "192.0.2.1", true}, {499 * ms, "192.0.2.1", false}, {500 * ms, "192.0.2.1", true},
		}},
		{"clock going backwards adds nothing", Config{Burst: 1}, []call{
			{time.Second, "192.0.2.1", true}, {0, "192.0.2.1", false},
			{time.Second + 49*ms, "192.0.2.1", false}, {time.Second + 50*ms, "192.0.2.1", true},
		}},
		{"max entries: full table refuses new sources", Config{MaxEntries: 2}, []call{
			{0, "192.0.2.1", true}, {0, "192.0.2.2", true},
			{0, "192.0.2.3", false},         // fail closed
			{999 * ms, "192.0.2.3", false},  // still nothing stale
			{999 * ms, "192.0.2.1", true},   // known sources are still served
			{1000 * ms, "192.0.2.3", true},  // .2 idle 1 s: forgotten, .3 takes its place
			{1000 * ms, "192.0.2.2", false}, // and now .2 is the one refused
			{1999 * ms, "192.0.2.4", true},  // .1 idle 1 s
			{1999 * ms, "192.0.2.2", false},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := New(tc.cfg)
			for i, c := range tc.calls {
				if got := l.Allow(at(c.at), netip.MustParseAddr(c.addr)); got != c.want {
					t.Fatalf("call %d: Allow(%v, %s) = %v, want %v", i, c.at, c.addr, got, c.want)
				}
				checkInvariants(t, l)
			}
		})
	}
}

func TestInvalidAddressRefused(t *testing.T) {
	l := New(Config{})
	if l.Allow(t0, netip.Addr{}) {
		t.Fatal("zero Addr allowed")
	}
	if l.Len() != 0 {
		t.Fatal("zero Addr tracked")
	}
}

func TestDefaults(t *testing.T) {
	l := New(Config{Rate: -1, Burst: -3, MaxEntries: -5})
	if l.cost != time.Second/DefaultRate || l.maxTokens != DefaultBurst*time.Second/DefaultRate ||
		l.maxEntries != DefaultMaxEntries || l.idle != MinIdle {
		t.Fatalf("defaults not applied: %+v", l)
	}
	// A slow refill keeps entries longer than MinIdle: until the bucket is full.
	l = New(Config{Rate: 1, Burst: 5})
	if l.idle != 5*time.Second {
		t.Fatalf("idle = %v, want 5s", l.idle)
	}
}

func TestGarbageCollection(t *testing.T) {
	l := New(Config{})
	for i := range 100 {
		l.Allow(t0, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	if l.Len() != 100 {
		t.Fatalf("Len = %d, want 100", l.Len())
	}
	probe := netip.MustParseAddr("192.0.2.200")
	// Not yet idle for MinIdle: nothing is collected.
	l.Allow(at(999*time.Millisecond), probe)
	if l.Len() != 101 {
		t.Fatalf("Len = %d, want 101 (nothing stale yet)", l.Len())
	}
	// Each call collects at most CollectPerCall entries...
	l.Allow(at(time.Second), probe)
	if l.Len() != 101-CollectPerCall {
		t.Fatalf("Len = %d, want %d", l.Len(), 101-CollectPerCall)
	}
	checkInvariants(t, l)
	// ...and enough calls collect all stale ones but not the active probe.
	for range 100 {
		l.Allow(at(time.Second), probe)
		checkInvariants(t, l)
	}
	if l.Len() != 1 {
		t.Fatalf("Len = %d after collection, want 1", l.Len())
	}
	// A forgotten source starts again with a full bucket, as if remembered.
	for i := range DefaultBurst {
		if !l.Allow(at(time.Second), netip.AddrFrom4([4]byte{10, 0, 0, 0})) {
			t.Fatalf("forgotten source refused at %d", i)
		}
	}
}

func TestMaxEntriesUnderChurn(t *testing.T) {
	l := New(Config{MaxEntries: 1000})
	now := t0
	admitted := 0
	for i := range 5000 {
		if l.Allow(now, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})) {
			admitted++
		}
		if l.Len() > 1000 {
			t.Fatalf("Len = %d > MaxEntries", l.Len())
		}
	}
	if admitted != 1000 {
		t.Fatalf("admitted %d new sources into a table of 1000 within one instant", admitted)
	}
	checkInvariants(t, l)
}

// TestMatchesModel drives the limiter with random traffic and compares every
// decision with a map of plain token buckets that never forgets anything.
// Garbage collection must be invisible: it only drops full, idle buckets.
func TestMatchesModel(t *testing.T) {
	type bucket struct {
		tokens float64
		last   time.Time
	}
	for seed := uint64(1); seed <= 4; seed++ {
		rng := rand.New(rand.NewChaCha8([32]byte{byte(seed)}))
		cfg := Config{Rate: float64(1 + rng.IntN(40)), Burst: 1 + rng.IntN(6)}
		l := New(cfg)
		cost := float64(l.cost)
		model := map[netip.Addr]*bucket{}
		now := t0
		for i := range 20000 {
			now = now.Add(time.Duration(rng.Int64N(int64(40 * time.Millisecond))))
			a := netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(12))})
			b, ok := model[a]
			if !ok {
				b = &bucket{tokens: float64(l.maxTokens), last: now}
				model[a] = b
			}
			b.tokens = min(b.tokens+float64(now.Sub(b.last)), float64(l.maxTokens))
			b.last = now
			want := b.tokens >= cost
			if want {
				b.tokens -= cost
			}
			if got := l.Allow(now, a); got != want {
				t.Fatalf("seed %d op %d: Allow(%v) = %v, model %v", seed, i, a, got, want)
			}
			if i%97 == 0 {
				checkInvariants(t, l)
			}
		}
	}
}

// checkInvariants verifies the index, the dense slice and the linked list
// agree, and that the list is ordered by last use.
func checkInvariants(t *testing.T, l *Limiter) {
	t.Helper()
	if len(l.index) != len(l.entries) {
		t.Fatalf("index has %d keys, entries %d", len(l.index), len(l.entries))
	}
	for k, i := range l.index {
		if l.entries[i].key != k {
			t.Fatalf("index[%v] = %d holds %v", k, i, l.entries[i].key)
		}
	}
	n := 0
	prev := int32(-1)
	for i := l.head; i >= 0; i = l.entries[i].next {
		e := l.entries[i]
		if e.prev != prev {
			t.Fatalf("entry %d prev = %d, want %d", i, e.prev, prev)
		}
		if prev >= 0 && e.last.Before(l.entries[prev].last) {
			t.Fatalf("list not in order of last use at %d", i)
		}
		if e.tokens < 0 || e.tokens > l.maxTokens {
			t.Fatalf("entry %d tokens %v out of range", i, e.tokens)
		}
		prev = i
		n++
		if n > len(l.entries) {
			t.Fatal("cycle in list")
		}
	}
	if n != len(l.entries) || l.tail != prev {
		t.Fatalf("list has %d entries (tail %d), slice %d (tail %d)", n, prev, len(l.entries), l.tail)
	}
}

func BenchmarkAllow(b *testing.B) {
	l := New(Config{Rate: 1e9, Burst: 1 << 20})
	addrs := make([]netip.Addr, 4096)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	}
	now := t0
	for i := 0; b.Loop(); i++ {
		now = now.Add(time.Microsecond)
		l.Allow(now, addrs[i%len(addrs)])
	}
}
