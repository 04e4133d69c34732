package core

import (
	"errors"
	"testing"
	"time"
)

func runFor(s *sim, d time.Duration) {
	end := s.now.Add(d)
	for s.now.Before(end) && s.step() {
	}
}

// Keepalives hold an idle connection open past the idle timeout; without
// them (peer gone) the idle timeout closes it.
func TestKeepAliveAndIdleTimeout(t *testing.T) {
	s := handshakeSim(t, 5, link{delay: 20 * time.Millisecond}, Config{IdleTimeout: 3 * time.Second, KeepAlive: time.Second})
	runFor(s, 20*time.Second)
	for side, c := range s.conn {
		if err := c.Err(); err != nil {
			t.Fatalf("side %d closed while keepalives flowed: %v", side, err)
		}
	}
	sent := s.conn[0].Stats().PacketsSent
	if sent > 200 {
		t.Fatalf("%d packets for 20 s of idle keepalive", sent)
	}
	// The network goes dark: both sides time out.
	s.link.loss = 1
	runFor(s, 10*time.Second)
	for side, c := range s.conn {
		if c.Err() != ErrIdleTimeout || !c.IsClosed() {
			t.Fatalf("side %d: err %v closed %v, want idle timeout", side, c.Err(), c.IsClosed())
		}
	}
}

// A raised idle timeout rides out an outage longer than the configured
// one (keepalives and probes resume once the path is back); an outage
// longer than the raised one still ends the connection.
func TestSetIdleTimeoutRidesOutOutage(t *testing.T) {
	s := handshakeSim(t, 6, link{delay: 20 * time.Millisecond}, Config{IdleTimeout: 3 * time.Second, KeepAlive: time.Second})
	for _, c := range s.conn {
		c.SetIdleTimeout(20 * time.Second)
	}
	s.link.loss = 1
	runFor(s, 10*time.Second) // past the configured 3 s
	s.link.loss = 0
	runFor(s, 15*time.Second) // probes back off to at most 64 PTOs, then get through
	for side, c := range s.conn {
		if err := c.Err(); err != nil {
			t.Fatalf("side %d closed across a 10 s outage with a 20 s idle timeout: %v", side, err)
		}
	}
	s.link.loss = 1
	runFor(s, 25*time.Second)
	for side, c := range s.conn {
		if c.Err() != ErrIdleTimeout {
			t.Fatalf("side %d after a 25 s outage: %v, want idle timeout", side, c.Err())
		}
	}
}

// Graceful close: CLOSE reaches the peer, both drain and end, keys wiped.
func TestGracefulCloseSim(t *testing.T) {
	s := handshakeSim(t, 6, link{delay: 10 * time.Millisecond}, Config{})
	s.conn[0].Close(s.now, CodeApplication+3, "evacuating host")
	runFor(s, 5*time.Second)
	ce, ok := s.conn[1].Err().(*CloseError)
	if !ok || !ce.Remote || ce.Code != CodeApplication+3 || ce.Reason != "evacuating host" {
		t.Fatalf("peer sees %v", s.conn[1].Err())
	}
	for side, c := range s.conn {
		if !c.IsClosed() || c.sendKey != nil || c.recvCur != nil {
			t.Fatalf("side %d not closed and wiped", side)
		}
	}
}

// Key updates by packet count, byte count and time, under loss.
func TestKeyUpdateLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"packets", Config{KeyUpdatePackets: 50}},
		{"bytes", Config{KeyUpdateBytes: 64 << 10}},
		{"time", Config{KeyUpdateInterval: 200 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := handshakeSim(t, 7, link{delay: 10 * time.Millisecond, loss: 0.05, jitter: 3 * time.Millisecond}, tc.cfg)
			c, srv := s.conn[0], s.conn[1]
			id, err := c.OpenStream(true, PriorityBulk)
			if err != nil {
				t.Fatal(err)
			}
			data := make([]byte, 2<<20)
			for i := range data {
				data[i] = byte(i * 7)
			}
			off, read := 0, 0
			buf := make([]byte, 64<<10)
			var sid uint64
			accepted := false
			for steps := 0; read < len(data) && steps < 2_000_000; steps++ {
				if off < len(data) {
					n, _ := c.StreamWrite(id, data[off:])
					off += n
					if off == len(data) {
						c.StreamCloseWrite(id)
					}
				}
				if !accepted {
					sid, accepted = srv.AcceptStream(true)
				}
				if accepted {
					n, _, err := srv.StreamRead(sid, buf)
					if err != nil {
						t.Fatal(err)
					}
					for i := 0; i < n; i++ {
						if buf[i] != byte((read+i)*7) {
							t.Fatalf("byte %d corrupted", read+i)
						}
					}
					read += n
				}
				if !s.step() {
					break
				}
			}
			if read != len(data) {
				t.Fatalf("read %d of %d", read, len(data))
			}
			if ku := c.Stats().KeyUpdates; ku < 3 {
				t.Fatalf("sender made %d key updates", ku)
			}
			if ku := srv.Stats().KeyUpdates; ku < 3 {
				t.Fatalf("receiver followed %d key updates", ku)
			}
		})
	}
}

// TestKeyHardLimit: a peer that keeps sending under one key past
// KeyRejectAfter is cut off with CodeKeyExpired, while peers that follow
// the schedule — including a receiver that only ever sends ACKs, which must
// make a packet ack-eliciting to get its own update acknowledged — run far
// past it.
func TestKeyHardLimit(t *testing.T) {
	cfg := Config{KeyUpdateInterval: 200 * time.Millisecond, IdleTimeout: time.Minute}
	l := link{delay: 10 * time.Millisecond}

	t.Run("peer never updates", func(t *testing.T) {
		s := handshakeSim(t, 11, l, cfg)
		c, srv := s.conn[0], s.conn[1]
		// The client "forgets" to update its key.
		c.cfg.KeyUpdateInterval, c.cfg.KeyRejectAfter = time.Hour, 2*time.Hour
		start := s.now
		for s.now.Sub(start) < 3*time.Second && srv.Err() == nil {
			if id, err := c.OpenStream(true, PriorityNormal); err == nil {
				c.StreamWrite(id, []byte("ping"))
				c.StreamCloseWrite(id)
			}
			advance(s, 50*time.Millisecond)
		}
		var ce *CloseError
		if err := srv.Err(); !errors.As(err, &ce) || ce.Code != CodeKeyExpired || ce.Remote {
			t.Fatalf("server: %v, want a local close with CodeKeyExpired", err)
		}
		if el := s.now.Sub(start); el > time.Second {
			t.Fatalf("stale key accepted for %v (limit %v)", el, srv.cfg.KeyRejectAfter)
		}
		advance(s, time.Second)
		if err := c.Err(); !errors.As(err, &ce) || ce.Code != CodeKeyExpired || !ce.Remote {
			t.Fatalf("client: %v, want the server's CodeKeyExpired", err)
		}
	})

	t.Run("both follow the schedule", func(t *testing.T) {
		s := handshakeSim(t, 12, l, cfg)
		c, srv := s.conn[0], s.conn[1]
		id, err := c.OpenStream(true, PriorityBulk)
		if err != nil {
			t.Fatal(err)
		}
		start := s.now
		buf := make([]byte, 64<<10)
		chunk := make([]byte, 4<<10)
		var sid uint64
		accepted := false
		// Trickle data one way for 3 s (15 update intervals): the server
		// sends nothing but ACKs.
		for s.now.Sub(start) < 3*time.Second {
			c.StreamWrite(id, chunk)
			if !accepted {
				sid, accepted = srv.AcceptStream(true)
			}
			if accepted {
				if _, _, err := srv.StreamRead(sid, buf); err != nil {
					t.Fatal(err)
				}
			}
			runFor(s, 20*time.Millisecond)
		}
		if err := c.Err(); err != nil {
			t.Fatalf("client closed: %v", err)
		}
		if err := srv.Err(); err != nil {
			t.Fatalf("server closed: %v", err)
		}
		// Each side counts its own updates and the peer's: ≥ 2 per
		// interval-and-a-half means both directions moved on.
		if ku := srv.Stats().KeyUpdates; ku < 12 {
			t.Fatalf("server saw %d key updates in 15 intervals", ku)
		}
		if ku := c.Stats().KeyUpdates; ku < 12 {
			t.Fatalf("client saw %d key updates in 15 intervals", ku)
		}
	})
}

// advance runs the simulation for exactly d of virtual time: unlike runFor
// it does not jump past the end to a far timer (a keepalive 10 s away).
func advance(s *sim, d time.Duration) {
	end := s.now.Add(d)
	for {
		s.transmit() // what the application queued goes out now, as a driver would send it
		next := time.Time{}
		for _, c := range s.conn {
			if c == nil {
				continue
			}
			if t := c.NextTimeout(); !t.IsZero() && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
		if len(s.q) > 0 && (next.IsZero() || s.q.peek().at.Before(next)) {
			next = s.q.peek().at
		}
		if next.IsZero() || next.After(end) {
			s.now = end
			return
		}
		if !s.step() {
			s.now = end
			return
		}
	}
}
