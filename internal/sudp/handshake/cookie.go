package handshake

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"net/netip"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// cookieChecker is the responder's half of WireGuard's cookie mechanism: a
// stateless proof that an initiator can receive packets at its source address.
//
// A cookie is HMAC(secret, source ip || port)[:16]. The responder keeps no
// per-source state: it recomputes the cookie when it checks mac2. Secrets are
// replaced every CookieSecretLifetime on a fixed schedule counted from the
// first use; the previous one is kept, so a cookie issued at any moment is
// valid for at least one CookieSecretLifetime and at most two.
type cookieChecker struct {
	rand io.Reader
	// box encrypts cookies to the initiator: XChaCha20-Poly1305 keyed with
	// SHA-256(LabelCookie || our static public key), so only someone who
	// knows our public key (and saw the initiation's mac1) can read it.
	box cipher.AEAD

	started bool
	origin  time.Time // start of epoch 0
	epoch   int64     // epoch of cur
	cur     hash.Hash // HMAC keyed with the current secret
	prev    hash.Hash // HMAC keyed with the previous secret, or nil
}

func newCookieChecker(rng io.Reader, staticPub []byte) (*cookieChecker, error) {
	key := labelledKey(LabelCookie, staticPub)
	box, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return nil, err
	}
	c := &cookieChecker{rand: rng, box: box}
	if c.cur, err = c.newSecret(); err != nil {
		return nil, err
	}
	return c, nil
}

// newSecret draws a fresh secret and returns an HMAC keyed with it. The
// secret itself is wiped; only the HMAC's key schedule keeps it.
func (c *cookieChecker) newSecret() (hash.Hash, error) {
	var s [32]byte
	defer clear(s[:])
	if _, err := io.ReadFull(c.rand, s[:]); err != nil {
		return nil, fmt.Errorf("%w: cookie secret: %v", ErrInternal, err)
	}
	return hmac.New(sha256.New, s[:]), nil
}

// rotate brings the secrets up to date with now. Time running backwards
// rotates nothing: a secret is never brought back.
func (c *cookieChecker) rotate(now time.Time) error {
	if !c.started {
		c.started, c.origin = true, now
		return nil
	}
	d := now.Sub(c.origin)
	if d < 0 {
		return nil
	}
	e := int64(d / CookieSecretLifetime)
	if e <= c.epoch {
		return nil
	}
	next, err := c.newSecret()
	if err != nil {
		return err
	}
	if e == c.epoch+1 {
		c.prev = c.cur
	} else {
		// Two or more periods went by unseen: the previous secret would
		// already have expired as well.
		c.prev = nil
	}
	c.cur, c.epoch = next, e
	return nil
}

func cookieFor(secret hash.Hash, src netip.AddrPort) [CookieLen]byte {
	var ab [18]byte
	var sum [HashLen]byte
	secret.Reset()
	secret.Write(addrBytes(&ab, src))
	secret.Sum(sum[:0])
	var c [CookieLen]byte
	copy(c[:], sum[:])
	return c
}

// validMAC2 reports whether the initiation's mac2 was made with a cookie for
// src under the current or the previous secret. Both are always computed so
// the time taken does not tell which one matched.
func (c *cookieChecker) validMAC2(now time.Time, src netip.AddrPort, pkt []byte) (bool, error) {
	if err := c.rotate(now); err != nil {
		return false, err
	}
	ok := c.checkWith(c.cur, src, pkt)
	if c.prev != nil {
		ok = c.checkWith(c.prev, src, pkt) || ok
	}
	return ok, nil
}

func (c *cookieChecker) checkWith(secret hash.Hash, src netip.AddrPort, pkt []byte) bool {
	ck := cookieFor(secret, src)
	return newMAC(ck[:]).verify(pkt[initMAC2Offset:InitiationSize], pkt[:initMAC2Offset])
}

// reply builds the cookie reply to an initiation from src: the cookie under
// the current secret, encrypted with a random nonce and the initiation's mac1
// as associated data. Binding to mac1 means the reply is useful only to
// whoever sent that very initiation, and cannot be replayed to another.
func (c *cookieChecker) reply(now time.Time, src netip.AddrPort, pkt []byte) ([]byte, error) {
	if err := c.rotate(now); err != nil {
		return nil, err
	}
	out := make([]byte, CookieReplySize)
	putHeader(out, TypeCookieReply)
	copy(out[cookieReceiverOffset:cookieNonceOffset], pkt[initSenderOffset:initNoiseOffset])
	nonce := out[cookieNonceOffset:cookieBoxOffset]
	if _, err := io.ReadFull(c.rand, nonce); err != nil {
		return nil, fmt.Errorf("%w: cookie nonce: %v", ErrInternal, err)
	}
	ck := cookieFor(c.cur, src)
	c.box.Seal(out[:cookieBoxOffset], nonce, ck[:], pkt[initMAC1Offset:initMAC2Offset])
	return out, nil
}

// loadMeter estimates the rate of initiations with a sliding window made of
// two fixed ones (the previous window's count weighted by how much of it still
// overlaps the last LoadWindow). It is O(1) in time and space, and exact
// enough to tell "normal" from "flooded".
type loadMeter struct {
	started     bool
	windowStart time.Time
	cur, prev   uint64
}

// observe counts one initiation at now and returns the estimated number of
// initiations in the last LoadWindow, including it.
func (m *loadMeter) observe(now time.Time) float64 {
	if !m.started {
		m.started, m.windowStart = true, now
	}
	d := now.Sub(m.windowStart)
	switch {
	case d < 0:
		d = 0
	case d >= 2*LoadWindow:
		m.prev, m.cur = 0, 0
		m.windowStart = m.windowStart.Add(d.Truncate(LoadWindow))
		d -= d.Truncate(LoadWindow)
	case d >= LoadWindow:
		m.prev, m.cur = m.cur, 0
		m.windowStart = m.windowStart.Add(LoadWindow)
		d -= LoadWindow
	}
	m.cur++
	overlap := 1 - float64(d)/float64(LoadWindow)
	return float64(m.prev)*overlap + float64(m.cur)
}

// cookieJar is the initiator's side: the last cookie received and when.
type cookieJar struct {
	box    cipher.AEAD // keyed like the responder's cookieChecker.box
	cookie [CookieLen]byte
	set    time.Time
	have   bool
}

// fresh returns the cookie if it is young enough to be trusted to still
// verify at the responder.
func (j *cookieJar) fresh(now time.Time) ([]byte, bool) {
	if !j.have || now.Sub(j.set) >= CookieLifetime-CookieLifetimeMargin {
		return nil, false
	}
	return j.cookie[:], true
}
