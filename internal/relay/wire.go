package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Bind and bind-ack layout (docs/protocol.md §18):
//
//	0        1        2                   10                  18                         50
//	+--------+--------+-------------------+-------------------+--------------------------+
//	|  0xFE  |  kind  | allocation id (64)| counter (64)      | HMAC-SHA256(key, 0..18)  |
//	+--------+--------+-------------------+-------------------+--------------------------+
//
// kind is KindBind (agent → relay) or KindAck (relay → agent; the counter
// echoes the bind's). The MAC covers the kind, so an ack cannot be replayed
// as a bind, and the allocation id, so a bind cannot be replayed into a
// later allocation that reuses the port. The key is the side's bind key.
const (
	// Magic is the first byte of every relay control datagram. It is a
	// foreign byte for SUDP (at or above sudp.ForeignMin: no SUDP
	// datagram starts with it, and an endpoint hands it to its Foreign
	// handler), far from the hole punch's (punch.Type, 0x50), and a relay
	// never forwards a datagram that starts with it.
	Magic = 0xFE
	// KindBind asks the relay to bind the sender's address to its side.
	KindBind = 0x01
	// KindAck confirms an accepted bind.
	KindAck = 0x02
	// MsgSize is the exact size of a bind or bind-ack.
	MsgSize = 50
	// KeySize is the size of a bind key.
	KeySize = 32

	macOffset = 18
)

// AllocID names an allocation. It is not secret: the bind key is what
// proves a side's right to bind.
type AllocID uint64

// Msg is the cleartext of a bind or bind-ack.
type Msg struct {
	Kind    byte
	ID      AllocID
	Counter uint64
}

// Errors of ParseMsg.
var (
	ErrMsgSize  = errors.New("relay: control datagram is not 50 bytes")
	ErrNotRelay = errors.New("relay: not a relay control datagram")
	ErrMsgKind  = errors.New("relay: unknown control datagram kind")
)

// AppendMsg appends m, authenticated with key, to b.
func AppendMsg(b []byte, m Msg, key *[KeySize]byte) []byte {
	start := len(b)
	b = append(b, Magic, m.Kind)
	b = binary.BigEndian.AppendUint64(b, uint64(m.ID))
	b = binary.BigEndian.AppendUint64(b, m.Counter)
	mac := hmac.New(sha256.New, key[:])
	mac.Write(b[start:])
	return mac.Sum(b)
}

// ParseMsg reads the cleartext fields of a control datagram without
// checking its MAC (VerifyMsg does).
func ParseMsg(b []byte) (Msg, error) {
	if len(b) != MsgSize {
		return Msg{}, ErrMsgSize
	}
	if b[0] != Magic {
		return Msg{}, ErrNotRelay
	}
	if b[1] != KindBind && b[1] != KindAck {
		return Msg{}, ErrMsgKind
	}
	return Msg{
		Kind:    b[1],
		ID:      AllocID(binary.BigEndian.Uint64(b[2:10])),
		Counter: binary.BigEndian.Uint64(b[10:18]),
	}, nil
}

// VerifyMsg reports whether b is a control datagram whose MAC is valid
// under key. The comparison is constant-time.
func VerifyMsg(b []byte, key *[KeySize]byte) bool {
	if len(b) != MsgSize {
		return false
	}
	mac := hmac.New(sha256.New, key[:])
	mac.Write(b[:macOffset])
	var sum [sha256.Size]byte
	return hmac.Equal(mac.Sum(sum[:0]), b[macOffset:])
}
