package wire

import (
	"encoding/binary"
	"errors"
)

// Message types: the first byte of every SUDP datagram.
const (
	TypeInitiation  = 0x01 // handshake message 1 (package handshake)
	TypeResponse    = 0x02 // handshake message 2 (package handshake)
	TypeCookieReply = 0x03 // stateless address-proof challenge (package handshake)
	TypeData        = 0x04 // protected packet carrying frames
)

// Data packet layout (docs/protocol.md §4):
//
//	0        1        2                          10                         18
//	+--------+--------+--------------------------+--------------------------+
//	|  0x04  | flags  | destination CID (64)     | packet number (64)       |
//	+--------+--------+--------------------------+--------------------------+
//	| AEAD(frames) ...                                       | tag (16)     |
//	+--------------------------------------------------------+--------------+
//
// The whole 18-byte header is the AEAD associated data, so no header bit can
// be changed without the packet failing authentication.
const (
	DataHeaderSize = 18
	TagSize        = 16
	// DataOverhead is what protection adds to the frames of one packet.
	DataOverhead = DataHeaderSize + TagSize

	// FlagKeyPhase is the low bit of the key generation that protected the packet.
	FlagKeyPhase = 0x01
	flagsKnown   = FlagKeyPhase
)

// Short data packet layout (docs/protocol.md §4.2): the same packet
// with a 6–9 byte header, for every packet after the handshake.
//
//	0           1                        5              5+L
//	+-----------+------------------------+--------------+
//	| 00001KLL  | destination CID, low 32 | PN, low 8L   |
//	+-----------+------------------------+--------------+
//	| AEAD(frames) ...                      | tag (16)  |
//	+---------------------------------------+-----------+
//
// K is the key phase, LL+1 = L the packet number's length in bytes. The
// receiver recovers the full number from the largest it accepted (RFC
// 9000 §17.1, A.3); the sender chooses L from the largest the receiver
// acknowledged. The header is the AEAD associated data, and the nonce
// uses the full number, so a wrong recovery fails authentication.
const (
	typeShortBase  = 0x08
	shortKeyPhase  = 0x04
	shortPNLenMask = 0x03
)

// IsShort reports whether t, a datagram's first byte, is a short data
// packet's (0x08–0x0f).
func IsShort(t byte) bool { return t&^0x07 == typeShortBase }

// IsData reports whether t is a data packet's type, long or short.
func IsData(t byte) bool { return t == TypeData || IsShort(t) }

// Header is the cleartext part of a data packet.
type Header struct {
	KeyPhase bool
	// DstCID is the receiver's connection id; of a short packet, its
	// low 32 bits.
	DstCID uint64
	// PN is the packet number; of a short packet, its low 8×PNLen bits
	// until the receiver recovers it (DecodePN).
	PN uint64
	// Short: a short header of Len = 5+PNLen bytes; otherwise
	// DataHeaderSize.
	Short bool
	PNLen int
	Len   int
}

// Names reports whether the packet is addressed to connection id cid.
func (h Header) Names(cid uint64) bool {
	if h.Short {
		return h.DstCID == cid&0xffffffff
	}
	return h.DstCID == cid
}

var (
	// ErrShort reports a datagram too small to be a data packet.
	ErrShort = errors.New("wire: packet too short")
	// ErrType reports a datagram whose type byte is not a data packet.
	ErrType = errors.New("wire: not a data packet")
	// ErrFlags reports reserved flag bits set.
	ErrFlags = errors.New("wire: reserved flag bits set")
)

// ParseHeader reads a data packet header, long or short. The payload
// that follows is b[h.Len:], and must be at least TagSize bytes.
func ParseHeader(b []byte) (Header, error) {
	if len(b) > 0 && IsShort(b[0]) {
		return parseShort(b)
	}
	if len(b) < DataHeaderSize+TagSize {
		return Header{}, ErrShort
	}
	if b[0] != TypeData {
		return Header{}, ErrType
	}
	if b[1]&^flagsKnown != 0 {
		return Header{}, ErrFlags
	}
	return Header{
		KeyPhase: b[1]&FlagKeyPhase != 0,
		DstCID:   binary.BigEndian.Uint64(b[2:10]),
		PN:       binary.BigEndian.Uint64(b[10:18]),
		Len:      DataHeaderSize,
	}, nil
}

func parseShort(b []byte) (Header, error) {
	n := int(b[0]&shortPNLenMask) + 1
	h := Header{
		KeyPhase: b[0]&shortKeyPhase != 0,
		Short:    true,
		PNLen:    n,
		Len:      5 + n,
	}
	if len(b) < h.Len+TagSize {
		return Header{}, ErrShort
	}
	h.DstCID = uint64(binary.BigEndian.Uint32(b[1:5]))
	for _, x := range b[5:h.Len] {
		h.PN = h.PN<<8 | uint64(x)
	}
	return h, nil
}

// AppendShortHeader appends a short header naming the low 32 bits of
// dstCID and the low 8×pnLen bits of pn (pnLen from ShortPNLen).
func AppendShortHeader(b []byte, keyPhase bool, dstCID, pn uint64, pnLen int) []byte {
	t := byte(typeShortBase) | byte(pnLen-1)&shortPNLenMask
	if keyPhase {
		t |= shortKeyPhase
	}
	b = append(b, t)
	b = binary.BigEndian.AppendUint32(b, uint32(dstCID))
	for i := pnLen - 1; i >= 0; i-- {
		b = append(b, byte(pn>>(8*i)))
	}
	return b
}

// ShortPNLen is how many bytes packet number pn needs in a short header
// (1–4), given the largest number the peer acknowledged (acked false:
// none yet): enough for twice the distance, so the receiver's recovery
// is unambiguous (RFC 9000 §17.1). 0: the distance is too great for 4
// bytes, and the packet takes the long header.
func ShortPNLen(pn, largestAcked uint64, acked bool) int {
	d := pn + 1
	if acked && pn > largestAcked {
		d = pn - largestAcked
	}
	for n := 1; n <= 4; n++ {
		if d < 1<<(8*n-1) {
			return n
		}
	}
	return 0
}

// DecodePN recovers the full packet number from the low 8×pnLen bits
// of it (truncated) and the largest number accepted so far (RFC 9000
// A.3): the candidate closest to largest+1.
func DecodePN(truncated uint64, pnLen int, largest uint64) uint64 {
	expected := largest + 1
	win := uint64(1) << (8 * pnLen)
	hwin, mask := win/2, win-1
	candidate := expected&^mask | truncated&mask
	switch {
	case candidate+hwin <= expected && candidate < MaxVarint-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// AppendHeader appends the 18-byte header of h to b.
func AppendHeader(b []byte, h Header) []byte {
	var flags byte
	if h.KeyPhase {
		flags |= FlagKeyPhase
	}
	b = append(b, TypeData, flags)
	b = binary.BigEndian.AppendUint64(b, h.DstCID)
	return binary.BigEndian.AppendUint64(b, h.PN)
}
