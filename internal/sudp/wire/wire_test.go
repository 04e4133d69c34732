package wire

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestVarintRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 63, 64, 16383, 16384, 1073741823, 1073741824, MaxVarint} {
		b := AppendVarint(nil, v)
		if len(b) != VarintLen(v) {
			t.Fatalf("%d: len %d, VarintLen %d", v, len(b), VarintLen(v))
		}
		got, n, err := ReadVarint(b)
		if err != nil || got != v || n != len(b) {
			t.Fatalf("%d: got %d n=%d err=%v", v, got, n, err)
		}
		if _, _, err := ReadVarint(b[:len(b)-1]); err == nil {
			t.Fatalf("%d: truncated varint accepted", v)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{KeyPhase: true, DstCID: 0x0102030405060708, PN: 1<<40 + 7, Len: DataHeaderSize}
	b := AppendHeader(nil, h)
	if len(b) != DataHeaderSize {
		t.Fatalf("header size %d", len(b))
	}
	b = append(b, make([]byte, TagSize)...)
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("got %+v err %v", got, err)
	}
	tests := []struct {
		name string
		mut  func([]byte) []byte
		want error
	}{
		{"short", func(b []byte) []byte { return b[:DataHeaderSize+TagSize-1] }, ErrShort},
		{"type", func(b []byte) []byte { b[0] = TypeInitiation; return b }, ErrType},
		{"flags", func(b []byte) []byte { b[1] |= 0x80; return b }, ErrFlags},
	}
	for _, tc := range tests {
		c := tc.mut(bytes.Clone(b))
		if _, err := ParseHeader(c); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}

func parseAll(t *testing.T, b []byte) []Frame {
	t.Helper()
	var p Parser
	p.Reset(b)
	var out []Frame
	for {
		var f Frame
		ok, err := p.Next(&f)
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		if !ok {
			return out
		}
		// Copy ranges: the parser reuses its buffer.
		f.Ack.Ranges = append([]AckRange(nil), f.Ack.Ranges...)
		out = append(out, f)
	}
}

func TestFramesRoundTrip(t *testing.T) {
	ranges := []AckRange{{100, 120}, {90, 97}, {0, 0}}
	var b []byte
	b = AppendPing(b)
	b = AppendPadding(b, 3)
	b = AppendAck(b, 250, ranges)
	if got := AckLen(250, ranges); got != len(b)-4 {
		t.Fatalf("AckLen %d, encoded %d", got, len(b)-4)
	}
	b = AppendClose(b, 7, "bye")
	b = AppendPath(b, FramePathChallenge, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	b = AppendPath(b, FramePathResponse, [8]byte{8, 7})
	b = AppendValue(b, FrameKeyUpdate, 3)
	b = AppendValue(b, FrameMaxData, 1<<33)
	b = AppendStreamValue(b, FrameMaxStreamData, 4, 1<<20)
	b = AppendReset(b, 5, 42, 99)
	b = AppendStreamValue(b, FrameStopSending, 6, 2)
	n := len(b)
	b = AppendStreamHeader(b, 9, 1<<30, 5, true)
	if len(b)-n != StreamHeaderLen(9, 1<<30, 5) {
		t.Fatal("StreamHeaderLen mismatch")
	}
	b = append(b, "hello"...)
	n = len(b)
	b = AppendDatagram(b, 11, 2, 3, []byte("frag"))
	if len(b)-n != DatagramHeaderLen(11, 2, 3, 4)+4 {
		t.Fatal("DatagramHeaderLen mismatch")
	}

	fs := parseAll(t, b)
	wantTypes := []byte{FramePing, FrameAck, FrameClose, FramePathChallenge, FramePathResponse,
		FrameKeyUpdate, FrameMaxData, FrameMaxStreamData, FrameResetStream, FrameStopSending,
		FrameStreamFin, FrameDatagram}
	if len(fs) != len(wantTypes) {
		t.Fatalf("got %d frames, want %d", len(fs), len(wantTypes))
	}
	for i, f := range fs {
		if f.Type != wantTypes[i] {
			t.Fatalf("frame %d type %#x want %#x", i, f.Type, wantTypes[i])
		}
	}
	if a := fs[1].Ack; a.Delay != 250 || len(a.Ranges) != 3 || a.Ranges[0] != ranges[0] || a.Ranges[1] != ranges[1] || a.Ranges[2] != ranges[2] {
		t.Fatalf("ack %+v", a)
	}
	if fs[2].ErrorCode != 7 || string(fs[2].Reason) != "bye" {
		t.Fatalf("close %+v", fs[2])
	}
	if fs[3].PathData != [8]byte{1, 2, 3, 4, 5, 6, 7, 8} || fs[4].PathData != [8]byte{8, 7} {
		t.Fatal("path data")
	}
	if fs[5].Value != 3 || fs[6].Value != 1<<33 {
		t.Fatal("values")
	}
	if fs[7].StreamID != 4 || fs[7].Value != 1<<20 || fs[8].StreamID != 5 || fs[8].Value != 99 || fs[8].ErrorCode != 42 || fs[9].ErrorCode != 2 {
		t.Fatal("stream values")
	}
	s := fs[10].Stream
	if s.ID != 9 || s.Offset != 1<<30 || !s.Fin || string(s.Data) != "hello" {
		t.Fatalf("stream %+v", s)
	}
	d := fs[11].Datagram
	if d.ID != 11 || d.Index != 2 || d.Count != 3 || string(d.Data) != "frag" {
		t.Fatalf("datagram %+v", d)
	}
}

func TestAckRandomRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		n := 1 + r.IntN(20)
		var ranges []AckRange
		hi := uint64(r.IntN(1<<20)) + 1<<21
		for j := 0; j < n; j++ {
			length := uint64(r.IntN(50))
			if hi < length {
				break
			}
			ranges = append(ranges, AckRange{hi - length, hi})
			gap := uint64(r.IntN(30)) + 2
			if hi-length < gap {
				break
			}
			hi = hi - length - gap
		}
		b := AppendAck(nil, uint64(r.IntN(1000)), ranges)
		fs := parseAll(t, b)
		if len(fs) != 1 || len(fs[0].Ack.Ranges) != len(ranges) {
			t.Fatalf("iteration %d: %+v vs %+v", i, fs, ranges)
		}
		for j := range ranges {
			if fs[0].Ack.Ranges[j] != ranges[j] {
				t.Fatalf("iteration %d range %d: %+v vs %+v", i, j, fs[0].Ack.Ranges[j], ranges[j])
			}
		}
	}
}

func TestMalformedFrames(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
	}{
		{"unknown type", []byte{0x3f}},
		{"truncated ack", []byte{FrameAck, 5}},
		{"ack first range above largest", []byte{FrameAck, 5, 0, 0, 6}},
		{"ack gap underflow", []byte{FrameAck, 5, 0, 1, 0, 4, 0}},
		{"ack too many ranges", AppendVarint([]byte{FrameAck, 5, 0}, MaxAckRanges)},
		{"close reason too long", AppendVarint([]byte{FrameClose, 0}, MaxCloseReason+1)},
		{"close reason truncated", []byte{FrameClose, 0, 5, 'a'}},
		{"path truncated", []byte{FramePathChallenge, 1, 2}},
		{"stream data truncated", []byte{FrameStream, 1, 0, 10, 'a'}},
		{"datagram index >= count", []byte{FrameDatagram, 1, 3, 3, 0}},
		{"datagram zero count", []byte{FrameDatagram, 1, 0, 0, 0}},
	}
	for _, tc := range tests {
		var p Parser
		p.Reset(tc.b)
		var f Frame
		if _, err := p.Next(&f); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: err %v, want ErrFrame", tc.name, err)
		}
		// After an error the parser reports the end, never loops.
		if ok, err := p.Next(&f); ok || err != nil {
			t.Errorf("%s: parser continued after error", tc.name)
		}
	}
}

func BenchmarkParseStreamPacket(b *testing.B) {
	pkt := AppendAck(nil, 10, []AckRange{{1000, 1100}, {900, 990}})
	pkt = AppendStreamHeader(pkt, 4, 1<<30, 1300, false)
	pkt = append(pkt, make([]byte, 1300)...)
	var p Parser
	var f Frame
	b.ReportAllocs()
	for b.Loop() {
		p.Reset(pkt)
		for {
			ok, err := p.Next(&f)
			if err != nil || !ok {
				break
			}
		}
	}
}

// A short header carries the key phase, the connection id's low 32 bits
// and the packet number's low 8×L bits, L from 1 to 4, in 5+L bytes.
func TestShortHeaderRoundTrip(t *testing.T) {
	for n := 1; n <= 4; n++ {
		for _, kp := range []bool{false, true} {
			b := AppendShortHeader(nil, kp, 0x0102030405060708, 0x1122334455667788, n)
			if len(b) != 5+n || !IsShort(b[0]) || !IsData(b[0]) {
				t.Fatalf("L=%d: header %x", n, b)
			}
			if _, err := ParseHeader(append(b[:len(b):len(b)], make([]byte, TagSize-1)...)); err == nil {
				t.Fatalf("L=%d: parsed without room for a tag", n)
			}
			b = append(b, make([]byte, TagSize)...)
			h, err := ParseHeader(b)
			want := Header{KeyPhase: kp, DstCID: 0x05060708, PN: 0x1122334455667788 & (1<<(8*n) - 1), Short: true, PNLen: n, Len: 5 + n}
			if err != nil || h != want {
				t.Fatalf("L=%d: got %+v, %v; want %+v", n, h, err, want)
			}
			if !h.Names(0xffffffff05060708) || h.Names(0x05060709) {
				t.Fatalf("L=%d: Names compares more or less than the low 32 bits", n)
			}
		}
	}
	for typ := 0; typ < 256; typ++ {
		if IsShort(byte(typ)) != (typ >= 0x08 && typ <= 0x0f) {
			t.Fatalf("IsShort(0x%02x)", typ)
		}
	}
	long := Header{DstCID: 0x0102030405060708, Len: DataHeaderSize}
	if !long.Names(0x0102030405060708) || long.Names(0xff02030405060708) {
		t.Fatal("a long header's Names compares less than the whole id")
	}
}

// The sender's length leaves the receiver's recovery unambiguous: more
// than twice the distance from the largest acknowledged number (RFC 9000
// §17.1); beyond 4 bytes, the long header.
func TestShortPNLen(t *testing.T) {
	tests := []struct {
		pn, acked uint64
		hasAcked  bool
		want      int
	}{
		{0, 0, false, 1},
		{126, 0, false, 1},
		{127, 0, false, 2},
		{200, 100, true, 1},
		{228, 100, true, 2},
		{100 + 1<<15 - 1, 100, true, 2},
		{100 + 1<<15, 100, true, 3},
		{100 + 1<<23, 100, true, 4},
		{100 + 1<<31 - 1, 100, true, 4},
		{100 + 1<<31, 100, true, 0},
		{1<<40 + 5, 1 << 40, true, 1},
		{5, 9, true, 1}, // an ACK claiming more than was sent: the number itself counts
	}
	for _, tc := range tests {
		if got := ShortPNLen(tc.pn, tc.acked, tc.hasAcked); got != tc.want {
			t.Errorf("ShortPNLen(%d, %d, %v) = %d, want %d", tc.pn, tc.acked, tc.hasAcked, got, tc.want)
		}
	}
}

// DecodePN: RFC 9000 A.3's example, the window's edges, and every
// number a sender following ShortPNLen may send, around many largest
// values, comes back whole.
func TestDecodePN(t *testing.T) {
	if got := DecodePN(0x9b32, 2, 0xa82f30ea); got != 0xa82f9b32 {
		t.Fatalf("RFC 9000 A.3 example: %#x", got)
	}
	tests := []struct {
		trunc   uint64
		n       int
		largest uint64
		want    uint64
	}{
		{0, 1, 0, 0},
		{1, 1, 0, 1},
		{0xff, 1, 0x100, 0xff},
		{0x00, 1, 0xff, 0x100},
		{0x7f, 1, 0, 0x7f},
		{0x80, 1, 0, 0x80},      // nothing lies below 0
		{0xff, 1, 0x1ff, 0x1ff}, // a duplicate of the largest
		{0x10, 1, 0x190, 0x210},
		{0x00, 1, 0x17f, 0x200}, // half a window either way: the newer (RFC 9000 A.3)
		{0x01, 1, 0x17f, 0x101}, // just inside the window below
	}
	for _, tc := range tests {
		if got := DecodePN(tc.trunc, tc.n, tc.largest); got != tc.want {
			t.Errorf("DecodePN(%#x, %d, %#x) = %#x, want %#x", tc.trunc, tc.n, tc.largest, got, tc.want)
		}
	}
	for _, largest := range []uint64{0, 1, 127, 128, 255, 256, 1000, 65535, 65536, 1 << 20, 1<<32 - 1, 1 << 32, 1<<40 + 3} {
		for _, acked := range []uint64{largest / 2, largest, largest - min(largest, 300)} {
			// The receiver has seen up to largest (at least what it
			// acknowledged); the sender's next number is above all it
			// sent, so above largest.
			for pn := largest + 1; pn < largest+70000; pn += 1 + pn%97 {
				n := ShortPNLen(pn, acked, true)
				if n == 0 {
					continue
				}
				if got := DecodePN(pn&(1<<(8*n)-1), n, largest); got != pn {
					t.Fatalf("pn %d (L=%d, acked %d) recovered as %d against largest %d", pn, n, acked, got, largest)
				}
			}
		}
	}
}

// A STREAM frame without a length takes the rest of the packet, whatever
// its bytes, and is seen as one STREAM frame (with its FIN bit).
func TestStreamFrameToTheEnd(t *testing.T) {
	for _, fin := range []bool{false, true} {
		rest := append(AppendPing(nil), "looks like frames"...)
		b := append(AppendStreamEndHeader(AppendPing(nil), 4, 1<<31, fin), rest...)
		if got := len(AppendStreamEndHeader(nil, 4, 1<<31, fin)); got != StreamEndHeaderLen(4, 1<<31) {
			t.Fatalf("header %d bytes, StreamEndHeaderLen %d", got, StreamEndHeaderLen(4, 1<<31))
		}
		var p Parser
		p.Reset(b)
		var f Frame
		if ok, err := p.Next(&f); !ok || err != nil || f.Type != FramePing {
			t.Fatalf("first frame: %v %v %+v", ok, err, f)
		}
		want := byte(FrameStream)
		if fin {
			want = FrameStreamFin
		}
		if ok, err := p.Next(&f); !ok || err != nil || f.Type != want || f.Stream.ID != 4 || f.Stream.Offset != 1<<31 || f.Stream.Fin != fin || !bytes.Equal(f.Stream.Data, rest) {
			t.Fatalf("fin %v: %v %v %+v", fin, ok, err, f)
		}
		if ok, err := p.Next(&f); ok || err != nil {
			t.Fatalf("fin %v: a frame after the one that runs to the end: %v %v", fin, ok, err)
		}
	}
	// An offset whose end would pass 2^62-1 is malformed, as with a length.
	b := append(AppendStreamEndHeader(nil, 4, MaxVarint-1, false), "xy"...)
	var p Parser
	p.Reset(b)
	var f Frame
	if _, err := p.Next(&f); err == nil {
		t.Fatal("a frame past the largest offset parsed")
	}
}
