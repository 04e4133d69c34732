package core

import (
	"slices"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// TestDatagramReassemblyFlood: a peer with the keys sends DATAGRAM fragments
// each starting a new message it never completes (issue #20; found by the
// hostile-peer benchmark, BenchmarkHostilePeer in internal/mmc). Past the
// 1,024 partial messages kept, every such fragment evicts the oldest, and
// the driver asks NextTimeout after every packet. Both used to scan every
// partial message held: 50 fragments a packet cost 50 scans of 1,024
// entries (~1 ms of the endpoint's single receive loop per 1.2 KB packet,
// the loop every session shares). The work per packet must not grow with
// the messages held.
//
// As in TestRecvBudgetTinyFrames, the fastest packet of the first and of
// the last blocks are compared: load only adds time.
func TestDatagramReassemblyFlood(t *testing.T) {
	s := establishedSim(t)
	c := s.conn[1]
	const perPacket, packets, block = 50, 120, 20
	var first, last []time.Duration
	var pkt []byte
	id := uint64(0)
	for i := 0; i < packets; i++ {
		pkt = pkt[:0]
		for k := 0; k < perPacket; k++ {
			id++
			pkt = wire.AppendDatagram(pkt, id, 0, 2, []byte("xxxxxxxxxx"))
		}
		sealed := s.sealFromClient(pkt)
		start := time.Now()
		c.HandleDatagram(s.now, s.addr[0], sealed)
		c.NextTimeout()
		d := time.Since(start)
		if err := c.Err(); err != nil {
			t.Fatal(err)
		}
		if i < block {
			first = append(first, d)
		}
		last = append(last, d)
		if len(last) > block {
			last = last[1:]
		}
	}
	if len(c.dg.in) != 1024 {
		t.Fatalf("%d partial messages held, want the 1,024 kept", len(c.dg.in))
	}
	if st := c.Stats(); st.DatagramsDropped != packets*perPacket-1024 {
		t.Errorf("%d partial messages dropped, want %d", st.DatagramsDropped, packets*perPacket-1024)
	}
	if n := len(c.dg.inOrder); n > 2*len(c.dg.in)+1 {
		t.Errorf("%d entries in the order list for %d messages", n, len(c.dg.in))
	}
	f, l := slices.Min(first), slices.Min(last)
	t.Logf("fastest packet: first %d: %v, last %d (1,024 partial messages, each fragment evicting): %v", block, f, block, l)
	if l > 4*f+20*time.Microsecond {
		t.Errorf("per-packet work grew with the partial messages held: %v → %v", f, l)
	}
	// The oldest are the ones evicted; the newest are kept and expire on
	// time.
	if _, ok := c.dg.in[id]; !ok {
		t.Error("the newest partial message was evicted")
	}
	if _, ok := c.dg.in[id-1024]; ok {
		t.Error("an old partial message was kept")
	}
	s.now = s.now.Add(datagramReassemblyTimeout)
	if next := c.dg.nextExpiry(); next.After(s.now) {
		t.Errorf("next expiry %v, after the deadline", next)
	}
	c.dg.expire(s.now, &c.stats)
	if len(c.dg.in) != 0 || c.dg.inBytes != 0 {
		t.Errorf("after the timeout: %d partial messages, %d bytes", len(c.dg.in), c.dg.inBytes)
	}
}
