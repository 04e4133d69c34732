package handshake

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"hash"
	"math"
	"net/netip"
	"time"
)

// prologue is "ferry-sudp" || version || uint16 BE len(clusterID) || clusterID.
// Noise mixes it into the handshake hash before the first message, so peers
// of another cluster or protocol version fail the first AEAD check without
// either side parsing anything more. The length prefix keeps the encoding
// injective.
func prologue(clusterID string) []byte {
	p := make([]byte, 0, len(PrologueLabel)+1+2+len(clusterID))
	p = append(p, PrologueLabel...)
	p = append(p, Version)
	p = binary.BigEndian.AppendUint16(p, uint16(len(clusterID)))
	return append(p, clusterID...)
}

// checkHeader verifies the fixed fields shared by the three messages: exact
// length, type, version and zero reserved bytes. Exact lengths matter: Noise
// would happily treat extra bytes as a longer payload.
func checkHeader(pkt []byte, typ byte, size int) error {
	if len(pkt) != size || pkt[0] != typ || pkt[reservedOffset]|pkt[reservedOffset+1] != 0 {
		return ErrMalformed
	}
	if pkt[1] != Version {
		return ErrUnsupportedVersion
	}
	return nil
}

func putHeader(b []byte, typ byte) {
	b[0], b[1], b[2], b[3] = typ, Version, 0, 0
}

// cid reads a connection id; zero is reserved for "none".
func cid(b []byte) (uint64, bool) {
	v := binary.BigEndian.Uint64(b)
	return v, v != 0
}

// labelledKey is SHA-256(label || static public key): the mac1 key (label
// LabelMAC1) and cookie-encryption key (LabelCookie) of the owner of pub.
// Anyone who knows pub can compute them; they prove knowledge of the public
// key, not of a secret, which is all mac1 is for.
func labelledKey(label string, pub []byte) [HashLen]byte {
	h := sha256.New()
	h.Write([]byte(label))
	h.Write(pub)
	var k [HashLen]byte
	h.Sum(k[:0])
	return k
}

// mac is a keyed HMAC-SHA256 truncated to MACLen, reused across messages to
// save the key schedule. Not safe for concurrent use.
type mac struct {
	h   hash.Hash
	sum [HashLen]byte
}

func newMAC(key []byte) *mac { return &mac{h: hmac.New(sha256.New, key)} }

// compute writes HMAC(key, msg)[:MACLen] to out.
func (m *mac) compute(out, msg []byte) {
	m.h.Reset()
	m.h.Write(msg)
	m.h.Sum(m.sum[:0])
	copy(out[:MACLen], m.sum[:])
}

// verify reports, in constant time, whether got is HMAC(key, msg)[:MACLen].
func (m *mac) verify(got, msg []byte) bool {
	var want [MACLen]byte
	m.compute(want[:], msg)
	return subtle.ConstantTimeCompare(got, want[:]) == 1
}

// addrBytes is what a cookie is bound to: the source IP (IPv4-mapped IPv6
// folded to IPv4, so one host has one cookie whatever socket family saw it)
// followed by the source port, big-endian.
func addrBytes(buf *[18]byte, src netip.AddrPort) []byte {
	a := src.Addr().Unmap()
	var n int
	if a.Is4() {
		b := a.As4()
		n = copy(buf[:], b[:])
	} else {
		b := a.As16()
		n = copy(buf[:], b[:])
	}
	binary.BigEndian.PutUint16(buf[n:], src.Port())
	return buf[:n+2]
}

// timestamp is the initiator's anti-replay clock, TAI64N-like: seconds and
// nanoseconds since the Unix epoch. The responder only ever compares two
// timestamps of the same peer, so the epoch is irrelevant; what matters is
// that each initiation of a peer carries a larger one than the last.
type timestamp struct {
	sec  uint64
	nsec uint32
}

func timestampOf(t time.Time) (timestamp, bool) {
	s := t.Unix()
	if s < 0 {
		return timestamp{}, false
	}
	return timestamp{sec: uint64(s), nsec: uint32(t.Nanosecond())}, true
}

func (t timestamp) after(u timestamp) bool {
	return t.sec > u.sec || (t.sec == u.sec && t.nsec > u.nsec)
}

// next is t plus one nanosecond.
func (t timestamp) next() timestamp {
	if t.nsec+1 < 1e9 {
		return timestamp{t.sec, t.nsec + 1}
	}
	return timestamp{t.sec + 1, 0}
}

func (t timestamp) put(b []byte) {
	binary.BigEndian.PutUint64(b, t.sec)
	binary.BigEndian.PutUint32(b[8:], t.nsec)
}

// parseTimestamp refuses nanoseconds of a second or more (two encodings of
// one instant would defeat the strict ordering) and seconds that time.Time
// cannot hold.
func parseTimestamp(b []byte) (timestamp, bool) {
	t := timestamp{sec: binary.BigEndian.Uint64(b), nsec: binary.BigEndian.Uint32(b[8:])}
	return t, t.nsec < 1e9 && t.sec <= math.MaxInt64
}

func (t timestamp) time() time.Time {
	return time.Unix(int64(t.sec), int64(t.nsec))
}
