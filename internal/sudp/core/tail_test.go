package core

import (
	"testing"
	"time"
)

// tailTransfer warms a connection up over a 50 ms RTT link, then writes
// n bytes and FIN on a new stream and returns how long until the peer has
// read them all, the number of packets the client sent for them, and the
// client's probe timeout. If dropAt > 0, the dropAt-th packet the client
// sends after the write is lost. dups: with tail duplication (tail.go).
func tailTransfer(t *testing.T, n, dropAt int, dups bool) (took time.Duration, pkts int, pto time.Duration) {
	t.Helper()
	s := handshakeSim(t, 21, link{delay: 25 * time.Millisecond}, Config{})
	bulkTransfer(t, s, 256<<10) // RTT samples, a grown window
	c := s.conn[0]
	c.noTailDups = !dups
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
	took = sendAndRead(t, s, n)
	return took, pkts, pto
}

// sendAndRead writes n bytes and FIN on a new bulk stream of the client
// and returns how long until the server has read them all.
func sendAndRead(t *testing.T, s *sim, n int) time.Duration {
	t.Helper()
	c, srv := s.conn[0], s.conn[1]
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
		if i > 1000000 {
			t.Fatalf("read %d of %d bytes", read, n)
		}
		s.transmit()
		if !accepted {
			sid, accepted = srv.AcceptStream(true)
		}
		for accepted {
			// Read all there is: the peer's reader does not wait for
			// the next packet to take what arrived.
			r, fin, err := srv.StreamRead(sid, buf)
			if err != nil {
				t.Fatal(err)
			}
			read += r
			if fin && read == n {
				return s.now.Sub(start)
			}
			if r == 0 {
				break
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
// loss a round trip later. (Without tail duplication, which would send
// the last packet again before any timeout.)
func TestTailLossProbeCarriesData(t *testing.T) {
	const n = 40 << 10
	clean, pkts, pto := tailTransfer(t, n, 0, false)
	if pkts < 2 {
		t.Fatalf("the transfer took %d packets; the test needs a tail", pkts)
	}
	lossy, _, _ := tailTransfer(t, n, pkts, false) // lose the last one
	const rtt = 50 * time.Millisecond
	t.Logf("%d bytes in %d packets: %v; last packet lost: %v (PTO %v, RTT %v)", n, pkts, clean, lossy, pto, rtt)
	if extra := lossy - clean; extra > pto+rtt/2 {
		t.Fatalf("losing the last packet cost %v, more than the probe timeout %v plus half an RTT: the probe did not carry the data", extra, pto)
	}
	if lossy <= clean {
		t.Fatalf("the lost packet cost nothing (%v vs %v): the drop did not happen", lossy, clean)
	}
}

// TestTailDuplication: with the last packet of a bulk stream lost, the
// duplicate sent as the window frees up arrives long before a probe
// timeout's repair would; on a path losing 1 % at random, a 1 MiB stream
// ends sooner on average with duplication than without, for at most half
// a round trip of extra bytes.
func TestTailDuplication(t *testing.T) {
	const n = 40 << 10
	_, pkts, _ := tailTransfer(t, n, 0, false)
	without, _, pto := tailTransfer(t, n, pkts, false) // the last original lost
	with, _, _ := tailTransfer(t, n, pkts, true)
	t.Logf("last of %d packets lost: %v without duplication, %v with (PTO %v)", pkts, without, with, pto)
	if with > without-pto/2 {
		t.Fatalf("with duplication the lost last packet cost %v, without %v: its duplicate did not repair it", with, without)
	}

	// Random loss: the end of a 1 MiB stream at 100 Mbit/s, 50 ms RTT.
	const big = 1 << 20
	var sum [2]time.Duration
	var extra [2]float64
	const seeds = 24
	for seed := uint64(1); seed <= seeds; seed++ {
		for i, dups := range []bool{false, true} {
			d, wire := lossyStreamEnd(t, seed, big, dups)
			sum[i] += d
			extra[i] += wire
		}
	}
	mean := func(i int) time.Duration { return sum[i] / seeds }
	t.Logf("1 MiB stream at 1 %% loss, mean over %d seeds: %v without duplication (%.3f wire bytes per byte), %v with (%.3f)",
		seeds, mean(0), extra[0]/seeds, mean(1), extra[1]/seeds)
	if mean(1) >= mean(0) {
		t.Fatalf("duplication did not shorten the stream's end: %v with, %v without", mean(1), mean(0))
	}
	const bdpShare = 0.5 * 12.5e6 * 0.05 / big // half an RTT at the link rate, per stream byte
	if extra[1]-extra[0] > seeds*(bdpShare+0.02) {
		t.Fatalf("duplication cost %.3f wire bytes per byte, more than half a round trip's worth", (extra[1]-extra[0])/seeds)
	}
}

// lossyStreamEnd sends n bytes and FIN on a bulk stream over a warmed-up
// 100 Mbit/s, 50 ms RTT, 1 % loss path and returns how long until the peer
// read them all and the wire bytes the client sent per stream byte.
func lossyStreamEnd(t *testing.T, seed uint64, n int, dups bool) (time.Duration, float64) {
	t.Helper()
	s := handshakeSim(t, seed, link{delay: 25 * time.Millisecond, rate: 100e6, queue: 625_000, loss: 0.01}, Config{})
	bulkTransfer(t, s, 4<<20) // past STARTUP
	c := s.conn[0]
	c.noTailDups = !dups
	before := c.Stats().BytesSent
	d := sendAndRead(t, s, n)
	return d, float64(c.Stats().BytesSent-before) / float64(n)
}
