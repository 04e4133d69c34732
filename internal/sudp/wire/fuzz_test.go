package wire

import (
	"bytes"
	"testing"
)

// FuzzParseFrames feeds arbitrary plaintext to the frame parser: it must never
// panic, never loop, and every frame it accepts must re-encode to bytes that
// parse to the same frame (the codec is canonical enough to round-trip).
func FuzzParseFrames(f *testing.F) {
	f.Add(AppendPing(nil))
	f.Add(AppendAck(nil, 3, []AckRange{{10, 20}, {2, 5}}))
	f.Add(AppendClose(nil, 1, "reason"))
	f.Add(append(AppendStreamHeader(nil, 4, 100, 3, true), "abc"...))
	f.Add(AppendDatagram(nil, 1, 0, 2, []byte("xy")))
	f.Add(AppendReset(AppendValue(nil, FrameMaxData, 1<<40), 8, 1, 9))
	f.Add(AppendResetToken(AppendPing(nil), [ResetTokenLen]byte{1, 2, 3}))
	f.Add(append(AppendStreamEndHeader(AppendPing(nil), 4, 1<<31, false), "to the end"...))
	f.Add(AppendStreamEndHeader(nil, 8, 0, true))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Parser
		p.Reset(b)
		var fr Frame
		for i := 0; ; i++ {
			if i > len(b) {
				t.Fatal("parser did not make progress")
			}
			ok, err := p.Next(&fr)
			if err != nil || !ok {
				return
			}
			var re []byte
			switch fr.Type {
			case FrameAck:
				re = AppendAck(nil, fr.Ack.Delay, fr.Ack.Ranges)
			case FrameStream, FrameStreamFin:
				re = append(AppendStreamHeader(nil, fr.Stream.ID, fr.Stream.Offset, len(fr.Stream.Data), fr.Stream.Fin), fr.Stream.Data...)
			case FrameDatagram:
				re = AppendDatagram(nil, fr.Datagram.ID, fr.Datagram.Index, fr.Datagram.Count, fr.Datagram.Data)
			default:
				continue
			}
			var q Parser
			q.Reset(re)
			var g Frame
			if ok, err := q.Next(&g); !ok || err != nil {
				t.Fatalf("re-encoded frame does not parse: %v", err)
			}
			// Compare only the fields of this frame type: the Frame value is
			// reused, so other fields hold earlier frames' values.
			same := g.Type == fr.Type
			switch fr.Type {
			case FrameAck:
				same = same && g.Ack.Delay == fr.Ack.Delay && len(g.Ack.Ranges) == len(fr.Ack.Ranges)
				for i := 0; same && i < len(g.Ack.Ranges); i++ {
					same = g.Ack.Ranges[i] == fr.Ack.Ranges[i]
				}
			case FrameStream, FrameStreamFin:
				same = same && g.Stream.ID == fr.Stream.ID && g.Stream.Offset == fr.Stream.Offset &&
					g.Stream.Fin == fr.Stream.Fin && bytes.Equal(g.Stream.Data, fr.Stream.Data)
			case FrameDatagram:
				same = same && g.Datagram.ID == fr.Datagram.ID && g.Datagram.Index == fr.Datagram.Index &&
					g.Datagram.Count == fr.Datagram.Count && bytes.Equal(g.Datagram.Data, fr.Datagram.Data)
			}
			if !same {
				t.Fatalf("round trip changed frame: %+v vs %+v", g, fr)
			}
		}
	})
}

// FuzzParseHeader checks the cleartext header parser on arbitrary datagrams.
func FuzzParseHeader(f *testing.F) {
	f.Add(append(AppendHeader(nil, Header{DstCID: 1, PN: 2}), make([]byte, TagSize)...))
	f.Add([]byte{TypeData})
	for n := 1; n <= 4; n++ {
		f.Add(append(AppendShortHeader(nil, n%2 == 0, 0xdeadbeef, 0x01020304, n), make([]byte, TagSize)...))
	}
	f.Add([]byte{0x0b, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		if h.Len > len(b)-TagSize {
			t.Fatalf("header of %d bytes in a %d-byte datagram", h.Len, len(b))
		}
		var re []byte
		if h.Short {
			if h.PNLen < 1 || h.PNLen > 4 || h.Len != 5+h.PNLen || h.DstCID>>32 != 0 || h.PN>>(8*h.PNLen) != 0 {
				t.Fatalf("short header %+v", h)
			}
			re = AppendShortHeader(nil, h.KeyPhase, h.DstCID, h.PN, h.PNLen)
		} else {
			re = AppendHeader(nil, h)
		}
		if !bytes.Equal(re, b[:h.Len]) {
			t.Fatalf("header round trip: %x vs %x", re, b[:h.Len])
		}
	})
}
