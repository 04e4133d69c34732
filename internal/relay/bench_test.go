package relay

import (
	"io"
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
			var r *Relay
			if relayed {
				r = newRelay(b, Config{})
				_, ac, bc = g.link(b, r)
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
			buf := make([]byte, 256<<10)
			for range b.N {
				if n := drain(b, ac, bc, p, buf); n != len(p) {
					b.Fatalf("got %d bytes", n)
				}
			}
			b.StopTimer()
			if r != nil {
				var dropped uint64
				for _, n := range r.Stats().Dropped {
					dropped += n
				}
				b.ReportMetric(float64(dropped)/float64(b.N), "relay-drops/op")
			}
		})
	}
}

// drain sends p from A to B and counts what B reads into buf (reused: the
// benchmark measures the link, not the allocator).
func drain(b *testing.B, ac, bc *sudp.Conn, p, buf []byte) int {
	ctx := ctxT(b, time.Minute)
	errc := make(chan error, 1)
	go func() {
		s, err := ac.OpenStream(ctx)
		if err == nil {
			_, err = s.Write(p)
		}
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	s, err := bc.AcceptStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	total := 0
	for {
		n, err := s.Read(buf)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return total
}
