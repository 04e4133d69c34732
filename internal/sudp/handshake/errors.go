package handshake

import "errors"

// Every reason to refuse a handshake message has its own error, so that the
// endpoint can log and count them; the responder also counts them in Stats.
// None of them is ever sent to the peer: a refused message is dropped
// silently (except ErrCookieRequired, whose cookie reply is the answer).
var (
	// ErrMalformed: wrong length, wrong type, reserved bits set, or a zero
	// connection id.
	ErrMalformed = errors.New("handshake: malformed message")
	// ErrUnsupportedVersion: the version byte is not Version.
	ErrUnsupportedVersion = errors.New("handshake: unsupported version")
	// ErrBadMAC1: mac1 does not match; the sender does not know our static
	// public key (or the packet was damaged).
	ErrBadMAC1 = errors.New("handshake: bad mac1")
	// ErrBadMAC2: a response carries a non-zero mac2 (responders never hold
	// an initiator's cookie, so it must be zero).
	ErrBadMAC2 = errors.New("handshake: bad mac2")
	// ErrCookieRequired: the responder wants proof of the source address
	// first; the returned reply is a cookie reply to send back.
	ErrCookieRequired = errors.New("handshake: cookie required")
	// ErrRateLimited: the source sent initiations faster than allowed.
	ErrRateLimited = errors.New("handshake: rate limited")
	// ErrDecrypt: the Noise message (or the cookie box) did not
	// authenticate: wrong keys, wrong prologue (cluster id, version), wrong
	// psk, or tampering.
	ErrDecrypt = errors.New("handshake: decryption failed")
	// ErrUnknownPeer: the lookup does not know the initiator's static key.
	ErrUnknownPeer = errors.New("handshake: unknown peer")
	// ErrPeerNotAllowed: the lookup knows the peer but it may not connect.
	ErrPeerNotAllowed = errors.New("handshake: peer not allowed")
	// ErrReplay: the initiation's timestamp is not newer than the last one
	// accepted from that peer.
	ErrReplay = errors.New("handshake: replayed initiation")
	// ErrBadPayload: an authenticated payload breaks its format (timestamp
	// out of range, reserved bytes set). Only the key holder can cause it.
	ErrBadPayload = errors.New("handshake: malformed payload")
	// ErrWrongReceiver: a response or cookie reply names a connection id
	// other than that of the initiation in flight.
	ErrWrongReceiver = errors.New("handshake: wrong receiver connection id")
	// ErrNoPendingHandshake: a response or cookie reply arrived while no
	// initiation awaits one (or its cookie reply was already used).
	ErrNoPendingHandshake = errors.New("handshake: no handshake in flight")
	// ErrInvalidArgument: the caller passed a zero connection id, an
	// invalid address or a time before 1970.
	ErrInvalidArgument = errors.New("handshake: invalid argument")
	// ErrInternal: randomness or a primitive failed; not the peer's doing.
	ErrInternal = errors.New("handshake: internal error")
)

// PeerError attributes a rejected initiation to the static key that made
// it, for rejections that happen after the key was decrypted and
// authenticated by the initiation's Noise message (a replay, a refused
// peer), so the layer above can audit who tried.
type PeerError struct {
	Peer [32]byte
	Err  error
}

func (e *PeerError) Error() string { return e.Err.Error() }
func (e *PeerError) Unwrap() error { return e.Err }
