package core

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Stateless reset (docs/protocol.md §4.1, after RFC 9000 §10.3). An
// endpoint that crashed or restarted has lost its connections; its peers
// would notice only at their idle timeout. Instead, an endpoint answers a
// data packet for a connection id it does not know with a stateless reset
// carrying that id's token, which only it can compute (an HMAC under a key
// derived from its static private key, so a restart with the same key
// yields the same tokens) and which the peer learned inside the encrypted
// connection (a RESET_TOKEN frame). The peer compares in constant time and
// closes at once with ErrStatelessReset.
//
// An off-path attacker never sees a token (it travels encrypted, and a
// reset is only sent for ids the endpoint does not have). A reset is
// always smaller than the packet that triggered it, so two endpoints that
// both lost their state cannot reset each other forever, and no reset
// amplifies; they are also rate-limited per source and in total.

// ErrStatelessReset ends a connection whose peer answered with a stateless
// reset: the peer no longer has the connection (it restarted).
var ErrStatelessReset = errors.New("sudp: stateless reset: the peer lost the connection")

// resetKeyInfo separates the reset key from every other use of the static
// key.
const resetKeyInfo = "ferry-sudp stateless reset token key v1"

// Stateless reset rate limits: per source address (the ratelimit package's
// granularity) and over all sources. A peer that lost its state needs one
// reset per connection; these bound what a flood of junk data packets can
// make us send.
const (
	resetRatePerSource  = 10
	resetBurstPerSource = 10
	resetRateTotal      = 200 // resets per second over all sources
	resetBurstTotal     = 50
	// resetSizeSpread varies a reset's length (above MinResetSize) so
	// that resets do not all have one tell-tale size.
	resetSizeSpread = 24
)

// resetter issues stateless resets for one endpoint.
type resetter struct {
	key     [32]byte
	limiter *ratelimit.Limiter
	tokens  float64 // global bucket
	last    time.Time
}

func newResetter(staticPrivate []byte) (*resetter, error) {
	k, err := hkdf.Key(sha256.New, staticPrivate, nil, resetKeyInfo, 32)
	if err != nil {
		return nil, err
	}
	r := &resetter{
		limiter: ratelimit.New(ratelimit.Config{Rate: resetRatePerSource, Burst: resetBurstPerSource}),
		tokens:  resetBurstTotal,
	}
	copy(r.key[:], k)
	clear(k)
	return r, nil
}

// token is the stateless reset token of one of our connection ids.
func (r *resetter) token(cid uint64) [wire.ResetTokenLen]byte {
	m := hmac.New(sha256.New, r.key[:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], cid)
	m.Write(b[:])
	var t [wire.ResetTokenLen]byte
	copy(t[:], m.Sum(nil))
	return t
}

func (r *resetter) allow(now time.Time, src netip.Addr) bool {
	if !r.last.IsZero() {
		r.tokens = min(resetBurstTotal, r.tokens+now.Sub(r.last).Seconds()*resetRateTotal)
	}
	r.last = now
	if r.tokens < 1 || !r.limiter.Allow(now, src) {
		return false
	}
	r.tokens--
	return true
}

// StatelessReset answers a datagram that Route found no connection for.
// It returns the reset to send back to from, or nil: only a well-formed
// long-header data packet longer than the smallest reset gets one, within
// the rate limits. A short packet names only half of the connection id,
// and the token derives from all of it (peers send their probes and
// keepalives long, so a lost connection is still detected). The reset is
// shorter than pkt.
func (e *Endpoint) StatelessReset(now time.Time, from netip.AddrPort, pkt []byte) []byte {
	h, err := wire.ParseHeader(pkt)
	if err != nil || h.Short || len(pkt) <= wire.MinResetSize {
		return nil
	}
	if !e.reset.allow(now, from.Addr()) {
		e.stats.ResetsLimited.Add(1)
		return nil
	}
	var spread [1]byte
	if _, err := io.ReadFull(e.rand, spread[:]); err != nil {
		return nil
	}
	// Uniform in [MinResetSize, min(len(pkt)-1, MinResetSize+spread)]:
	// two endpoints that lost their state and answer each other's
	// resets shrink them by half on average, down to too small to answer.
	size := wire.MinResetSize + int(spread[0])%(min(len(pkt)-1, wire.MinResetSize+resetSizeSpread)-wire.MinResetSize+1)
	out := make([]byte, size)
	if _, err := io.ReadFull(e.rand, out); err != nil {
		return nil
	}
	// It parses as a data packet: the type, a key phase bit, and what
	// looks like a connection id, packet number and sealed frames.
	out[0] = wire.TypeData
	out[1] &= wire.FlagKeyPhase
	tok := e.reset.token(h.DstCID)
	copy(out[size-wire.ResetTokenLen:], tok[:])
	e.stats.ResetsSent.Add(1)
	return out
}

// resetTarget finds the connection a stateless reset would be for, by the
// token in its last bytes (the connection compares it again in constant
// time). The lookup is a hash map keyed by the token, whose per-process
// random seed leaves nothing useful in its timing.
func (e *Endpoint) resetTarget(pkt []byte) *Conn {
	tok, ok := wire.ResetToken(pkt)
	if !ok {
		return nil
	}
	return e.resetTokens[tok]
}

// LearnResetToken records the stateless reset token c's peer sent (the
// driver calls it once PeerResetToken reports one), so that a reset from
// the peer finds c.
func (e *Endpoint) LearnResetToken(c *Conn, token [wire.ResetTokenLen]byte) {
	if e.conns[uint32(c.localCID)] != c {
		return // already forgotten
	}
	if _, ok := e.resetTokenOf[c]; ok {
		return
	}
	if _, taken := e.resetTokens[token]; taken {
		return // first come, first served: a copied token resets nobody else
	}
	e.resetTokens[token] = c
	e.resetTokenOf[c] = token
}

func (e *Endpoint) forgetResetToken(c *Conn) {
	if tok, ok := e.resetTokenOf[c]; ok {
		delete(e.resetTokenOf, c)
		if e.resetTokens[tok] == c {
			delete(e.resetTokens, tok)
		}
	}
}

// PeerResetToken returns the stateless reset token the peer sent, once it
// has.
func (c *Conn) PeerResetToken() ([wire.ResetTokenLen]byte, bool) {
	return c.peerResetToken, c.peerResetKnown
}

func (c *Conn) onResetToken(tok [wire.ResetTokenLen]byte) {
	if !c.peerResetKnown {
		c.peerResetToken = tok
		c.peerResetKnown = true
	}
}

// appendResetToken sends our token once (again if the packet is lost).
func (c *Conn) appendResetToken(b []byte, room int, frames []sentFrame) ([]byte, []sentFrame) {
	if !c.resetTokenSend || room-len(b) <= 1+wire.ResetTokenLen {
		return b, frames
	}
	c.resetTokenSend = false
	b = wire.AppendResetToken(b, c.resetToken)
	return b, append(frames, sentFrame{kind: sfResetToken})
}

// statelessReset reports whether pkt, which did not authenticate as a
// packet of this connection, is the peer's stateless reset; if so the
// connection ends at once, sending nothing (the peer has no state to
// receive a CLOSE).
//
// A connection already closing or draining keeps the error it has: its
// peer forgetting it is what the close leads to anyway.
func (c *Conn) statelessReset(pkt []byte) bool {
	if !c.peerResetKnown || c.state != stateEstablished {
		return false
	}
	tok, ok := wire.ResetToken(pkt)
	if !ok || subtle.ConstantTimeCompare(tok[:], c.peerResetToken[:]) != 1 {
		return false
	}
	c.stats.StatelessResets++
	c.err = ErrStatelessReset
	c.forget()
	return true
}
