package wire

import (
	"encoding/binary"
	"errors"
)

// TypeRekey is a re-handshake message (docs/protocol.md §6.3): a Noise KK
// exchange between the two static keys of an established connection that
// replaces its traffic secrets with ones no earlier secret can derive. It is
// its own message type, not a frame, because it must work when every
// traffic key of the connection is past its hard limit (after an outage).
const TypeRekey = 0x06

// Re-handshake message kinds (the second byte).
const (
	RekeyInitiation = 0x01 // Noise KK message 1: e, es, ss
	RekeyResponse   = 0x02 // Noise KK message 2: e, ee, se
)

// Re-handshake layout (66 bytes, both kinds):
//
//	0        1        2                          10                         18
//	+--------+--------+--------------------------+--------------------------+
//	|  0x06  |  kind  | destination CID (64)     | epoch (64)               |
//	+--------+--------+--------------------------+--------------------------+
//	| Noise KK message: ephemeral (32) | empty payload's tag (16)           |
//	+----------------------------------+------------------------------------+
//
// The destination CID sits where a data packet's does, so the endpoint
// routes both alike. CID and epoch are bound into the Noise prologue, the
// kind into the message pattern: no field can be changed without the
// message failing authentication.
const (
	RekeyHeaderSize = 18
	RekeyNoiseSize  = 32 + TagSize
	RekeySize       = RekeyHeaderSize + RekeyNoiseSize
)

// RekeyHeader is the cleartext part of a re-handshake message.
type RekeyHeader struct {
	Kind   byte
	DstCID uint64
	Epoch  uint64 // 1 for the connection's first re-handshake, then +1
}

// ErrRekey reports a malformed re-handshake message.
var ErrRekey = errors.New("wire: malformed re-handshake message")

// ParseRekey reads a re-handshake message: exactly RekeySize bytes, a known
// kind, a non-zero epoch. The returned Noise message aliases b.
func ParseRekey(b []byte) (RekeyHeader, []byte, error) {
	if len(b) != RekeySize || b[0] != TypeRekey {
		return RekeyHeader{}, nil, ErrRekey
	}
	h := RekeyHeader{
		Kind:   b[1],
		DstCID: binary.BigEndian.Uint64(b[2:10]),
		Epoch:  binary.BigEndian.Uint64(b[10:18]),
	}
	if (h.Kind != RekeyInitiation && h.Kind != RekeyResponse) || h.Epoch == 0 {
		return RekeyHeader{}, nil, ErrRekey
	}
	return h, b[RekeyHeaderSize:], nil
}

// AppendRekey appends a re-handshake message; msg must be RekeyNoiseSize
// bytes (the Noise layer's output).
func AppendRekey(b []byte, h RekeyHeader, msg []byte) []byte {
	b = append(b, TypeRekey, h.Kind)
	b = binary.BigEndian.AppendUint64(b, h.DstCID)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	return append(b, msg...)
}
