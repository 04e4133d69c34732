package core

import (
	"bytes"
	"net/netip"
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

// The response to a punching dial's initiation is lost: the copies of
// that initiation that follow (the dialer resends it every 50 ms) are
// answered with the same response, so the dial completes within a copy
// or two instead of waiting for a fresh initiation; a copy from another
// address gets nothing, and copies are answered at most every
// dupResendGap.
func TestDuplicateInitiationAnswered(t *testing.T) {
	s := newSim(t, 64, link{delay: 30 * time.Millisecond}, Config{})
	cli := s.conn[0]
	cli.SetHandshakeRetry(s.now, 50*time.Millisecond, s.now.Add(3*time.Second))
	srv := s.ep[1]
	n, to, ok := cli.PollTransmit(s.now, s.buf)
	if !ok || to != s.addr[1] {
		t.Fatal("no initiation")
	}
	init := append([]byte(nil), s.buf[:n]...)
	reply, c, _, err := srv.HandleInitiation(s.now, s.addr[0], init)
	if err != nil || c == nil || reply != nil {
		t.Fatalf("first initiation: conn %v reply %d bytes, %v", c != nil, len(reply), err)
	}
	// The server's response is lost. The client's copy comes 50 ms later.
	s.now = s.now.Add(50 * time.Millisecond)
	cli.HandleTimeout(s.now)
	n, _, ok = cli.PollTransmit(s.now, s.buf)
	if !ok || !bytes.Equal(s.buf[:n], init) {
		t.Fatal("the punching dial did not resend the same initiation")
	}
	// From elsewhere: not answered from the cache.
	if r, _, _, _ := srv.HandleInitiation(s.now, netip.MustParseAddrPort("203.0.113.9:1"), init); r != nil {
		t.Fatal("a copy from another address was answered")
	}
	resp, nc, _, err := srv.HandleInitiation(s.now, s.addr[0], init)
	if err != nil || nc != nil || resp == nil {
		t.Fatalf("copy: response %d bytes, new conn %v, %v", len(resp), nc != nil, err)
	}
	if r, _, _, _ := srv.HandleInitiation(s.now.Add(time.Millisecond), s.addr[0], init); r != nil {
		t.Fatal("answered twice within the resend gap")
	}
	cli.HandleDatagram(s.now, s.addr[1], resp)
	if !cli.Established() {
		t.Fatal("the resent response did not complete the dial")
	}
	if srv.Stats().DuplicateInitiations.Load() != 2 {
		t.Fatalf("duplicates counted: %d", srv.Stats().DuplicateInitiations.Load())
	}
}

// The answers kept for copies of initiations are bounded by twice
// MaxUnconfirmed, whatever a flood of initiations makes: entries whose
// connection confirmed or went are swept first, and past the bound a
// new answer is not kept (its copies are then replays, as before).
func TestAnsweredInitiationsBounded(t *testing.T) {
	s := newSim(t, 65, link{}, Config{})
	e := s.ep[1]
	e.cfg.MaxUnconfirmed = 4
	for i := range 200 {
		c := &Conn{}
		c.session.PeerStatic = [32]byte{byte(i), byte(i >> 8)}
		if i%3 == 0 {
			e.unconfirmed[c.session.PeerStatic] = c // still waiting for its peer
		}
		e.rememberAnswer(s.now, s.addr[0], []byte{byte(i), byte(i >> 8), 1}, c, []byte{1})
		if len(e.answered) > 2*e.cfg.MaxUnconfirmed {
			t.Fatalf("after %d initiations: %d answers kept, bound %d", i+1, len(e.answered), 2*e.cfg.MaxUnconfirmed)
		}
	}
}
