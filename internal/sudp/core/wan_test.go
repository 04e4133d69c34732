package core

import (
	"fmt"
	"testing"
	"time"
)

// bulkTransfer moves n bytes on one stream over the simulated link and
// returns the virtual time it took.
func bulkTransfer(t *testing.T, s *sim, n int) time.Duration {
	t.Helper()
	c, srv := s.conn[0], s.conn[1]
	id, err := c.OpenStream(true, PriorityBulk)
	if err != nil {
		t.Fatal(err)
	}
	if s.beforeWrite != nil {
		s.beforeWrite(id)
	}
	chunk := make([]byte, 1<<20)
	buf := make([]byte, 1<<20)
	start := s.now
	off, read := 0, 0
	var sid uint64
	accepted := false
	deadline := s.now.Add(10 * time.Minute)
	for read < n {
		if s.now.After(deadline) {
			st := c.Stats()
			t.Fatalf("stalled: %d of %d bytes (written %d) after %v; client %+v\nserver %+v\nclient conn: connSent %d connMaxSend %d; stream %+v", read, n, off, s.now.Sub(start), st, srv.Stats(), c.connSent, c.connMaxSend, dumpStream(c.streams[id]))
		}
		if off < n {
			w, err := c.StreamWrite(id, chunk[:min(len(chunk), n-off)])
			if err != nil {
				t.Fatal(err)
			}
			off += w
		}
		if !accepted {
			sid, accepted = srv.AcceptStream(true)
		}
		if accepted {
			r, _, err := srv.StreamRead(sid, buf)
			if err != nil {
				t.Fatal(err)
			}
			read += r
		}
		if !s.step() {
			t.Fatalf("simulation stalled: %d of %d bytes", read, n)
		}
		if s.onStep != nil {
			s.onStep()
		}
	}
	return s.now.Sub(start)
}

// TestWANBulkTransfer: a bottleneck of 100 Mbit/s, 50 ms RTT, random loss,
// as the WAN lab's "wan" and "lossy" profiles. The transfer must finish
// (no stall) and stay well above what loss-based TCP gets.
func TestWANBulkTransfer(t *testing.T) {
	for _, loss := range []float64{0, 0.01, 0.05, 0.15} {
		s := handshakeSim(t, 9, link{delay: 25 * time.Millisecond, loss: loss, rate: 100e6, queue: 625_000}, Config{})
		const n = 48 << 20
		d := bulkTransfer(t, s, n)
		mbps := float64(n) * 8 / d.Seconds() / 1e6
		st := s.conn[0].Stats()
		wire := float64(st.BytesSent) / float64(n)
		t.Logf("loss %4.1f%%: %.1f Mbit/s, %.3f wire bytes per byte, %d lost, %d retx bytes, %d stream bytes, %d pkts sent, srtt %v, link drops %d of %d", loss*100, mbps, wire, st.PacketsLost, st.RetransmittedBytes, st.StreamBytesSent, st.PacketsSent, st.SmoothedRTT, s.dropped, s.sent)
		// Virtual time, deterministic seed: these are properties of the
		// protocol, not of the machine. Loss-based TCP gets a few Mbit/s
		// at 5 % here; the floor is well above that.
		if floor := 0.6 * 100 * (1 - loss); mbps < floor {
			t.Errorf("loss %.0f%%: %.1f Mbit/s, below %.1f", loss*100, mbps, floor)
		}
		if limit := 1/(1-loss) + 0.15; wire > limit {
			t.Errorf("loss %.0f%%: %.3f wire bytes per byte, above %.3f", loss*100, wire, limit)
		}
	}
}

func dumpStream(s *stream) string {
	if s == nil {
		return "gone"
	}
	return fmt.Sprintf("ss=%d written=%d sent=%d maxSend=%d sbuf.lo=%d lost=%v acked=%v queued=%v finSent=%v", s.ss, s.written, s.sent, s.maxSend, s.sbuf.lo, s.lost.r, len(s.acked.r), s.queued, s.finSent)
}

// A stream with a queue-delay bound keeps about that much of the
// connection's rate written but unsent — so its writer sees the network's
// pace, not a 16 MiB buffer's — and still fills the link.
func TestMaxQueueDelay(t *testing.T) {
	const n = 24 << 20
	const linkRate = 100e6 / 8 // bytes/s
	run := func(bound time.Duration) (took, worst time.Duration) {
		s := handshakeSim(t, 11, link{delay: 25 * time.Millisecond, loss: 0.01, rate: 100e6, queue: 625_000}, Config{})
		c := s.conn[0]
		start := s.now
		s.beforeWrite = func(id uint64) { _ = c.StreamSetMaxQueueDelay(id, bound) }
		s.onStep = func() {
			if s.now.Sub(start) < 2*time.Second {
				return // startup: the rate is still being found
			}
			for _, st := range c.streams {
				// How long the unsent bytes take at the link's rate.
				worst = max(worst, time.Duration(float64(st.written-st.sent)/linkRate*float64(time.Second)))
			}
		}
		return bulkTransfer(t, s, n), worst
	}
	free, freeQ := run(0)
	bounded, boundedQ := run(50 * time.Millisecond)
	t.Logf("24 MiB at 100 Mbit/s, 50 ms RTT, 1%% loss: unbounded %v (queue up to %v), 50 ms bound %v (queue up to %v)", free, freeQ, bounded, boundedQ)
	if boundedQ > 150*time.Millisecond {
		t.Fatalf("unsent bytes waited up to %v with a 50 ms bound", boundedQ)
	}
	if bounded > free*12/10 {
		t.Fatalf("the bound slowed the transfer: %v vs %v", bounded, free)
	}
}
