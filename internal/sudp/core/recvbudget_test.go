package core

import (
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Attacks on the receive side by a peer that holds the session keys (issue
// #20): they must cost the receiver work per packet that does not grow with
// what the peer sent before, and memory in proportion to the bytes it holds;
// crossing the receive budget closes that connection with CodeRecvBudget.

// attackStream is a client bidirectional stream the simulation left unused.
const attackStream = 40

// sendFrames seals frames as one packet from the client and hands it to the
// server's connection.
func (s *sim) sendFrames(frames []byte) {
	s.conn[1].HandleDatagram(s.now, s.addr[0], s.sealFromClient(frames))
}

// tinyFramePacket appends n one-byte STREAM frames at offsets lo, lo+2, ...
// (in descending order if down).
func tinyFramePacket(b []byte, lo uint64, n int, down bool) []byte {
	for k := 0; k < n; k++ {
		off := lo + 2*uint64(k)
		if down {
			off = lo + 2*uint64(n-1-k)
		}
		b = wire.AppendStreamHeader(b, attackStream, off, 1, false)
		b = append(b, 'x')
	}
	return b
}

func recvBudgetClose(t *testing.T, c *Conn) {
	t.Helper()
	var ce *CloseError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != CodeRecvBudget || ce.Remote {
		t.Fatalf("connection ended with %v, want a local close with CodeRecvBudget", c.Err())
	}
}

// TestRecvBudgetTinyFrames: one-byte frames at every other offset, each
// landing below the highest offset received (where the old insertion scanned
// every range). The time to handle a packet must not grow with the ranges
// already held, and the connection is closed with CodeRecvBudget once they
// pass MaxRecvRanges.
//
// Work is compared as the fastest packet of the first and of the last
// blocks: load on a shared machine only adds time, so the minimum is what
// the code costs. On the old code the last block's packets each scanned
// ~12,000 ranges 64 times (over 100× the first block's).
func TestRecvBudgetTinyFrames(t *testing.T) {
	t.Run("ascending", func(t *testing.T) { testTinyFrames(t, false) })
	// Descending: each frame lands below every range held, where a sorted
	// slice would move all of them.
	t.Run("descending", func(t *testing.T) { testTinyFrames(t, true) })
}

func testTinyFrames(t *testing.T, descending bool) {
	s := establishedSim(t)
	c := s.conn[1]
	bound := c.cfg.MaxRecvRanges
	const perPacket = 64
	packets := bound/perPacket + 40 // past the bound
	top := uint64(2*packets*perPacket + 2)
	s.sendFrames(append(wire.AppendStreamHeader(nil, attackStream, top, 1, false), 'x'))

	const block = 20
	var first, last []time.Duration
	var pkt []byte
	closedAt := -1
	over := false
	for i := 0; i < packets; i++ {
		lo := uint64(2*i*perPacket + 1)
		if descending {
			lo = top - uint64(2*(i+1)*perPacket+1)
		}
		pkt = tinyFramePacket(pkt[:0], lo, perPacket, descending)
		sealed := s.sealFromClient(pkt)
		start := time.Now()
		c.HandleDatagram(s.now, s.addr[0], sealed)
		d := time.Since(start)
		if c.Err() != nil {
			closedAt = i
			break
		}
		if c.recvRanges > bound && !over {
			over = true // report once, and go on to measure the work
			t.Errorf("packet %d: %d ranges held, bound %d", i, c.recvRanges, bound)
		}
		if i < block {
			first = append(first, d)
		}
		last = append(last, d)
		if len(last) > block {
			last = last[1:]
		}
	}
	f, l := slices.Min(first), slices.Min(last)
	t.Logf("fastest packet: first %d: %v, last %d (at %d ranges): %v", block, f, block, c.recvRanges, l)
	if l > 4*f+20*time.Microsecond {
		t.Errorf("per-packet work grew with the ranges held: %v → %v", f, l)
	}
	if closedAt < 0 {
		t.Fatalf("%d packets of tiny frames (%d ranges, bound %d) did not close the connection", packets, c.recvRanges, bound)
	}
	recvBudgetClose(t, c)
	if want := (bound + 1) / perPacket; closedAt != want {
		t.Errorf("closed at packet %d, want %d (the one crossing %d ranges)", closedAt, want, bound)
	}
	// The peer goes on flooding after the close: its packets are answered
	// with the CLOSE, not processed, and the close is counted once.
	for i := 0; i < 10; i++ {
		c.HandleDatagram(s.now, s.addr[0], s.sealFromClient(tinyFramePacket(pkt[:0], uint64(2*(i+1)*perPacket+1), perPacket, descending)))
	}
	if st := c.Stats(); st.RecvBudgetRanges != 1 || st.RecvBudgetMemory != 0 || st.DroppedMalformed != 0 {
		t.Errorf("counted ranges=%d memory=%d malformed=%d, want 1, 0, 0", st.RecvBudgetRanges, st.RecvBudgetMemory, st.DroppedMalformed)
	}
}

// TestRecvBudgetHighOffset: one byte at the top of the stream window must
// cost memory for that byte (one page), not a buffer up to its offset.
func TestRecvBudgetHighOffset(t *testing.T) {
	s := establishedSim(t)
	c := s.conn[1]
	off := c.cfg.StreamWindow - 1
	pkt := s.sealFromClient(append(wire.AppendStreamHeader(nil, attackStream, off, 1, false), 'x'))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c.HandleDatagram(s.now, s.addr[0], pkt)
	runtime.ReadMemStats(&after)
	if err := c.Err(); err != nil {
		t.Fatal(err)
	}
	if n := c.StreamReadable(attackStream); n != 0 {
		t.Fatalf("readable %d", n)
	}
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("one byte at offset %d: %d bytes allocated", off, grew)
	if grew > 64<<10 {
		t.Errorf("one byte at offset %d allocated %d bytes", off, grew)
	}
	if held := c.pages.held * recvPageSize; held > recvPageSize {
		t.Errorf("%d bytes held in pages for one byte", held)
	}
	// The stream still delivers what comes below it.
	s.sendFrames(append(wire.AppendStreamHeader(nil, attackStream, 0, 5, false), "hello"...))
	buf := make([]byte, 16)
	if n, _, err := c.StreamRead(attackStream, buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
}

// TestRecvBudgetMemory: a peer that scatters single bytes one per page
// pins a page each; past MaxRecvBuffer the connection is closed with
// CodeRecvBudget, counted as memory.
func TestRecvBudgetMemory(t *testing.T) {
	s := handshakeSim(t, 1, link{delay: time.Millisecond}, Config{MaxRecvBuffer: 64 << 10})
	c := s.conn[1]
	for i := 0; i < 64 && c.Err() == nil; i++ {
		s.sendFrames(append(wire.AppendStreamHeader(nil, attackStream, uint64(i)*recvPageSize+7, 1, false), 'x'))
		if c.pages.held > c.pages.limit+1 {
			t.Fatalf("%d pages held, limit %d", c.pages.held, c.pages.limit)
		}
	}
	recvBudgetClose(t, c)
	if st := c.Stats(); st.RecvBudgetMemory != 1 || st.RecvBudgetRanges != 0 {
		t.Errorf("counted memory=%d ranges=%d, want 1, 0", st.RecvBudgetMemory, st.RecvBudgetRanges)
	}
}

// TestRecvPagesReturned: reading, resetting and stopping give every page
// back, so the budget counts only what streams hold.
func TestRecvPagesReturned(t *testing.T) {
	s := establishedSim(t)
	c := s.conn[1]
	data := make([]byte, 1000)
	for k := range 3 {
		id := uint64(attackStream + 4*k)
		for off := uint64(0); off < 20000; off += 2000 { // every other 1000 bytes
			s.sendFrames(append(wire.AppendStreamHeader(nil, id, off, len(data), false), data...))
		}
	}
	if c.pages.held == 0 || c.recvRanges != 30 {
		t.Fatalf("held %d pages, %d ranges", c.pages.held, c.recvRanges)
	}
	// Stream 1: fill the holes and read it all.
	id := uint64(attackStream)
	for off := uint64(1000); off < 20000; off += 2000 {
		s.sendFrames(append(wire.AppendStreamHeader(nil, id, off, len(data), off+1000 == 20000), data...))
	}
	buf := make([]byte, 64<<10)
	if n, fin, err := c.StreamRead(id, buf); n != 20000 || !fin || err != nil {
		t.Fatalf("read %d %v %v", n, fin, err)
	}
	// Stream 2: reset by the peer; stream 3: we stop reading.
	s.sendFrames(wire.AppendReset(nil, attackStream+4, 1, 20000))
	c.StreamStopReading(attackStream+8, 1)
	if c.pages.held != 0 {
		t.Errorf("%d pages still held", c.pages.held)
	}
}
