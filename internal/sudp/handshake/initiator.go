package handshake

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/flynn/noise"
	"golang.org/x/crypto/chacha20poly1305"
)

// InitiatorConfig configures an Initiator.
type InitiatorConfig struct {
	// Static is the initiator's X25519 key pair; the responder's lookup
	// must know its public half.
	Static noise.DHKey
	// RemoteStatic is the responder's static public key, known in advance.
	RemoteStatic [32]byte
	// PSK is the shared key K (the Noise psk). It must not be all zero.
	PSK [32]byte
	// ClusterID is bound into the prologue; it must equal the responder's.
	ClusterID string
	// Rand supplies ephemeral keys; nil means crypto/rand.
	Rand io.Reader
}

// Initiator runs the agent side of the handshake with one responder. It is
// not safe for concurrent use.
//
// Each call to Initiation starts a new attempt with a fresh ephemeral key and
// forgets the previous one, as WireGuard does on retry: only a response to
// the latest initiation is accepted.
type Initiator struct {
	static   noise.DHKey
	remote   [32]byte
	psk      [32]byte
	prologue []byte
	rand     io.Reader

	mac1Remote *mac // keyed with the responder's mac1 key: makes initiations
	mac1Local  *mac // keyed with ours: verifies responses
	jar        cookieJar

	lastTS  timestamp
	haveTS  bool
	pending *pending
}

// pending is the initiation in flight.
type pending struct {
	hs       *noise.HandshakeState
	localCID uint64
	sentAt   time.Time
	// ephemeral is the private ephemeral key and msg the Noise message as
	// sent: enough to rebuild hs after a forged response left it in an
	// unknown state (see rebuild).
	ephemeral [DHLen]byte
	payload   [TimestampLen]byte
	msg       [noiseInitiationLen]byte
	// mac1 of the initiation: the associated data of its cookie reply.
	mac1 [MACLen]byte
	// cookieOpen is true until one cookie reply for this initiation has
	// been accepted; a second one (a replay) is refused.
	cookieOpen bool
}

func (p *pending) wipe() {
	if p == nil {
		return
	}
	clear(p.ephemeral[:])
	if p.hs != nil {
		clear(p.hs.LocalEphemeral().Private)
	}
	p.hs = nil
}

// NewInitiator checks cfg and returns an Initiator.
func NewInitiator(cfg InitiatorConfig) (*Initiator, error) {
	if err := checkStatic(cfg.Static); err != nil {
		return nil, err
	}
	if isZero(cfg.RemoteStatic[:]) {
		return nil, fmt.Errorf("%w: RemoteStatic is required", ErrInvalidArgument)
	}
	if isZero(cfg.PSK[:]) {
		return nil, fmt.Errorf("%w: PSK must not be all zero", ErrInvalidArgument)
	}
	if cfg.ClusterID == "" || len(cfg.ClusterID) > MaxClusterIDLen {
		return nil, fmt.Errorf("%w: cluster id must be 1 to %d bytes", ErrInvalidArgument, MaxClusterIDLen)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	i := &Initiator{
		static:   cloneKey(cfg.Static),
		remote:   cfg.RemoteStatic,
		psk:      cfg.PSK,
		prologue: prologue(cfg.ClusterID),
		rand:     cfg.Rand,
	}
	k := labelledKey(LabelMAC1, i.remote[:])
	i.mac1Remote = newMAC(k[:])
	k = labelledKey(LabelMAC1, i.static.Public)
	i.mac1Local = newMAC(k[:])
	k = labelledKey(LabelCookie, i.remote[:])
	box, err := chacha20poly1305.NewX(k[:])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInternal, err)
	}
	i.jar.box = box
	return i, nil
}

// Initiation returns a new initiation to send to the responder. localCID is
// the non-zero connection id this side will be known by. The timestamp is
// taken from now, and made strictly greater than the last one sent, so that a
// clock stepping back does not get our own retries refused as replays.
func (i *Initiator) Initiation(now time.Time, localCID uint64) ([]byte, error) {
	if localCID == 0 {
		return nil, ErrInvalidArgument
	}
	ts, ok := timestampOf(now)
	if !ok {
		return nil, fmt.Errorf("%w: clock before 1970", ErrInvalidArgument)
	}
	if i.haveTS && !ts.after(i.lastTS) {
		ts = i.lastTS.next()
	}

	p := &pending{localCID: localCID, sentAt: now, cookieOpen: true}
	if _, err := io.ReadFull(i.rand, p.ephemeral[:]); err != nil {
		return nil, fmt.Errorf("%w: ephemeral key: %v", ErrInternal, err)
	}
	ts.put(p.payload[:])
	hs, msg, err := i.newHandshake(p)
	if err != nil {
		p.wipe()
		return nil, err
	}
	p.hs = hs
	copy(p.msg[:], msg)

	pkt := make([]byte, InitiationSize)
	putHeader(pkt, TypeInitiation)
	binary.BigEndian.PutUint64(pkt[initSenderOffset:], localCID)
	copy(pkt[initNoiseOffset:], msg)
	i.mac1Remote.compute(pkt[initMAC1Offset:], pkt[:initMAC1Offset])
	copy(p.mac1[:], pkt[initMAC1Offset:initMAC2Offset])
	if ck, ok := i.jar.fresh(now); ok {
		newMAC(ck).compute(pkt[initMAC2Offset:], pkt[:initMAC2Offset])
	}

	i.pending.wipe()
	i.pending = p
	i.lastTS, i.haveTS = ts, true
	return pkt, nil
}

// newHandshake starts a Noise IKpsk2 handshake and writes message 1. The
// ephemeral key comes from p.ephemeral rather than from i.rand directly, so
// that the same state can be rebuilt exactly.
func (i *Initiator) newHandshake(p *pending) (*noise.HandshakeState, []byte, error) {
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:           cipherSuite,
		Random:                bytes.NewReader(p.ephemeral[:]),
		Pattern:               noise.HandshakeIK,
		Initiator:             true,
		Prologue:              i.prologue,
		PresharedKey:          i.psk[:],
		PresharedKeyPlacement: 2,
		StaticKeypair:         i.static,
		PeerStatic:            i.remote[:],
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInternal, err)
	}
	msg, _, _, err := hs.WriteMessage(make([]byte, 0, noiseInitiationLen), p.payload[:])
	if err != nil {
		// The responder's key is a low-order point, or similar.
		return nil, nil, fmt.Errorf("%w: %v", ErrInternal, err)
	}
	if len(msg) != noiseInitiationLen {
		return nil, nil, fmt.Errorf("%w: unexpected Noise output", ErrInternal)
	}
	return hs, msg, nil
}

// rebuild replaces the pending handshake state after a failed ReadMessage.
// flynn/noise does not roll every failure back (a Diffie-Hellman error leaves
// the chaining key advanced), so without this a single forged response that
// passes mac1 (the mac1 key is derived from our public key) could make us
// refuse the genuine response that follows. WireGuard gets the same
// robustness by working on copies of its state.
func (i *Initiator) rebuild() {
	p := i.pending
	hs, msg, err := i.newHandshake(p)
	if err != nil || !bytes.Equal(msg, p.msg[:]) {
		// Cannot happen with a deterministic Noise implementation; if
		// it does, give up this attempt rather than continue unsure.
		p.wipe()
		i.pending = nil
		return
	}
	clear(p.hs.LocalEphemeral().Private)
	p.hs = hs
}

// HandleCookieReply takes a cookie reply to the initiation in flight and keeps
// the cookie for the next initiations (it does not resend by itself: the
// caller retries with Initiation, usually at once). The reply must name our
// connection id and decrypt with the mac1 of that initiation as associated
// data; only one reply per initiation is accepted.
//
// The handshake in flight is kept: a cookie reply can be forged by anyone who
// saw the initiation (its key is derived from public values), so it must not
// be able to cancel anything.
func (i *Initiator) HandleCookieReply(now time.Time, pkt []byte) error {
	if err := checkHeader(pkt, TypeCookieReply, CookieReplySize); err != nil {
		return err
	}
	receiver, ok := cid(pkt[cookieReceiverOffset:])
	if !ok {
		return ErrMalformed
	}
	p := i.pending
	if p == nil || !p.cookieOpen {
		return ErrNoPendingHandshake
	}
	if receiver != p.localCID {
		return ErrWrongReceiver
	}
	var ck [CookieLen]byte
	_, err := i.jar.box.Open(ck[:0], pkt[cookieNonceOffset:cookieBoxOffset], pkt[cookieBoxOffset:], p.mac1[:])
	if err != nil {
		return ErrDecrypt
	}
	i.jar.cookie, i.jar.set, i.jar.have = ck, now, true
	p.cookieOpen = false
	return nil
}

// HandleResponse completes the handshake in flight with the responder's
// response, received at now. Checks: header, our connection id, mac1 (keyed
// with our own public key), a zero mac2, then Noise message 2, which
// authenticates the responder's static key and proves it holds the same psk.
// A wrong psk fails here with ErrDecrypt (a wrong cluster id or version
// already failed at the responder, which then sends nothing). A response that
// fails leaves the attempt open: it may have been forged, and the genuine one
// may still arrive.
//
// On success the in-flight state is consumed: the same response cannot
// complete a second session.
func (i *Initiator) HandleResponse(now time.Time, pkt []byte) (*Session, error) {
	if err := checkHeader(pkt, TypeResponse, ResponseSize); err != nil {
		return nil, err
	}
	remoteCID, ok1 := cid(pkt[respSenderOffset:])
	receiver, ok2 := cid(pkt[respReceiverOffset:])
	if !ok1 || !ok2 {
		return nil, ErrMalformed
	}
	p := i.pending
	if p == nil {
		return nil, ErrNoPendingHandshake
	}
	if receiver != p.localCID {
		return nil, ErrWrongReceiver
	}
	if !i.mac1Local.verify(pkt[respMAC1Offset:respMAC2Offset], pkt[:respMAC1Offset]) {
		return nil, ErrBadMAC1
	}
	if !isZero(pkt[respMAC2Offset:]) {
		return nil, ErrBadMAC2
	}

	var buf [RespPayloadLen]byte
	payload, cs1, cs2, err := p.hs.ReadMessage(buf[:0], pkt[respNoiseOffset:respMAC1Offset])
	if err != nil {
		i.rebuild()
		return nil, ErrDecrypt
	}
	// From here the handshake is complete and its state used up, whatever
	// the payload says.
	defer func() {
		wipeCipherStates(cs1, cs2)
		p.wipe()
		i.pending = nil
	}()
	if cs1 == nil || len(payload) != RespPayloadLen {
		return nil, fmt.Errorf("%w: unexpected Noise output", ErrInternal)
	}
	if !isZero(payload[respPayloadReservedOffset:]) {
		return nil, ErrBadPayload
	}

	sess := &Session{
		LocalCID:   p.localCID,
		RemoteCID:  remoteCID,
		PeerStatic: i.remote,
		SendKey:    cs1.UnsafeKey(),
		RecvKey:    cs2.UnsafeKey(),
		PeerTime:   time.Unix(0, int64(binary.BigEndian.Uint64(payload))),
		RTT:        max(now.Sub(p.sentAt), 0),
		LoginState: payload[8],
	}
	copy(sess.HandshakeHash[:], p.hs.ChannelBinding())
	return sess, nil
}
