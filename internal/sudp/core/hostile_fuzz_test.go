package core

import (
	"errors"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// FuzzEstablishedConn is issue #20's hostile peer, as a fuzz target: the
// fuzzer's bytes are decoded (hostileProgram) into a sequence of packets,
// each a list of any frames the protocol has — STREAM with any stream,
// offset, length and FIN, ACK ranges over what the server really sent,
// RESET_STREAM, STOP_SENDING, the MAX_* frames, DATAGRAM fragments, PING,
// PADDING, PATH_CHALLENGE, KEY_UPDATE, CLOSE — sealed with the client's
// session keys so that they reach frame processing, interleaved with the
// server application's reads and writes and with the passing of time.
//
// Per input it asserts: nothing panics; after every packet the connection is
// either open with its invariants holding (checkConnInvariants) or closed
// with a protocol or budget code, never CodeInternal; and the work the
// server did for the peer stays within a budget in CPU time and in bytes
// allocated, per byte received (hostileBudget).
func FuzzEstablishedConn(f *testing.F) {
	for _, seed := range hostileSeeds() {
		f.Add(seed)
	}
	allocs := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	f.Fuzz(func(t *testing.T, prog []byte) {
		// Thread CPU time is the goroutine's only while it stays on its
		// thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		exec := func() *hostileRun {
			cfg := Config{MaxRecvRanges: 24, MaxRecvBuffer: 48 << 10, MaxStreams: 64, MaxDatagramMessage: 16 << 10, DatagramQueue: 32 << 10}
			s := handshakeSim(t, 1, link{delay: time.Millisecond}, cfg)
			h := &hostileRun{t: t, s: s, c: s.conn[1], buf: make([]byte, 4096), out: make([]byte, 2048)}
			h.deliver = func(pkt []byte) {
				sealed := s.sealFromClient(pkt)
				metrics.Read(allocs)
				a0, c0 := allocs[0].Value.Uint64(), threadCPU()
				h.c.HandleDatagram(s.now, s.addr[0], sealed)
				c1 := threadCPU()
				metrics.Read(allocs)
				h.cpu += c1 - c0
				h.alloc += allocs[0].Value.Uint64() - a0
				h.received += len(sealed)
				h.packets++
			}
			h.run(prog)
			return h
		}
		h := exec()
		// The allocation counter is the process's: in a fuzzing worker
		// other goroutines allocate now and then, and the machine's
		// load adds CPU time (cache misses). Both only add, and the run
		// is deterministic (same keys, same packets), so over budget it
		// is run twice more and the least is what the code costs.
		for i := 0; i < 2 && h.overBudget(); i++ {
			again := exec()
			h.cpu, h.alloc = min(h.cpu, again.cpu), min(h.alloc, again.alloc)
		}
		h.check()
	})
}

// hostileRun is one input's execution.
type hostileRun struct {
	t        *testing.T
	s        *sim
	c        *Conn // the server's connection, under attack
	deliver  func(pkt []byte)
	buf, out []byte
	sent     []uint64 // streams the server application opened
	// what the server spent on the peer's packets
	cpu      time.Duration
	alloc    uint64
	received int
	packets  int
}

// hostileStream maps a selector byte to a stream id: the low six bits are
// the sequence number, the high two the kind (bit 6: opened by the server,
// bit 7: unidirectional), so the fuzzer reaches the peer's own streams, the
// server's, and ones never opened; big adds 2^20 to the sequence (past any
// stream limit).
func hostileStream(sel byte, big bool) uint64 {
	seq := uint64(sel & 0x3f)
	if big {
		seq += 1 << 20
	}
	id := seq << 2
	if sel&0x40 != 0 {
		id |= wire.StreamServerBit
	}
	if sel&0x80 != 0 {
		id |= wire.StreamUniBit
	}
	return id
}

// run decodes prog: each frame or action is an opcode byte (low nibble: what,
// high nibble: flags) and its operands; a missing operand reads as zero.
//
//	0 STREAM   sel off_hi off_lo len   flags: 1 FIN, 2 offset << 20, 4 id + 2^20, 8 repeat 8× at a stride (tiny out-of-order frames)
//	1 ACK      largest_hi largest_lo n (gap<<4|len)×n
//	2 RESET_STREAM sel code final_hi final_lo   flag 2: final << 20
//	3 STOP_SENDING sel code
//	4 MAX_*    which sel v_hi v_lo   the value is shifted left 8× the flags
//	5 DATAGRAM id index count len
//	6 PING   7 PADDING n   8 PATH_CHALLENGE   9 KEY_UPDATE gen
//	10 CLOSE (only as the exact byte 0x0a: it ends the input)
//	11 end of packet: seal and deliver it
//	12 server application: accept and read every stream, drain datagrams
//	13 server application: open a stream and write n×64 bytes, and send
//	14 time passes: n milliseconds, timers fire, output is sent (and lost)
//	15 end of packet
func (h *hostileRun) run(prog []byte) {
	s, c := h.s, h.c
	r := byteReader{b: prog}
	var pkt []byte
	flush := func() {
		if len(pkt) > 0 && c.Err() == nil {
			h.deliver(pkt)
			h.checkConnInvariants()
		}
		pkt = pkt[:0]
	}
	for !r.done() && c.Err() == nil {
		op := r.next()
		flags := op >> 4
		switch op & 0x0f {
		case 0:
			id := hostileStream(r.next(), flags&4 != 0)
			off := uint64(r.next())<<8 | uint64(r.next())
			if flags&2 != 0 {
				off <<= 20
			}
			n := int(r.next())
			reps := 1
			if flags&8 != 0 {
				reps = 8
				n = max(n%8, 1)
			}
			// Descending offsets, every other one: each frame lands
			// below the last, leaving a hole.
			for k := reps - 1; k >= 0; k-- {
				o := off + uint64(k)*uint64(2*n)
				pkt = wire.AppendStreamHeader(pkt, id, o, n, flags&1 != 0 && k == 0)
				for i := 0; i < n; i++ {
					pkt = append(pkt, fuzzByte(id, o+uint64(i)))
				}
			}
		case 1:
			largest := uint64(r.next())<<8 | uint64(r.next())
			n := int(r.next()%8) + 1
			ranges := make([]wire.AckRange, 0, n)
			hi := largest
			for i := 0; i < n; i++ {
				b := r.next()
				l := min(uint64(b&15), hi)
				ranges = append(ranges, wire.AckRange{Largest: hi, Smallest: hi - l})
				gap := uint64(b>>4) + 2
				if hi-l < gap {
					break
				}
				hi = hi - l - gap
			}
			pkt = wire.AppendAck(pkt, uint64(r.next()), ranges)
		case 2:
			id := hostileStream(r.next(), flags&4 != 0)
			code := uint64(r.next())
			final := uint64(r.next())<<8 | uint64(r.next())
			if flags&2 != 0 {
				final <<= 20
			}
			pkt = wire.AppendReset(pkt, id, code, final)
		case 3:
			pkt = wire.AppendStreamValue(pkt, wire.FrameStopSending, hostileStream(r.next(), false), uint64(r.next()))
		case 4:
			which, sel := r.next()%4, r.next()
			v := (uint64(r.next())<<8 | uint64(r.next())) << (8 * uint(flags&7))
			switch which {
			case 0:
				pkt = wire.AppendValue(pkt, wire.FrameMaxData, v)
			case 1:
				pkt = wire.AppendStreamValue(pkt, wire.FrameMaxStreamData, hostileStream(sel, false), v)
			case 2:
				pkt = wire.AppendValue(pkt, wire.FrameMaxStreamsBidi, v)
			case 3:
				pkt = wire.AppendValue(pkt, wire.FrameMaxStreamsUni, v)
			}
		case 5:
			id, index, count := uint64(r.next()), uint64(r.next()%8), uint64(r.next()%8)
			if flags&2 != 0 {
				count <<= 20
			}
			d := make([]byte, int(r.next()))
			pkt = wire.AppendDatagram(pkt, id, index, count, d)
		case 6:
			pkt = wire.AppendPing(pkt)
		case 7:
			pkt = wire.AppendPadding(pkt, int(r.next()%32)+1)
		case 8:
			pkt = wire.AppendPath(pkt, wire.FramePathChallenge, [8]byte{r.next()})
		case 9:
			pkt = wire.AppendValue(pkt, wire.FrameKeyUpdate, uint64(r.next()%3))
		case 10:
			if op == 0x0a {
				pkt = wire.AppendClose(pkt, uint64(r.next()), "fuzz")
			}
		case 11, 15:
			flush()
		case 12:
			h.appRead()
		case 13:
			h.appWrite(int(r.next()) * 64)
		case 14:
			s.now = s.now.Add(time.Duration(r.next()) * time.Millisecond)
			if t := c.NextTimeout(); !t.IsZero() && !s.now.Before(t) {
				c.HandleTimeout(s.now)
			}
			h.drainOutput()
		}
		// A full packet goes out as is; a frame larger than a packet is
		// sent too (the receiver must cope with any length it decrypts).
		if len(pkt) > 1200 {
			flush()
		}
	}
	flush()
}

// appRead is the server application reading everything it was sent.
func (h *hostileRun) appRead() {
	c := h.c
	for uni := range 2 {
		for {
			if _, ok := c.AcceptStream(uni == 1); !ok {
				break
			}
		}
	}
	for id := range c.streams {
		for {
			n, fin, err := c.StreamRead(id, h.buf)
			if err != nil || n == 0 || fin {
				break
			}
			// Bytes read are the bytes the peer put at that offset is
			// checked by FuzzStreamFrames; here frames overlap with
			// different stream ids, so only that reading works.
		}
	}
	for {
		if _, ok := c.RecvDatagram(); !ok {
			break
		}
	}
}

// appWrite opens (while it may) a server stream and writes n bytes to each
// stream the server opened, then lets the server send, so that the peer's
// ACKs, STOP_SENDINGs and MAX_STREAM_DATAs have something to act on.
func (h *hostileRun) appWrite(n int) {
	c := h.c
	if len(h.sent) < 4 && c.CanOpenStream(false) {
		if id, err := c.OpenStream(false, Priority(len(h.sent)%numPriorities)); err == nil {
			h.sent = append(h.sent, id)
		}
	}
	for _, id := range h.sent {
		if n > 0 {
			_, _ = c.StreamWrite(id, make([]byte, n))
		}
	}
	h.drainOutput()
}

// drainOutput takes what the server sends: all of it is lost (the fuzzed
// ACKs decide what the server learns).
func (h *hostileRun) drainOutput() {
	for i := 0; i < 64; i++ {
		if _, _, ok := h.c.PollTransmit(h.s.now, h.out); !ok {
			break
		}
	}
}

// checkConnInvariants: what must hold of an open connection after any
// packet, whatever the peer sent.
func (h *hostileRun) checkConnInvariants() {
	t, c := h.t, h.c
	if c.Err() != nil {
		return
	}
	cfg := c.cfg
	if c.recvRanges > cfg.MaxRecvRanges {
		t.Fatalf("%d ranges held, bound %d", c.recvRanges, cfg.MaxRecvRanges)
	}
	if c.pages.held > c.pages.limit {
		t.Fatalf("%d pages held, bound %d", c.pages.held, c.pages.limit)
	}
	ranges, pages := 0, 0
	for id, st := range c.streams {
		if st.id != id {
			t.Fatalf("stream %d filed as %d", st.id, id)
		}
		ranges += st.got.len()
		pages += st.rbuf.held()
		if hi, ok := st.highestReceived(); ok && hi > st.maxRecv {
			t.Fatalf("stream %d: data up to %d accepted past its window %d", id, hi, st.maxRecv)
		}
		if st.readOff > st.maxRecv {
			t.Fatalf("stream %d: read to %d past its window %d", id, st.readOff, st.maxRecv)
		}
	}
	if ranges != c.recvRanges || pages != c.pages.held {
		t.Fatalf("accounting: %d ranges counted, %d held; %d pages counted, %d held", c.recvRanges, ranges, c.pages.held, pages)
	}
	if c.connRecv > c.connMaxRecv {
		t.Fatalf("connection flow control: %d bytes received, limit %d", c.connRecv, c.connMaxRecv)
	}
	if c.connRead > c.connRecv {
		t.Fatalf("connection: %d bytes read of %d received", c.connRead, c.connRecv)
	}
	for k := range 2 {
		if c.peerOpened[k] > c.ourMaxStreams[k] {
			t.Fatalf("peer opened %d streams of kind %d, limit %d", c.peerOpened[k], k, c.ourMaxStreams[k])
		}
	}
	inBytes := 0
	for _, p := range c.dg.in {
		inBytes += p.size
	}
	if inBytes != c.dg.inBytes || len(c.dg.in) > 1024 || c.dg.inBytes > 4*c.dg.maxMsg+1024*partialOverhead {
		t.Fatalf("datagram reassembly: %d bytes counted, %d held, %d partial messages", c.dg.inBytes, inBytes, len(c.dg.in))
	}
	if len(c.dg.inOrder) > 2*1024+1 {
		t.Fatalf("datagram reassembly: %d entries in the order list", len(c.dg.inOrder))
	}
	if c.dg.readyB > c.dg.maxQueue {
		t.Fatalf("datagrams: %d bytes ready, queue %d", c.dg.readyB, c.dg.maxQueue)
	}
	if len(c.pathRespQ) > maxPathResponses {
		t.Fatalf("%d path responses queued", len(c.pathRespQ))
	}
}

// The work budget per input. A hostile peer that holds the keys may make the
// server work, but in proportion to what it sends: not to the offsets,
// lengths, stream numbers or counts it declares.
//
// CPU: thread CPU time in HandleDatagram (decryption included), at most
// hostileCPUBase plus hostileCPUPerByte per byte received. Measured on the
// seeds: 0.1–0.3 µs per byte for packets of frames, plus up to ~1 ms once
// for a frame that opens every stream the peer may open. The bound is
// ~20 ms plus 20 µs a byte, far above that, because a fuzzing worker shares
// the machine (cache misses; GC assists are charged to the thread) and
// because what it is for is work that grows with something the peer merely
// declares (a loop over an offset or a count, a scan of every stream, range
// or partial message per frame): that is orders of magnitude over it as soon
// as the declared number is large, and the target lets the fuzzer declare
// 2^20 and more. Work that grows with state built up over many packets (the
// partial-message scan TestDatagramReassemblyFlood covers) needs more bytes
// than fuzzed inputs reach; the directed tests measure that.
//
// Memory: bytes allocated by HandleDatagram (an upper bound on heap growth,
// and cheap to read exactly with runtime/metrics), at most hostileAllocBase
// plus hostileAllocPerByte per byte received. The base is what the budget
// lets a few bytes claim at once: a frame for stream n opens every stream
// below it (64 streams of each kind here, ~1 KiB each), the receive pages
// (MaxRecvBuffer, 48 KiB), the datagram reassembly of a few messages. Per
// byte: a datagram fragment copies its data and a map entry (~100 bytes
// for the smallest frame).
const (
	hostileCPUBase      = 20 * time.Millisecond
	hostileCPUPerByte   = 20 * time.Microsecond
	hostileAllocBase    = 512 << 10
	hostileAllocPerByte = 256
)

func (h *hostileRun) cpuLimit() time.Duration {
	l := hostileCPUBase + time.Duration(h.received)*hostileCPUPerByte
	if !threadCPUExact {
		l *= 10
	}
	return l
}

func (h *hostileRun) allocLimit() uint64 {
	return uint64(hostileAllocBase + h.received*hostileAllocPerByte)
}

func (h *hostileRun) overBudget() bool { return h.cpu > h.cpuLimit() || h.alloc > h.allocLimit() }

// check asserts the end state and the work budget.
func (h *hostileRun) check() {
	t, c := h.t, h.c
	if err := c.Err(); err != nil {
		// A local close keeps the error that caused it; the code sent
		// to the peer is closeCode.
		var ce *CloseError
		remote := errors.As(err, &ce) && ce.Remote
		switch code := c.closeCode; {
		case remote: // the peer's CLOSE
		case code == CodeProtocolViolation, code == CodeFlowControl, code == CodeStreamLimit,
			code == CodeRecvBudget, code == CodeKeyExpired:
		case errors.Is(err, ErrIdleTimeout):
			// idle timeout: the fuzzer let time pass
		default:
			t.Fatalf("connection closed with code %d: %v", code, err)
		}
		if !remote && c.closeCode == CodeRecvBudget && c.Stats().RecvBudgetRanges+c.Stats().RecvBudgetMemory != 1 {
			t.Fatalf("budget close not counted once: %+v", c.Stats())
		}
	}
	if h.overBudget() {
		t.Fatalf("%v of CPU and %d bytes allocated for %d packets, %d bytes (limits %v, %d)", h.cpu, h.alloc, h.packets, h.received, h.cpuLimit(), h.allocLimit())
	}
	if testing.Verbose() {
		t.Logf("%d packets, %d bytes: %v CPU, %d bytes allocated; %v", h.packets, h.received, h.cpu, h.alloc, c.Err())
	}
	h.s.healthy(t)
}

// byteReader hands out the program's bytes, then zeros.
type byteReader struct{ b []byte }

func (r *byteReader) done() bool { return len(r.b) == 0 }

func (r *byteReader) next() byte {
	if len(r.b) == 0 {
		return 0
	}
	b := r.b[0]
	r.b = r.b[1:]
	return b
}

// hostileSeeds are the committed starting points (also in
// testdata/fuzz/FuzzEstablishedConn): honest traffic, and the attacks of
// issue #20.
func hostileSeeds() [][]byte {
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	rep := func(n int, p []byte) []byte {
		var b []byte
		for range n {
			b = append(b, p...)
		}
		return b
	}
	var dgFrags []byte
	for i := range 40 {
		dgFrags = append(dgFrags, 0x05, byte(i), byte(i%3), 4, byte(20+i*5))
		if i%8 == 7 {
			dgFrags = append(dgFrags, 0x0b)
		}
	}
	return [][]byte{
		// in-order data on a stream, a read, a ping
		{0x00, 10, 0, 0, 200, 0x00, 10, 0, 200, 100, 0x0b, 0x0c, 0x06, 0x0b},
		// tiny out-of-order frames, 8 per packet, many packets: the budget closes it
		rep(12, []byte{0x80, 10, 0, 0, 1, 0x80, 10, 1, 0, 1, 0x0b}),
		// huge offsets: beyond the window, and at 2^20 × 65535
		{0x20, 10, 0xff, 0xff, 10, 0x0b, 0x20, 11, 0, 1, 1, 0x0b},
		// many streams: the highest the peer may open, then beyond it
		{0x00, 63, 0, 0, 1, 0x00, 0x80 | 63, 0, 0, 1, 0x0b, 0x40, 5, 0, 0, 1, 0x0b},
		// server writes, then ACKs and STOP_SENDING for its streams
		{0x0d, 40, 0x0e, 5, 0x01, 0, 3, 2, 0x11, 0x22, 0, 0x03, 0x41, 7, 0x0b, 0x0e, 50},
		// data, reset with a final size, more data after the reset
		{0x00, 12, 0, 0, 50, 0x02, 12, 1, 0, 100, 0x0b, 0x00, 12, 0, 60, 10, 0x0b},
		// MAX_* frames with huge values
		{0x74, 0, 0, 0xff, 0xff, 0x74, 1, 0x40, 0xff, 0xff, 0x74, 2, 0, 0xff, 0xff, 0x74, 3, 0, 0xff, 0xff, 0x0b},
		// datagram fragments: many partial messages, a complete one, huge counts
		cat(dgFrags, []byte{0x0b, 0x05, 9, 0, 1, 10, 0x25, 3, 0, 1, 5, 0x0b, 0x0c}),
		// path challenges, key update, padding, then time passes
		{0x08, 1, 0x08, 2, 0x08, 3, 0x08, 4, 0x08, 5, 0x09, 1, 0x07, 31, 0x0b, 0x0e, 0xff, 0x0e, 0xff},
		// a CLOSE from the peer
		{0x06, 0x0a, 7, 0x0b},
	}
}
