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

// Header is the cleartext part of a data packet.
type Header struct {
	KeyPhase bool
	DstCID   uint64
	PN       uint64
}

var (
	// ErrShort reports a datagram too small to be a data packet.
	ErrShort = errors.New("wire: packet too short")
	// ErrType reports a datagram whose type byte is not a data packet.
	ErrType = errors.New("wire: not a data packet")
	// ErrFlags reports reserved flag bits set.
	ErrFlags = errors.New("wire: reserved flag bits set")
)

// ParseHeader reads a data packet header. The payload that follows is
// b[DataHeaderSize:], and must be at least TagSize bytes.
func ParseHeader(b []byte) (Header, error) {
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
	}, nil
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
