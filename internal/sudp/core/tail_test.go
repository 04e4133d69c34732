package core

import (
	"testing"
	"time"
)

// tailTransfer warms a connection up over a 50 ms RTT link, then writes
// n bytes and FIN on a new stream and returns how long until the peer has
// read them all, the number of packets the client sent for them, and the
// client's probe timeout. If dropAt > 0, the dropAt-th packet the client
// sends after the write is lost.
func tailTransfer(t *testing.T, n, dropAt int) (took time.Duration, pkts int, pto time.Duration) {
	t.Helper()
	s := handshakeSim(t, 21, link{delay: 25 * time.Millisecond}, Config{})
	bulkTransfer(t, s, 256<<10) // RTT samples, a grown window
	c, srv := s.conn[0], s.conn[1]
	for range 100 { // let the last ACKs land
		s.step()
	}
	pto = c.rec.pto()
	s.drop = func(from int) bool {
		if from != 0 {
			return false
		}
		pkts++
		return pkts == dropAt
	}
	id, err := c.OpenStream(true, PriorityBulk)
	if err != nil {
		t.Fatal(err)
	}
	if w, err := c.StreamWrite(id, make([]byte, n)); err != nil || w != n {
		t.Fatalf("write: %d, %v", w, err)
	}
	if err := c.StreamCloseWrite(id); err != nil {
		t.Fatal(err)
	}
	start := s.now
	buf := make([]byte, 64<<10)
	var sid uint64
	accepted, read := false, 0
	for i := 0; ; i++ {
		if i > 100000 {
			t.Fatalf("read %d of %d bytes", read, n)
		}
		s.transmit()
		if !accepted {
			sid, accepted = srv.AcceptStream(true)
		}
		if accepted {
			r, fin, err := srv.StreamRead(sid, buf)
			if err != nil {
				t.Fatal(err)
			}
			read += r
			if fin && read == n {
				return s.now.Sub(start), pkts, pto
			}
		}
		if !s.step() {
			t.Fatalf("simulation stalled: %d of %d bytes", read, n)
		}
	}
}

// When the last packet of a transfer is lost, nothing later is
// acknowledged to reveal it: the probe timeout must, and the probe must
// carry the lost data itself rather than a PING whose ACK reveals the
// loss a round trip later.
func TestTailLossProbeCarriesData(t *testing.T) {
	const n = 40 << 10
	clean, pkts, pto := tailTransfer(t, n, 0)
	if pkts < 2 {
		t.Fatalf("the transfer took %d packets; the test needs a tail", pkts)
	}
	lossy, _, _ := tailTransfer(t, n, pkts) // lose the last one
	const rtt = 50 * time.Millisecond
	t.Logf("%d bytes in %d packets: %v; last packet lost: %v (PTO %v, RTT %v)", n, pkts, clean, lossy, pto, rtt)
	if extra := lossy - clean; extra > pto+rtt/2 {
		t.Fatalf("losing the last packet cost %v, more than the probe timeout %v plus half an RTT: the probe did not carry the data", extra, pto)
	}
	if lossy <= clean {
		t.Fatalf("the lost packet cost nothing (%v vs %v): the drop did not happen", lossy, clean)
	}
}
