package core

import (
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
