package handshake

import (
	"time"

	"github.com/flynn/noise"
)

// Session is the result of a completed handshake: what the data path needs to
// protect packets, and what the layers above need to know about the peer.
type Session struct {
	// LocalCID is the connection id the peer puts on packets to us;
	// RemoteCID the one we put on packets to it.
	LocalCID, RemoteCID uint64
	// PeerStatic is the peer's authenticated static public key.
	PeerStatic [32]byte
	// Peer is the lookup's answer (responder side only), with PSK zeroed:
	// the session never carries the long-term key.
	Peer Peer
	// SendKey and RecvKey are the two traffic secrets of the Noise split.
	// The initiator sends with the first and the responder with the
	// second, so one side's SendKey is the other's RecvKey.
	SendKey, RecvKey [32]byte
	// PeerTime is the peer's clock as it stated it in the handshake: on
	// the initiator the responder's time ts, on the responder the
	// initiator's timestamp. It is authenticated but not trusted: it feeds
	// offset estimation, it never sets a clock.
	PeerTime time.Time
	// RTT is, on the initiator, the time from sending the initiation to
	// receiving the response (by the caller's clock): the error bound of an
	// offset estimate from PeerTime is RTT/2. Zero on the responder.
	RTT time.Duration
	// LoginState is the responder's login state of the initiator (sent in
	// the response on the initiator side; the lookup's on the responder).
	LoginState uint8
	// HandshakeHash is the Noise handshake hash h: unique to this session
	// and known only to its two ends, for channel-bound re-authentication
	// later in the session.
	HandshakeHash [32]byte
}

// Zero wipes the session's secrets. Call it when the session ends.
func (s *Session) Zero() {
	clear(s.SendKey[:])
	clear(s.RecvKey[:])
	clear(s.HandshakeHash[:])
	clear(s.Peer.PSK[:])
}

// wipeCipherStates overwrites what the Noise split left in its cipher
// states once the keys were copied out. (The AES key schedule inside them is
// out of our reach; it becomes garbage with them.)
func wipeCipherStates(cs ...*noise.CipherState) {
	for _, c := range cs {
		if c != nil {
			*c = noise.CipherState{}
		}
	}
}
