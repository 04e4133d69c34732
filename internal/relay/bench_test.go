package relay

import (
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp"
)

// BenchmarkStream moves a 64 MiB stream between two SUDP endpoints on
// loopback, directly and through the relay, for the relayed/direct goodput
// ratio (issue #19's target: ≥ 0.9 when the relay host is not the
// bottleneck; on one machine the relay competes for the same cores).
func BenchmarkStream(b *testing.B) {
	for _, relayed := range []bool{false, true} {
		name := "direct"
		if relayed {
			name = "relayed"
		}
		b.Run(name, func(b *testing.B) {
			g := newAgents(b)
			var ac, bc *sudp.Conn
			if relayed {
				_, ac, bc = g.link(b, newRelay(b, Config{}))
			} else {
				ctx := ctxT(b, 10*time.Second)
				var err error
				if ac, err = g.a.Dial(ctx, g.b.LocalAddr().String(), [32]byte(g.staticB.Public), g.psk); err != nil {
					b.Fatal(err)
				}
				if bc, err = g.b.Accept(ctx); err != nil {
					b.Fatal(err)
				}
			}
			p := payload(64 << 20)
			b.SetBytes(int64(len(p)))
			b.ResetTimer()
			for range b.N {
				got := transfer(b, ac, bc, p)
				if len(got) != len(p) {
					b.Fatalf("got %d bytes", len(got))
				}
			}
			b.StopTimer()
		})
	}
}
