package core

import (
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/congestion"
)

// TestIdleSenderEarnsNoCatchUp: a sender that went idle, with the pacer
// short at its last poll, gets one bucket and the rate when data comes
// again, not the pacer's catch-up for lateness: it was not late, it had
// nothing to send. (The core clears the pacer's due time both when a poll
// finds nothing to send with the pacer open — app-limited — and, since a
// review, when it finds the pacer short with nothing queued; this path
// exercises the connection as a whole.)
func TestIdleSenderEarnsNoCatchUp(t *testing.T) {
	const rate = 10e6 // bytes/s: the pacer, not the window, holds the sender
	// A 40 µs RTT: the last ACK (the receiver acknowledges every second
	// packet at once) comes back before the pacer's next packet is due
	// (145 µs at this rate), so the last poll finds the pacer short and
	// nothing queued, and none follows until the writer comes back.
	s := handshakeSim(t, 7, link{delay: 20 * time.Microsecond}, Config{})
	cli := s.conn[0]
	cli.SetMaxRate(rate)
	id, err := cli.OpenStream(false, PriorityBulk)
	if err != nil {
		t.Fatal(err)
	}
	write := writer(t, cli, id)
	write(29 << 10)
	s.transmit()
	// Until everything is acknowledged.
	for i := 0; i < 100000; i++ {
		st := cli.Stats()
		if st.StreamBytesSent >= 29<<10 && st.BytesInFlight == 0 {
			break
		}
		if !s.step() {
			t.Fatal("the simulation ran dry")
		}
	}
	s.now = s.now.Add(2 * time.Second) // idle
	write(1 << 20)
	before, start := cli.Stats().StreamBytesSent, s.now
	s.transmit()
	for s.now.Sub(start) < 20*time.Millisecond {
		if !s.step() {
			t.Fatal("the simulation ran dry")
		}
	}
	sent := float64(cli.Stats().StreamBytesSent - before)
	limit := congestion.Burst(rate, DefaultConfig().MaxDatagramSize) + rate*0.02 + 2*float64(DefaultConfig().MaxDatagramSize)
	t.Logf("%.0f bytes in the first 20 ms after 2 s idle (limit %.0f)", sent, limit)
	if sent > limit {
		t.Fatalf("%.0f bytes in the first 20 ms after an idle period, more than a bucket and the rate (%.0f)", sent, limit)
	}
}

// TestAppLimitedStat: the time the window stood open with nothing to
// send is counted once data comes again, and a sender that always has
// data queued adds none.
func TestAppLimitedStat(t *testing.T) {
	s := handshakeSim(t, 11, link{delay: 5 * time.Millisecond}, Config{})
	cli := s.conn[0]
	cli.SetMaxRate(10e6)
	id, err := cli.OpenStream(false, PriorityBulk)
	if err != nil {
		t.Fatal(err)
	}
	write := writer(t, cli, id)
	run := func(d time.Duration) {
		for start := s.now; s.now.Sub(start) < d; {
			if !s.step() {
				t.Fatal("the simulation ran dry")
			}
		}
	}
	write(64 << 10)
	s.transmit()
	for cli.Stats().StreamBytesSent < 64<<10 || cli.Stats().BytesInFlight > 0 {
		if !s.step() {
			t.Fatal("the simulation ran dry")
		}
	}
	before := cli.Stats().AppLimited
	s.now = s.now.Add(2 * time.Second) // nothing to send, the window open
	write(256 << 10)
	s.transmit()
	idle := cli.Stats().AppLimited - before
	if idle < 2*time.Second || idle > 2*time.Second+100*time.Millisecond {
		t.Fatalf("app-limited for %v over a 2 s pause, want about 2 s", idle)
	}
	// 256 KiB at 10 MB/s: still sending 20 ms on, data always queued.
	mid := cli.Stats().AppLimited
	run(20 * time.Millisecond)
	if st := cli.Stats(); st.AppLimited != mid || st.StreamBytesSent >= 256<<10+64<<10 {
		t.Fatalf("a sender with data queued counted %v app-limited (%d bytes sent)", st.AppLimited-mid, st.StreamBytesSent)
	}
}

// writer returns a function writing n bytes on stream id of c, which must
// take them all.
func writer(t *testing.T, c *Conn, id uint64) func(n int) {
	return func(n int) {
		t.Helper()
		for buf := make([]byte, n); len(buf) > 0; {
			k, err := c.StreamWrite(id, buf)
			if err != nil {
				t.Fatal(err)
			}
			if k == 0 {
				t.Fatal("stream full")
			}
			buf = buf[k:]
		}
	}
}
