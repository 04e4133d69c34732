package core

import (
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// countInitiations drives a client whose packets all vanish (the peer's
// NAT drops them) for d and counts the initiations it sends.
func countInitiations(s *sim, d time.Duration) int {
	c := s.conn[0]
	end := s.now.Add(d)
	sent := 0
	for s.now.Before(end) {
		for {
			n, _, ok := c.PollTransmit(s.now, s.buf)
			if !ok {
				break
			}
			if n > 0 && s.buf[0] == wire.TypeInitiation {
				sent++
			}
		}
		next := c.NextTimeout()
		if next.IsZero() || next.After(end) {
			break
		}
		if next.After(s.now) {
			s.now = next
		}
		c.HandleTimeout(s.now)
	}
	return sent
}

// A hole-punching dial resends its initiation every Retry for RetryFor,
// then falls back to the doubling backoff; a plain dial keeps the
// backoff from the start.
func TestHandshakeRetryForPunching(t *testing.T) {
	plain := newSim(t, 61, link{}, Config{})
	if n := countInitiations(plain, time.Second); n > 3 {
		t.Fatalf("a plain dial sent %d initiations in its first second", n)
	}
	punch := newSim(t, 61, link{}, Config{})
	punch.conn[0].SetHandshakeRetry(punch.now, 50*time.Millisecond, punch.now.Add(time.Second))
	if n := countInitiations(punch, time.Second); n < 18 || n > 22 {
		t.Fatalf("a punching dial sent %d initiations in its punch second, want about 20", n)
	}
	// After the window: back to the backoff (500 ms, 1 s, …).
	if n := countInitiations(punch, 2*time.Second); n > 4 {
		t.Fatalf("%d initiations in the 2 s after the punch window", n)
	}
	// Not for a connection past its handshake.
	s := handshakeSim(t, 62, link{delay: 5 * time.Millisecond}, Config{})
	s.conn[0].SetHandshakeRetry(s.now, time.Millisecond, s.now.Add(time.Second))
	if s.conn[0].hsFast != 0 {
		t.Fatal("an established connection took a handshake retry")
	}
}
