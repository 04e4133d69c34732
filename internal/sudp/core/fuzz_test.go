package core

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// establishedSim returns a lossless simulation whose connection is up and
// has exchanged a message, for the fuzz targets to attack.
func establishedSim(t testing.TB) *sim {
	return handshakeSim(t, 1, link{delay: time.Millisecond}, Config{})
}

// sealFromClient protects payload as the client's next packet, as an
// authenticated but misbehaving peer could.
func (s *sim) sealFromClient(payload []byte) []byte {
	c := s.conn[0]
	b := wire.AppendHeader(make([]byte, 0, len(payload)+64), wire.Header{KeyPhase: c.sendKey.phase(), DstCID: c.remoteCID, PN: c.nextPN})
	b = append(b, payload...)
	b = c.sendKey.seal(b, wire.DataHeaderSize, c.nextPN)
	c.nextPN++
	return b
}

// healthy checks the connection can still carry a message both ways.
func (s *sim) healthy(t *testing.T) {
	for side := 0; side < 2; side++ {
		c := s.conn[side]
		if err := c.Err(); err != nil {
			return // a protocol violation closed it: an acceptable outcome
		}
		id, err := c.OpenStream(true, PriorityControl)
		if err != nil {
			t.Fatalf("open after fuzz input: %v", err)
		}
		if _, err := c.StreamWrite(id, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		c.StreamCloseWrite(id)
	}
	for i := 0; i < 2000; i++ {
		if !s.step() {
			break
		}
	}
}

// FuzzEndpointDatagram feeds arbitrary datagrams to the server's endpoint
// and connection: nothing may panic, and the connection must keep working.
func FuzzEndpointDatagram(f *testing.F) {
	s := establishedSim(f)
	good := s.sealFromClient(wire.AppendPing(nil))
	f.Add(good)
	f.Add([]byte{wire.TypeData})
	f.Add(make([]byte, 152))
	f.Add(append([]byte{wire.TypeInitiation, 1, 0, 0}, make([]byte, 148)...))
	f.Add(append([]byte{wire.TypeCookieReply, 1, 0, 0}, make([]byte, 64)...))
	// A genuine re-handshake initiation from the client.
	forceRekey(s.conn[0])
	rekeyBuf := make([]byte, 2048)
	n, _, ok := s.conn[0].PollTransmit(s.now, rekeyBuf)
	if !ok || rekeyBuf[0] != wire.TypeRekey {
		f.Fatal("no re-handshake initiation to seed")
	}
	goodRekey := rekeyBuf[:n]
	f.Add(goodRekey)
	f.Add(wire.AppendRekey(nil, wire.RekeyHeader{Kind: wire.RekeyResponse, DstCID: s.conn[1].localCID, Epoch: 1}, make([]byte, wire.RekeyNoiseSize)))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		s := establishedSim(t)
		ep := s.ep[1]
		data := append([]byte(nil), pkt...)
		c, initiation := ep.Route(data)
		if initiation {
			ep.HandleInitiation(s.now, s.addr[0], data)
		} else if c != nil {
			before := c.Stats().PacketsReceived
			c.HandleDatagram(s.now, s.addr[0], data)
			// The deterministic simulation recreates the same keys, so the
			// sealed seed is genuinely authentic; nothing else may pass.
			if c.Stats().PacketsReceived != before && !bytes.Equal(pkt, good) {
				t.Fatalf("unauthenticated datagram accepted: %x", pkt)
			}
			// Likewise only the genuine initiation starts a re-handshake.
			if c.rk.epoch != 0 && !bytes.Equal(pkt, goodRekey) {
				t.Fatalf("unauthenticated re-handshake accepted: %x", pkt)
			}
		}
		s.healthy(t)
	})
}

// FuzzAuthenticatedFrames feeds arbitrary plaintext, correctly encrypted by
// the client's keys, to the server: a buggy or hostile peer that holds the
// keys must at worst get its connection closed, never crash the server.
func FuzzAuthenticatedFrames(f *testing.F) {
	f.Add(wire.AppendPing(nil))
	f.Add(wire.AppendAck(nil, 0, []wire.AckRange{{Smallest: 0, Largest: 3}}))
	f.Add(append(wire.AppendStreamHeader(nil, 2, 0, 4, true), "data"...))
	f.Add(append(wire.AppendStreamHeader(nil, 1<<40, 0, 1, false), 'x'))
	f.Add(wire.AppendStreamValue(nil, wire.FrameMaxStreamData, 0, 1<<50))
	f.Add(wire.AppendReset(nil, 2, 1, 7))
	f.Add(wire.AppendDatagram(nil, 1, 0, 2, []byte("half")))
	f.Add(wire.AppendValue(nil, wire.FrameKeyUpdate, 9))
	f.Add(wire.AppendClose(nil, 1, "bye"))
	f.Add(wire.AppendPath(nil, wire.FramePathChallenge, [8]byte{1}))
	f.Fuzz(func(t *testing.T, payload []byte) {
		s := establishedSim(t)
		pkt := s.sealFromClient(payload)
		s.conn[1].HandleDatagram(s.now, s.addr[0], pkt)
		s.healthy(t)
	})
}

// fuzzStreams are the streams FuzzStreamFrames writes to: three of the
// client's bidirectional streams and one unidirectional (unused by
// establishedSim).
var fuzzStreams = [4]uint64{40, 44, 46, 48}

// fuzzByte is what the fuzzed peer sends at offset off of stream id, so what
// is delivered can be checked whatever order it arrived in.
func fuzzByte(id, off uint64) byte { return byte(off*31 + off>>8 + id) }

// FuzzStreamFrames drives an established connection with sequences of
// packets of STREAM frames (any offsets, lengths, FIN), RESET_STREAMs and
// reads, under a small receive budget. After every packet: the disjoint
// ranges held stay within MaxRecvRanges and the pages within MaxRecvBuffer
// (or the connection was closed for crossing them), the counters agree with
// the streams, and every byte read is the byte sent at its offset.
func FuzzStreamFrames(f *testing.F) {
	f.Add([]byte{0x00, 0, 0, 100, 0x10, 0, 1, 50, 0x70, 255})                                 // in order, then a read
	f.Add([]byte{0x00, 0, 9, 10, 0x00, 0, 5, 10, 0x00, 0, 1, 10, 0x00, 0, 0, 255, 0x70, 255}) // descending, hole filled
	f.Add([]byte{0x08, 0, 0, 20, 0x70, 255, 0x60, 0, 0, 0})                                   // FIN, read to end
	f.Add([]byte{0x00, 1, 0, 10, 0x61, 2, 0, 0, 0x00, 1, 0, 10})                              // data, reset
	f.Add([]byte{0x00, 3, 0, 1, 0x00, 3, 2, 1, 0x00, 3, 4, 1, 0x00, 3, 6, 1, 0x00, 3, 8, 1})  // tiny frames, every other
	f.Fuzz(func(t *testing.T, ops []byte) {
		cfg := Config{MaxRecvRanges: 24, MaxRecvBuffer: 48 << 10}
		s := handshakeSim(t, 1, link{delay: time.Millisecond}, cfg)
		c := s.conn[1]
		var readOff [4]uint64
		buf := make([]byte, 4096)
		var pkt []byte
		for len(ops) > 0 && c.Err() == nil {
			op := ops[0]
			ops = ops[1:]
			si := int(op>>4) & 3
			id := fuzzStreams[si]
			switch {
			case op>>6 == 1 && op&0x30 == 0x30: // 0x70..0x7f: read
				n := 1
				if len(ops) > 0 {
					n = int(ops[0])*16 + 1
					ops = ops[1:]
				}
				for i := range fuzzStreams {
					sid := fuzzStreams[i]
					got, _, err := c.StreamRead(sid, buf[:min(n, len(buf))])
					if err != nil {
						continue // reset, or not opened yet
					}
					for k := 0; k < got; k++ {
						if want := fuzzByte(sid, readOff[i]+uint64(k)); buf[k] != want {
							t.Fatalf("stream %d offset %d: read %#x, sent %#x", sid, readOff[i]+uint64(k), buf[k], want)
						}
					}
					readOff[i] += uint64(got)
				}
				continue
			case op>>6 == 1: // 0x40..0x6f: RESET_STREAM with a final size
				if len(ops) < 3 {
					return
				}
				final := uint64(ops[1])<<8 | uint64(ops[2])
				ops = ops[3:]
				pkt = wire.AppendReset(pkt[:0], id, 1, final*16)
			default: // STREAM frames: [op off_hi off_lo len]; bit 3 of op is FIN, bit 7 repeats the frame 8 times at a stride
				if len(ops) < 3 {
					return
				}
				off := (uint64(ops[0])<<8 | uint64(ops[1])) * 7
				n := int(ops[2]) * 5
				ops = ops[3:]
				fin := op&0x08 != 0
				reps := 1
				if op&0x80 != 0 {
					reps = 8
				}
				pkt = pkt[:0]
				for r := 0; r < reps && len(pkt)+n+32 < 1300; r++ {
					o := off + uint64(r)*uint64(2*n+1)
					pkt = wire.AppendStreamHeader(pkt, id, o, n, fin && r == reps-1)
					for k := 0; k < n; k++ {
						pkt = append(pkt, fuzzByte(id, o+uint64(k)))
					}
				}
				if len(pkt) == 0 {
					continue
				}
			}
			s.sendFrames(pkt)
			if c.Err() != nil {
				break
			}
			if c.recvRanges > cfg.MaxRecvRanges {
				t.Fatalf("%d ranges held, bound %d", c.recvRanges, cfg.MaxRecvRanges)
			}
			if c.pages.held > c.pages.limit {
				t.Fatalf("%d pages held, bound %d", c.pages.held, c.pages.limit)
			}
			ranges, pages := 0, 0
			for _, st := range c.streams {
				ranges += st.got.len()
				pages += st.rbuf.held()
			}
			if ranges != c.recvRanges || pages != c.pages.held {
				t.Fatalf("accounting: %d ranges counted, %d held; %d pages counted, %d held", c.recvRanges, ranges, c.pages.held, pages)
			}
		}
		// A connection closed for its budget says so.
		var ce *CloseError
		if errors.As(c.Err(), &ce) && ce.Code == CodeRecvBudget && c.Stats().RecvBudgetRanges+c.Stats().RecvBudgetMemory != 1 {
			t.Fatalf("budget close not counted: %+v", c.Stats())
		}
	})
}
