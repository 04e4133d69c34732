package handshake

import (
	"net/netip"
	"testing"
	"time"
)

// BenchmarkHandleInitiation measures the full responder work for a genuine
// initiation: mac1, rate limit, Noise message 1 (three X25519 operations
// counting the ephemeral), lookup, message 2, split. The initiations are
// made outside the timer.
func BenchmarkHandleInitiation(b *testing.B) {
	f := newFixture(b, 100)
	r := f.responder(b)
	i := f.initiator(b)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		now = now.Add(10 * time.Millisecond) // 100/s: well below the load threshold
		pkt := mustInitiation(b, i, now, 1)
		b.StartTimer()
		if _, _, err := r.HandleInitiation(now, srcA, pkt, 2); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandleInitiationRejected measures what each defence costs the
// responder per packet, i.e. what a flood of each kind buys an attacker.
func BenchmarkHandleInitiationRejected(b *testing.B) {
	f := newFixture(b, 101)
	good := mustInitiation(b, f.initiator(b), t0, 1)
	cases := []struct {
		name string
		cfg  func(*ResponderConfig)
		pkt  []byte
	}{
		{"BadMAC1", nil, flip(good, 8*initMAC1Offset)},
		{"CookieReply", func(c *ResponderConfig) { c.RequireCookie = true }, good},
		{"RateLimited", func(c *ResponderConfig) { c.RateLimit.Rate, c.RateLimit.Burst = 1e-9, 1 }, junkInitiation(f, 1)},
		{"DecryptJunk", nil, junkInitiation(f, 1)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			// Every packet arrives at the same instant: keep the load
			// threshold out of the way so each case measures itself.
			muts := []func(*ResponderConfig){func(c *ResponderConfig) { c.LoadThreshold = 1 << 40 }}
			if c.cfg != nil {
				muts = append(muts, c.cfg)
			}
			r := f.responder(b, muts...)
			src := netip.MustParseAddrPort("203.0.113.9:1")
			b.ReportAllocs()
			for b.Loop() {
				r.HandleInitiation(t0, src, c.pkt, 2)
			}
		})
	}
}

// BenchmarkHandshake is one complete exchange, both sides.
func BenchmarkHandshake(b *testing.B) {
	f := newFixture(b, 102)
	r := f.responder(b)
	i := f.initiator(b)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(10 * time.Millisecond)
		pkt := mustInitiation(b, i, now, 1)
		reply, _, err := r.HandleInitiation(now, srcA, pkt, 2)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := i.HandleResponse(now, reply); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkX25519 is the yardstick: one scalar multiplication. A genuine
// initiation costs the responder five (es, ss, ephemeral, ee, se).
func BenchmarkX25519(b *testing.B) {
	k, err := GenerateKeypair(seeded(103, 0))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := cipherSuite.DH(k.Private, k.Public); err != nil {
			b.Fatal(err)
		}
	}
}
