// Package punch is the hole punching between two agents the MMC
// introduced (docs/protocol.md §17): the datagram the listening agent
// sends to open its NAT towards the dialing agent, and the timing both
// follow.
//
// The MMC sees each agent's public address (the source of its session)
// and gives each the other's, with a start time: at that moment the
// dialer starts its SUDP handshake towards the listener, resending the
// initiation every Retry, and the listener sends punch datagrams to the
// dialer every Retry — both from the UDP socket they use for the MMC, so
// the NAT mappings are the ones the MMC saw. A packet leaving through a
// NAT opens it to answers from where it went; the two streams meet.
//
// A punch is authenticated with a token derived from the introduction's
// one-time ticket, so the dialer can trust its source address: when the
// listener's NAT maps each destination to a new port (a symmetric NAT),
// the address the MMC saw is not the one the listener's packets come
// from towards the dialer, and the dialer redials the address the punch
// came from. Nothing else about a punch is trusted: the handshake that
// follows authenticates the peer (its static key and the ticket).
package punch

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"time"
)

// Type is a punch datagram's first byte: above every SUDP packet type
// (sudp.ForeignMin), so an endpoint hands it to its Foreign handler.
const Type = 0x50

// Version is the punch format.
const Version = 1

// TokenLen is the size of the token a punch carries.
const TokenLen = 16

// Size is a punch datagram's length: type, version, token, sequence.
const Size = 2 + TokenLen + 4

// Token is what binds a punch to one introduction.
type Token [TokenLen]byte

// Equal compares in constant time.
func (t Token) Equal(o Token) bool { return subtle.ConstantTimeCompare(t[:], o[:]) == 1 }

// TokenFor derives the punch token of the introduction whose ticket is
// ticket, for topic. The ticket itself never goes on the wire outside
// the handshake (it is its psk); HMAC keeps it secret here too.
func TokenFor(ticket [32]byte, topic string) Token {
	m := hmac.New(sha256.New, ticket[:])
	m.Write([]byte("ferry punch v1\x00"))
	m.Write([]byte(topic))
	var t Token
	copy(t[:], m.Sum(nil))
	return t
}

// Append appends a punch datagram to b.
func Append(b []byte, t Token, seq uint32) []byte {
	b = append(b, Type, Version)
	b = append(b, t[:]...)
	return binary.BigEndian.AppendUint32(b, seq)
}

// Errors of Parse.
var (
	ErrNotPunch = errors.New("punch: not a punch datagram")
	ErrVersion  = errors.New("punch: unknown version")
)

// Parse reads a punch datagram.
func Parse(b []byte) (Token, uint32, error) {
	var t Token
	if len(b) != Size || b[0] != Type {
		return t, 0, ErrNotPunch
	}
	if b[1] != Version {
		return t, 0, ErrVersion
	}
	copy(t[:], b[2:2+TokenLen])
	return t, binary.BigEndian.Uint32(b[2+TokenLen:]), nil
}

// Timing of a punch.
const (
	// Retry is how often the dialer resends its initiation and the
	// listener its punch while they try: short against the start-time
	// error (clock offsets estimated from handshakes), yet a few dozen
	// small datagrams a second at most.
	Retry = 50 * time.Millisecond
	// MinWindow and MaxWindow bound how long they try before the MMC
	// falls back to a relay; Window scales between them with the RTT.
	MinWindow = 2 * time.Second
	MaxWindow = 5 * time.Second
	// maxLead bounds how far ahead the start is set.
	maxLead = 2 * time.Second
	// margin covers scheduling and the agents' clock-offset error.
	margin = 20 * time.Millisecond
	// MaxRedials bounds the addresses a dialer adds from punches (a
	// symmetric NAT's new port; more would only be an attacker's).
	MaxRedials = 2
)

// Start is when both agents begin, on the MMC's clock: late enough for
// both orders to have arrived — the MMC sends them at once, each half a
// round trip to its agent — and no later.
func Start(now time.Time, listenerRTT, dialerRTT time.Duration) time.Time {
	lead := max(listenerRTT, dialerRTT)/2 + margin
	return now.Add(min(lead, maxLead))
}

// Window is how long they try: ten round trips between the two agents
// (estimated as the sum of their RTTs to the MMC), within
// [MinWindow, MaxWindow].
func Window(listenerRTT, dialerRTT time.Duration) time.Duration {
	return min(max(10*(listenerRTT+dialerRTT), MinWindow), MaxWindow)
}
