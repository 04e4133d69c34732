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

// A punching dial on a path longer than its retry interval still
// connects: between fresh initiations it resends the same one, so the
// response to any copy authenticates (a fresh initiation every 50 ms
// made every response on a 50 ms path fail).
func TestPunchRetryOnLongPath(t *testing.T) {
	s := newSim(t, 63, link{delay: 40 * time.Millisecond}, Config{}) // 80 ms RTT
	s.conn[0].SetHandshakeRetry(s.now, 50*time.Millisecond, s.now.Add(3*time.Second))
	for i := 0; i < 100000 && (s.conn[1] == nil || !s.conn[0].Established()); i++ {
		if !s.step() {
			break
		}
	}
	if !s.conn[0].Established() {
		t.Fatalf("no connection within %v on an 80 ms path", s.now.Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)))
	}
	if d := s.now.Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); d > 200*time.Millisecond {
		t.Fatalf("connected after %v on an 80 ms path", d)
	}
	if st := s.conn[0].Stats(); st.DroppedAuth > 0 {
		t.Fatalf("%d responses failed to authenticate", st.DroppedAuth)
	}
}
