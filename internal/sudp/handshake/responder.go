package handshake

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// Peer is what the responder's lookup knows about an initiator's static key.
type Peer struct {
	// ID names the peer for the layers above (e.g. an Agent_Id digest).
	ID string
	// PSK is the 32-byte shared key K of the peer, mixed into the handshake
	// as the Noise psk. An all-zero PSK is treated as not allowed.
	PSK [32]byte
	// Allowed must be true for the handshake to proceed; a known but
	// disabled peer (pending enrolment, revoked) has it false.
	Allowed bool
	// LoginState is sent to the initiator in the response payload, as the
	// MMC's last message carries it in the paper's mutual C-R.
	LoginState uint8
	// NotAfter, if set, is the newest initiation timestamp the layer above
	// has on record for this peer (persisted across restarts, unlike the
	// responder's own memory): an initiation not newer than it is a replay.
	NotAfter time.Time
	// Unregistered marks a key the lookup accepted without having it on
	// record (an enrolment by a fresh key: anyone holding the cluster's
	// enrolment psk may present any number of them). Its replay
	// timestamp goes to a bounded, expiring table instead of the
	// permanent one, which stays bounded by the registered peers.
	Unregistered bool
	// RecvLimit, if not nil, caps the bytes the peer's packets may make the
	// endpoint's receive loop decrypt and process; the layer above knows
	// what the peer needs (an enrolling host: a few small messages) and
	// gives one peer the same bucket for every session, so a new session
	// brings no fresh burst. Packets over it are dropped before
	// decryption. Set here, the cap holds from the connection's first
	// packet.
	RecvLimit *ratelimit.Bucket
}

// ResponderConfig configures a Responder.
type ResponderConfig struct {
	// Static is the responder's X25519 key pair. Initiators must know its
	// public half in advance.
	Static noise.DHKey
	// ClusterID is bound into the prologue; it must be non-empty.
	ClusterID string
	// Lookup maps an initiator's static public key to its Peer. It is
	// called only after the initiation authenticated that key, and an
	// error or !Allowed rejects the handshake.
	Lookup func(peerStatic [32]byte) (Peer, error)
	// Rand supplies ephemeral keys, cookie secrets and nonces; nil means
	// crypto/rand. Tests pass a seeded generator.
	Rand io.Reader
	// RequireCookie makes every initiator prove its address (one extra round
	// trip) even when the responder is not under load.
	RequireCookie bool
	// LoadThreshold is the number of initiations per second above which the
	// responder is under load and demands cookies. Zero means
	// DefaultLoadThreshold.
	LoadThreshold int
	// RateLimit limits initiations per source address; zero fields take
	// the ratelimit package defaults.
	RateLimit ratelimit.Config
	// MaxUnregistered and UnregisteredTTL bound the replay table of
	// unregistered keys (Peer.Unregistered); zero means
	// DefaultMaxUnregistered and DefaultUnregisteredTTL.
	MaxUnregistered int
	UnregisteredTTL time.Duration
}

// Stats counts what a Responder did with the initiations it was given.
// Every initiation passed to HandleInitiation increments Initiations and
// exactly one of the other counters.
type Stats struct {
	Initiations    uint64 // all calls to HandleInitiation
	Sessions       uint64 // handshakes completed (a response was returned)
	Malformed      uint64 // ErrMalformed (and ErrInvalidArgument)
	BadVersion     uint64 // ErrUnsupportedVersion
	BadMAC1        uint64 // ErrBadMAC1
	CookieReplies  uint64 // ErrCookieRequired: cookie reply returned
	RateLimited    uint64 // ErrRateLimited
	DecryptFailed  uint64 // ErrDecrypt
	UnknownPeer    uint64 // ErrUnknownPeer
	PeerNotAllowed uint64 // ErrPeerNotAllowed
	Replays        uint64 // ErrReplay
	BadPayload     uint64 // ErrBadPayload
	Internal       uint64 // ErrInternal
	// ReplayEvicted counts unregistered keys whose timestamp was forgotten
	// before it expired because the table was full (a flood of fresh
	// keys); not an outcome of an initiation.
	ReplayEvicted uint64
}

type counters struct {
	initiations, sessions, malformed, badVersion, badMAC1, cookieReplies,
	rateLimited, decryptFailed, unknownPeer, peerNotAllowed, replays,
	badPayload, internal, replayEvicted atomic.Uint64
}

// Responder answers handshake initiations. It is the MMC side of the paper's
// mutual C-R.
//
// HandleInitiation is not safe for concurrent use (the SUDP endpoint
// serialises it, as the whole sans-I/O core); Stats may be called from any
// goroutine at any time.
type Responder struct {
	static        noise.DHKey
	prologue      []byte
	lookup        func([32]byte) (Peer, error)
	rand          io.Reader
	requireCookie bool
	loadThreshold float64

	mac1    *mac // keyed with our own mac1 key: verifies initiations
	cookies *cookieChecker
	load    loadMeter
	limiter *ratelimit.Limiter

	// greatest accepted timestamp per static key. Entries are added only
	// for registered peers the lookup accepted and only once a handshake
	// completed, so the map is bounded by the number of enrolled peers,
	// and a forged or refused initiation cannot grow it. Unregistered keys
	// (any fresh key, for enrolment) go to the bounded, expiring
	// unregistered table instead.
	timestamps   map[[32]byte]timestamp
	unregistered *replayCache

	stats counters
}

// NewResponder checks cfg and returns a Responder.
func NewResponder(cfg ResponderConfig) (*Responder, error) {
	if err := checkStatic(cfg.Static); err != nil {
		return nil, err
	}
	if cfg.ClusterID == "" || len(cfg.ClusterID) > MaxClusterIDLen {
		return nil, fmt.Errorf("%w: cluster id must be 1 to %d bytes", ErrInvalidArgument, MaxClusterIDLen)
	}
	if cfg.Lookup == nil {
		return nil, fmt.Errorf("%w: Lookup is required", ErrInvalidArgument)
	}
	if cfg.LoadThreshold < 0 {
		return nil, fmt.Errorf("%w: negative LoadThreshold", ErrInvalidArgument)
	}
	if cfg.LoadThreshold == 0 {
		cfg.LoadThreshold = DefaultLoadThreshold
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	r := &Responder{
		static:        cloneKey(cfg.Static),
		prologue:      prologue(cfg.ClusterID),
		lookup:        cfg.Lookup,
		rand:          cfg.Rand,
		requireCookie: cfg.RequireCookie,
		loadThreshold: float64(cfg.LoadThreshold),
		limiter:       ratelimit.New(cfg.RateLimit),
		timestamps:    make(map[[32]byte]timestamp),
		unregistered:  newReplayCache(cfg.MaxUnregistered, cfg.UnregisteredTTL),
	}
	k := labelledKey(LabelMAC1, r.static.Public)
	r.mac1 = newMAC(k[:])
	var err error
	if r.cookies, err = newCookieChecker(cfg.Rand, r.static.Public); err != nil {
		return nil, err
	}
	return r, nil
}

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (r *Responder) Stats() Stats {
	c := &r.stats
	return Stats{
		Initiations:    c.initiations.Load(),
		Sessions:       c.sessions.Load(),
		Malformed:      c.malformed.Load(),
		BadVersion:     c.badVersion.Load(),
		BadMAC1:        c.badMAC1.Load(),
		CookieReplies:  c.cookieReplies.Load(),
		RateLimited:    c.rateLimited.Load(),
		DecryptFailed:  c.decryptFailed.Load(),
		UnknownPeer:    c.unknownPeer.Load(),
		PeerNotAllowed: c.peerNotAllowed.Load(),
		Replays:        c.replays.Load(),
		BadPayload:     c.badPayload.Load(),
		Internal:       c.internal.Load(),
		ReplayEvicted:  c.replayEvicted.Load(),
	}
}

// ReplayEntries returns how many keys' timestamps the responder holds:
// registered peers, and unregistered keys still remembered. Like
// HandleInitiation it must not run concurrently with it.
func (r *Responder) ReplayEntries() (registered, unregistered int) {
	return len(r.timestamps), r.unregistered.len()
}

// HandleInitiation processes an initiation received at now from src. The
// caller chooses localCID, the non-zero connection id the new session will be
// known by on this side.
//
// Whenever reply is non-nil the caller sends it to src: it is either the
// response (err == nil, s != nil) or a cookie reply (err ==
// ErrCookieRequired). Every other error means: drop the packet, send nothing.
//
// The checks run cheapest first, so that the work an unauthenticated sender
// can cause grows only as it proves more: header, then mac1 (one HMAC:
// proves knowledge of our public key), then mac2 if we demand it (proves the
// source address), then the per-source rate limit, and only then the Noise
// Diffie-Hellman operations, the peer lookup and the replay check. No state
// is kept for a refused initiation; what changes before the Noise step are
// only the load meter, the cookie secret schedule, the rate limiter and the
// counters, none of which grows with the number of packets.
//
// The psk is verified by the initiator, not here: IKpsk2 mixes it in after
// the last message the responder reads. A session returned by this method is
// therefore unconfirmed: the initiator has proved its static key and its
// timestamp is fresh, but only the first data packet that decrypts under
// RecvKey proves it also holds the peer's K. The caller must not act on
// anything the session carries before that.
func (r *Responder) HandleInitiation(now time.Time, src netip.AddrPort, pkt []byte, localCID uint64) (reply []byte, s *Session, err error) {
	r.stats.initiations.Add(1)
	reply, s, err = r.handleInitiation(now, src, pkt, localCID)
	r.count(err)
	return reply, s, err
}

func (r *Responder) count(err error) {
	c := &r.stats
	switch {
	case err == nil:
		c.sessions.Add(1)
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrInvalidArgument):
		c.malformed.Add(1)
	case errors.Is(err, ErrUnsupportedVersion):
		c.badVersion.Add(1)
	case errors.Is(err, ErrBadMAC1):
		c.badMAC1.Add(1)
	case errors.Is(err, ErrCookieRequired):
		c.cookieReplies.Add(1)
	case errors.Is(err, ErrRateLimited):
		c.rateLimited.Add(1)
	case errors.Is(err, ErrDecrypt):
		c.decryptFailed.Add(1)
	case errors.Is(err, ErrUnknownPeer):
		c.unknownPeer.Add(1)
	case errors.Is(err, ErrPeerNotAllowed):
		c.peerNotAllowed.Add(1)
	case errors.Is(err, ErrReplay):
		c.replays.Add(1)
	case errors.Is(err, ErrBadPayload):
		c.badPayload.Add(1)
	default:
		c.internal.Add(1)
	}
}

func (r *Responder) handleInitiation(now time.Time, src netip.AddrPort, pkt []byte, localCID uint64) ([]byte, *Session, error) {
	if localCID == 0 || !src.IsValid() {
		return nil, nil, ErrInvalidArgument
	}
	if err := checkHeader(pkt, TypeInitiation, InitiationSize); err != nil {
		return nil, nil, err
	}
	remoteCID, ok := cid(pkt[initSenderOffset:])
	if !ok {
		return nil, nil, ErrMalformed
	}
	if !r.mac1.verify(pkt[initMAC1Offset:initMAC2Offset], pkt[:initMAC1Offset]) {
		return nil, nil, ErrBadMAC1
	}

	// Under load (or always, if configured) the source must prove its
	// address before costing us a Diffie-Hellman. A mac2 that is present is
	// checked even when not demanded: every bit of an accepted initiation
	// is then authenticated, and an initiator whose cookie no longer fits
	// (its address changed) gets a fresh one instead of a silent pass.
	underLoad := r.load.observe(now) > r.loadThreshold
	if r.requireCookie || underLoad || !isZero(pkt[initMAC2Offset:]) {
		ok, err := r.cookies.validMAC2(now, src, pkt)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			reply, err := r.cookies.reply(now, src, pkt)
			if err != nil {
				return nil, nil, err
			}
			return reply, nil, ErrCookieRequired
		}
	}

	if !r.limiter.Allow(now, src.Addr()) {
		return nil, nil, ErrRateLimited
	}

	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:           cipherSuite,
		Random:                r.rand,
		Pattern:               noise.HandshakeIK,
		Initiator:             false,
		Prologue:              r.prologue,
		PresharedKeyPlacement: 2,
		StaticKeypair:         r.static,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInternal, err)
	}
	var tsBuf [TimestampLen]byte
	payload, _, _, err := hs.ReadMessage(tsBuf[:0], pkt[initNoiseOffset:initMAC1Offset])
	if err != nil {
		return nil, nil, ErrDecrypt
	}
	var peerStatic [32]byte
	copy(peerStatic[:], hs.PeerStatic())

	peer, err := r.lookup(peerStatic)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrUnknownPeer, err)
	}
	// Whatever happens next, our copy of the peer's K is wiped on return.
	defer clear(peer.PSK[:])
	if !peer.Allowed || isZero(peer.PSK[:]) {
		return nil, nil, &PeerError{Peer: peerStatic, Err: ErrPeerNotAllowed}
	}

	ts, ok := parseTimestamp(payload)
	if !ok {
		return nil, nil, ErrBadPayload
	}
	last, seen := r.timestamps[peerStatic]
	if peer.Unregistered {
		last, seen = r.unregistered.get(now, peerStatic)
	}
	if seen && !ts.after(last) {
		return nil, nil, &PeerError{Peer: peerStatic, Err: ErrReplay}
	}
	if floor, ok := timestampOf(peer.NotAfter); ok && !peer.NotAfter.IsZero() && !ts.after(floor) {
		return nil, nil, &PeerError{Peer: peerStatic, Err: ErrReplay}
	}

	if err := hs.SetPresharedKey(peer.PSK[:]); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInternal, err)
	}
	var respPayload [RespPayloadLen]byte
	binary.BigEndian.PutUint64(respPayload[:], uint64(now.UnixNano()))
	respPayload[8] = peer.LoginState

	out := make([]byte, respNoiseOffset, ResponseSize)
	putHeader(out, TypeResponse)
	binary.BigEndian.PutUint64(out[respSenderOffset:], localCID)
	binary.BigEndian.PutUint64(out[respReceiverOffset:], remoteCID)
	out, cs1, cs2, err := hs.WriteMessage(out, respPayload[:])
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInternal, err)
	}
	clear(hs.LocalEphemeral().Private)
	if cs1 == nil || len(out) != respMAC1Offset {
		return nil, nil, fmt.Errorf("%w: unexpected Noise output", ErrInternal)
	}
	// mac1 is keyed with the initiator's public key: it lets the initiator
	// drop junk aimed at its connection id with one HMAC. mac2 stays zero:
	// the initiator never sends us a cookie to use.
	k := labelledKey(LabelMAC1, peerStatic[:])
	out = out[:ResponseSize]
	newMAC(k[:]).compute(out[respMAC1Offset:], out[:respMAC1Offset])
	clear(out[respMAC2Offset:])

	if peer.Unregistered {
		if r.unregistered.put(now, peerStatic, ts) {
			r.stats.replayEvicted.Add(1)
		}
	} else {
		r.timestamps[peerStatic] = ts
	}

	sess := &Session{
		LocalCID:   localCID,
		RemoteCID:  remoteCID,
		PeerStatic: peerStatic,
		Peer:       peer,
		SendKey:    cs2.UnsafeKey(),
		RecvKey:    cs1.UnsafeKey(),
		PeerTime:   ts.time(),
		LoginState: peer.LoginState,
	}
	sess.Peer.PSK = [32]byte{} // the session never carries the long-term key
	copy(sess.HandshakeHash[:], hs.ChannelBinding())
	wipeCipherStates(cs1, cs2)
	return out, sess, nil
}
