package core

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/flynn/noise"
	"golang.org/x/crypto/curve25519"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// The re-handshake (docs/protocol.md §6.6; docs/security.md "Session keys, re-keying, limits"): every
// RehandshakeInterval, and whenever the send key nears its hard limit, one
// end runs a Noise KK exchange with the other over their static keys. Its
// output replaces both traffic secrets — the next generation of each
// direction comes from the fresh Diffie–Hellman, not from the hash chain —
// so a leaked traffic key stops opening packets at the next re-handshake,
// and a holder of one cannot step in between (it lacks both statics).
//
// Re-handshake messages are their own packet type, not frames: after an
// outage longer than KeyRejectAfter every traffic key is past its limit and
// protects nothing, yet the connection must rekey when the peer is heard
// again. The KK messages authenticate themselves; the Noise prologue binds
// them to this connection (handshake hash, both CIDs) and to an epoch
// counter, so a replayed message never resets keys.

// rekeyLabel starts the re-handshake's Noise prologue.
const rekeyLabel = "ferry-sudp-rekey\x01"

// rekeySuite is the original handshake's suite: X25519, AES-256-GCM, SHA-256.
var rekeySuite = noise.NewCipherSuite(noise.DH25519, noise.CipherAESGCM, noise.HashSHA256)

// Retransmission of an unanswered initiation: from twice the PTO, doubling,
// up to rekeyRetryMax (so a peer that comes back from a long outage is
// answered within that); the idle timeout ends the attempts.
const (
	rekeyRetryMin = 200 * time.Millisecond
	rekeyRetryMax = 5 * time.Second
	// The Noise work of a re-handshake message (two X25519 operations)
	// is rate-limited per connection: a peer sends one per retransmission
	// interval at most, a replaying on-path attacker gets no more.
	rekeyBurst = 8
	rekeyRate  = 4 // per second
)

// rekeyState is a connection's re-handshake state: at most one initiation of
// ours and one answered initiation of the peer's, and the keys they produced
// until they are in use. Everything in it is bounded.
type rekeyState struct {
	static noise.DHKey // our static key pair; empty: re-handshakes disabled
	epoch  uint64      // newest epoch begun with the peer (answered or completed)
	won    bool        // we initiated epoch (the peer answered ours)
	last   time.Time   // when the newest epoch completed, or the connection did

	// Our initiation of epoch+1, retransmitted until answered.
	hs          *noise.HandshakeState
	initPkt     []byte
	initTo      netip.AddrPort
	initDue     bool
	initNext    time.Time
	initBackoff time.Duration

	// Our response to the peer's initiation of epoch, sent again for a
	// retransmitted initiation until the peer uses the new keys.
	respPkt  []byte
	respInit []byte
	respTo   netip.AddrPort
	respDue  bool

	sendPending *keySet // the send key to switch to at the next packet
	sendHeld    *keySet // responder: becomes sendPending once the peer proves it has the response
	recvPending *keySet // the peer's next send key: tried for what the current keys do not open

	// Noise work tokens: one bucket for messages from the validated
	// path, one for all other addresses, so that forgeries from elsewhere
	// (anyone who saw the connection id can send them) cannot starve the
	// peer's own messages. (An attacker who also spoofs the peer's exact
	// address can; it could as well drop them if it were on the path.)
	tokens, pathTokens     float64
	tokensAt, pathTokensAt time.Time
	// scratch keeps a packet's ciphertext while a second key is tried.
	scratch []byte
}

// enableRehandshake gives the connection the local static key pair the
// re-handshake needs (the endpoint's). Without it the connection never
// re-handshakes.
func (c *Conn) enableRehandshake(static noise.DHKey) {
	c.rk.static = static
	c.rk.tokens, c.rk.pathTokens = rekeyBurst, rekeyBurst
}

func (c *Conn) rekeyEnabled() bool {
	return len(c.rk.static.Private) != 0 && c.state == stateEstablished && c.confirmedForSend()
}

// rekeyPrologue binds a re-handshake to this connection and epoch.
func (c *Conn) rekeyPrologue(epoch uint64) []byte {
	clientCID, serverCID := c.localCID, c.remoteCID
	if !c.client {
		clientCID, serverCID = serverCID, clientCID
	}
	p := make([]byte, 0, len(rekeyLabel)+32+3*8)
	p = append(p, rekeyLabel...)
	p = append(p, c.session.HandshakeHash[:]...)
	p = binary.BigEndian.AppendUint64(p, clientCID)
	p = binary.BigEndian.AppendUint64(p, serverCID)
	return binary.BigEndian.AppendUint64(p, epoch)
}

func (c *Conn) rekeyHandshake(initiator bool, epoch uint64) (*noise.HandshakeState, error) {
	return noise.NewHandshakeState(noise.Config{
		CipherSuite:   rekeySuite,
		Random:        c.rand,
		Pattern:       noise.HandshakeKK,
		Initiator:     initiator,
		Prologue:      c.rekeyPrologue(epoch),
		StaticKeypair: c.rk.static,
		PeerStatic:    c.session.PeerStatic[:],
	})
}

// rekeyEpochGen is the generation number of the keys an epoch produces:
// both ends know it exactly, however many hash-chain updates either
// direction made before (KEY_UPDATE frames carry it).
func rekeyEpochGen(epoch uint64) uint64 { return epoch << 32 }

// rekeyAllow takes a token for the Noise work of one message from `from`.
func (c *Conn) rekeyAllow(now time.Time, from netip.AddrPort) bool {
	r := &c.rk
	tokens, at := &r.tokens, &r.tokensAt
	if from == c.path.addr {
		tokens, at = &r.pathTokens, &r.pathTokensAt
	}
	if !at.IsZero() {
		*tokens = min(rekeyBurst, *tokens+now.Sub(*at).Seconds()*rekeyRate)
	}
	*at = now
	if *tokens < 1 {
		c.stats.RehandshakeLimited++
		return false
	}
	*tokens--
	return true
}

// sendKeyExpired reports whether the send key is past its hard limit (age
// or packet count): nothing more may be protected with it.
func (c *Conn) sendKeyExpired(now time.Time) bool {
	k := c.sendKey
	if k == nil {
		return false
	}
	if now.Sub(c.sendKeyStart) >= c.cfg.KeyRejectAfter || c.epochExpired(now) {
		return true
	}
	return k.used && c.nextPN-k.firstPN >= max(2*c.cfg.KeyUpdatePackets, 1<<23)
}

// epochExpired reports whether the newest Diffie–Hellman (the handshake or
// the last re-handshake) is older than RehandshakeInterval + KeyRejectAfter:
// every key descending from it by the hash chain is then past its limit.
// Without this, an on-path attacker who holds a leaked traffic key could
// drop the re-handshake messages (their type byte is visible) and keep
// following the hash chain; with it, traffic stops instead, as WireGuard's
// does at RejectAfterTime.
func (c *Conn) epochExpired(now time.Time) bool {
	iv := c.cfg.RehandshakeInterval
	if iv <= 0 || len(c.rk.static.Private) == 0 {
		return false
	}
	return now.Sub(c.rk.last) >= iv+c.cfg.KeyRejectAfter
}

// checkKeyExpiry notes when the send key reaches its hard limit. A
// connection that cannot re-handshake (no static key) closes then, as it
// has no other way to a fresh key.
func (c *Conn) checkKeyExpiry(now time.Time) {
	if c.keyExpired || !c.sendKeyExpired(now) {
		return
	}
	if len(c.rk.static.Private) == 0 {
		c.closeLocal(now, CodeKeyExpired, "key generation expired before the peer acknowledged it", nil)
		return
	}
	c.keyExpired = true
	c.stats.KeyExpiredWaits++
}

// rekeyInProgress: an initiation of ours awaits its answer, or the peer's
// awaits proof that it arrived.
func (c *Conn) rekeyInProgress() bool { return c.rk.hs != nil || c.rk.respPkt != nil }

// rekeyDueAt is when the next re-handshake should start: the periodic
// interval, or halfway between the send key's update and its hard limit
// (the update is stuck: the peer acknowledges nothing). Zero: none.
func (c *Conn) rekeyDueAt() time.Time {
	if !c.rekeyEnabled() || c.rekeyInProgress() || c.rk.sendPending != nil {
		return time.Time{}
	}
	near := c.sendKeyStart.Add((c.cfg.KeyUpdateInterval + c.cfg.KeyRejectAfter) / 2)
	if iv := c.cfg.RehandshakeInterval; iv > 0 {
		if !c.client {
			// The periodic one is the client's to start; the server's
			// comes a quarter interval later, as a backstop, so the two
			// rarely collide (they would at every interval otherwise:
			// both count from the same completion).
			iv += iv / 4
		}
		if t := c.rk.last.Add(iv); t.Before(near) {
			return t
		}
	}
	return near
}

// maybeStartRekey starts an initiation when one is due.
func (c *Conn) maybeStartRekey(now time.Time) {
	if t := c.rekeyDueAt(); t.IsZero() || now.Before(t) {
		return
	}
	r := &c.rk
	epoch := r.epoch + 1
	hs, err := c.rekeyHandshake(true, epoch)
	if err != nil {
		return
	}
	msg, _, _, err := hs.WriteMessage(nil, nil)
	if err != nil || len(msg) != wire.RekeyNoiseSize {
		clear(hs.LocalEphemeral().Private)
		return
	}
	r.hs = hs
	r.initPkt = wire.AppendRekey(r.initPkt[:0], wire.RekeyHeader{Kind: wire.RekeyInitiation, DstCID: c.remoteCID, Epoch: epoch}, msg)
	r.initTo = c.path.addr
	r.initDue = true
	r.initBackoff = min(max(2*c.rec.pto(), rekeyRetryMin), rekeyRetryMax)
	r.initNext = now.Add(r.initBackoff)
	c.stats.RehandshakesStarted++
}

// rekeyTimeout retransmits an unanswered initiation.
func (c *Conn) rekeyTimeout(now time.Time) {
	r := &c.rk
	if r.hs != nil && !now.Before(r.initNext) {
		r.initDue = true
		r.initTo = c.path.addr
		r.initBackoff = min(2*r.initBackoff, rekeyRetryMax)
		r.initNext = now.Add(r.initBackoff)
	}
	c.maybeStartRekey(now)
}

// dropRekeyInit abandons our initiation and wipes its ephemeral key.
func (c *Conn) dropRekeyInit() {
	r := &c.rk
	if r.hs != nil {
		clear(r.hs.LocalEphemeral().Private)
		r.hs = nil
	}
	r.initPkt = r.initPkt[:0]
	r.initDue = false
}

// setPending installs an epoch's keys as the ones to move to, wiping any
// older epoch's that were never used.
func (c *Conn) setPending(send, held, recv *keySet) {
	r := &c.rk
	r.sendPending.zero()
	r.sendHeld.zero()
	r.recvPending.zero()
	r.sendPending, r.sendHeld, r.recvPending = send, held, recv
}

// handleRekey processes a re-handshake message.
func (c *Conn) handleRekey(now time.Time, from netip.AddrPort, pkt []byte) {
	if !c.rekeyEnabled() {
		c.stats.DroppedMalformed++
		return
	}
	h, msg, err := wire.ParseRekey(pkt)
	if err != nil || h.DstCID != c.localCID {
		c.stats.DroppedMalformed++
		return
	}
	if h.Kind == wire.RekeyInitiation {
		c.onRekeyInit(now, from, h.Epoch, pkt, msg)
	} else {
		c.onRekeyResponse(now, from, h.Epoch, msg)
	}
}

func (c *Conn) onRekeyInit(now time.Time, from netip.AddrPort, epoch uint64, pkt, msg []byte) {
	r := &c.rk
	if epoch == r.epoch && r.respPkt != nil && bytes.Equal(pkt, r.respInit) {
		// A retransmission: our response was lost (or this is a replay,
		// which earns the same 66 bytes back and changes nothing). The
		// answer goes where the initiation came from (the peer may have
		// moved during an outage), so it is rate-limited like the Noise
		// work: replays from spoofed addresses must not turn us into a
		// reflector.
		if c.rekeyAllow(now, from) {
			r.respDue, r.respTo = true, from
		}
		return
	}
	switch {
	case epoch == r.epoch && r.won:
		// The peer's initiation that crossed ours, arriving after ours
		// completed (or a replay of it): no effect either way.
		c.stats.RehandshakeCollisions++
		return
	case epoch <= r.epoch:
		// An old epoch's message, replayed or late: it must not reset
		// keys.
		c.stats.RehandshakeReplays++
		return
	case epoch > r.epoch+1:
		// Not something the peer sends: epochs advance one at a time.
		c.stats.RehandshakeRejected++
		return
	}
	if !c.rekeyAllow(now, from) {
		return
	}
	hs, err := c.rekeyHandshake(false, epoch)
	if err != nil {
		return
	}
	if _, _, _, err := hs.ReadMessage(nil, msg); err != nil {
		// Not from the peer's static key, or not for this connection.
		c.stats.RehandshakeRejected++
		return
	}
	if r.hs != nil {
		// Both ends initiated this epoch: the connection's client wins.
		c.stats.RehandshakeCollisions++
		if c.client {
			// Keep ours; send it where the peer is now (it may have
			// moved during an outage that made both of us rekey).
			r.initDue, r.initTo = true, from
			return
		}
		c.dropRekeyInit()
	}
	out, cs1, cs2, err := hs.WriteMessage(nil, nil)
	clear(hs.LocalEphemeral().Private)
	if err != nil || cs1 == nil || len(out) != wire.RekeyNoiseSize {
		return
	}
	recv, send, err := splitKeys(cs1, cs2, epoch)
	if err != nil {
		return
	}
	// Our sending moves only once the initiator proves it has the
	// response (a packet under its new key); its sending may move at once.
	c.setPending(nil, send, recv)
	r.epoch, r.won = epoch, false
	r.respPkt = wire.AppendRekey(r.respPkt[:0], wire.RekeyHeader{Kind: wire.RekeyResponse, DstCID: c.remoteCID, Epoch: epoch}, out)
	r.respInit = append(r.respInit[:0], pkt...)
	r.respTo, r.respDue = from, true
	c.lastRecv = now
}

func (c *Conn) onRekeyResponse(now time.Time, from netip.AddrPort, epoch uint64, msg []byte) {
	r := &c.rk
	if r.hs == nil || epoch != r.epoch+1 {
		c.stats.RehandshakeReplays++
		return
	}
	if !c.rekeyAllow(now, from) {
		return
	}
	// flynn/noise rolls its state back after a failed decryption but not
	// after a failed Diffie–Hellman: a forged response with a low-order
	// ephemeral would leave our initiation unable to accept the genuine
	// one. The ee computation fails exactly then, so it is checked first.
	ee, err := curve25519.X25519(r.hs.LocalEphemeral().Private, msg[:32])
	clear(ee)
	if err != nil {
		c.stats.RehandshakeRejected++
		return
	}
	_, cs1, cs2, err := r.hs.ReadMessage(nil, msg)
	if err != nil || cs1 == nil {
		// Noise rolled its state back: the real response still completes.
		c.stats.RehandshakeRejected++
		return
	}
	c.dropRekeyInit()
	send, recv, err := splitKeys(cs1, cs2, epoch)
	if err != nil {
		return
	}
	c.setPending(send, nil, recv)
	r.epoch, r.won = epoch, true
	r.last = now
	r.respPkt, r.respInit, r.respDue = nil, nil, false
	c.stats.Rehandshakes++
	c.lastRecv = now
	// Use the new key at once, so the responder learns we have it.
	c.pingPending = true
}

// splitKeys turns the Noise split (initiator→responder, responder→initiator)
// into key sets and wipes it.
func splitKeys(cs1, cs2 *noise.CipherState, epoch uint64) (i2r, r2i *keySet, err error) {
	a, b := cs1.UnsafeKey(), cs2.UnsafeKey()
	*cs1, *cs2 = noise.CipherState{}, noise.CipherState{}
	defer clear(a[:])
	defer clear(b[:])
	if i2r, err = newKeySet(a, rekeyEpochGen(epoch)); err != nil {
		return nil, nil, err
	}
	if r2i, err = newKeySet(b, rekeyEpochGen(epoch)); err != nil {
		i2r.zero()
		return nil, nil, err
	}
	return i2r, r2i, nil
}

// onRekeyConfirmed: a packet opened under the peer's new key. On the
// responder side that proves the initiator has the response: the epoch is
// complete, and our sending may move too.
func (c *Conn) onRekeyConfirmed(now time.Time) {
	r := &c.rk
	if r.sendHeld == nil {
		return
	}
	r.sendPending, r.sendHeld = r.sendHeld, nil
	r.respPkt, r.respInit, r.respDue = nil, nil, false
	r.last = now
	c.stats.Rehandshakes++
}

// switchToRekeyed moves sending to the newest epoch's key.
func (c *Conn) switchToRekeyed(now time.Time) {
	k := c.rk.sendPending
	c.rk.sendPending = nil
	c.sendKey.zero()
	c.sendKey = k
	c.sendKeyStart = now
	c.sendKeyBytes = 0
	c.sendGenAcked = false
	c.keyUpdateFrame = true
}

// pollRekey returns a re-handshake message to send, if one is due. They
// are sent whatever the age of the traffic keys: they need none.
func (c *Conn) pollRekey(buf []byte) (int, netip.AddrPort, bool) {
	r := &c.rk
	var pkt []byte
	var to netip.AddrPort
	switch {
	case r.respDue:
		r.respDue = false
		pkt, to = r.respPkt, r.respTo
	case r.initDue && r.hs != nil:
		r.initDue = false
		pkt, to = r.initPkt, r.initTo
	default:
		return 0, to, false
	}
	if len(pkt) == 0 || len(buf) < len(pkt) {
		return 0, to, false
	}
	n := copy(buf, pkt)
	if to == c.path.addr {
		c.path.sentBytes += uint64(n)
	}
	c.stats.PacketsSent++
	c.stats.BytesSent += uint64(n)
	return n, to, true
}

// forgetRekey wipes the re-handshake's secrets.
func (c *Conn) forgetRekey() {
	c.dropRekeyInit()
	c.setPending(nil, nil, nil)
}
