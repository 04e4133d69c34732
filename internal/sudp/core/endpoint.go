package core

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// EndpointConfig configures one local SUDP endpoint (one UDP socket).
type EndpointConfig struct {
	// Static is this endpoint's long-term X25519 key pair.
	Static noise.DHKey
	// ClusterID is bound into every handshake: endpoints of different
	// clusters cannot talk, and no version downgrade is possible.
	ClusterID string
	// Lookup authorises initiators by static key (and supplies their psk).
	// nil: the endpoint accepts no incoming connections.
	Lookup func(peerStatic [32]byte) (handshake.Peer, error)
	// RequireCookie demands a proven source address before any handshake
	// work (stateless retry on every initiation, not only under load).
	RequireCookie bool
	// LoadThreshold is the initiations per second above which cookies are
	// demanded; RateLimit bounds initiations per source address.
	LoadThreshold int
	RateLimit     ratelimit.Config
	// Conn configures each connection.
	Conn Config
	// Rand is the randomness source (crypto/rand when nil).
	Rand io.Reader
	// MaxUnconfirmed bounds the connections that completed the handshake
	// but whose peer has not yet proven it holds the keys (zero:
	// DefaultMaxUnconfirmed). Past it the oldest such connection is
	// dropped; confirmed connections are never touched. Each expires
	// after Conn.HandshakeTimeout if it never confirms.
	MaxUnconfirmed int
}

// DefaultMaxUnconfirmed is the default bound on unconfirmed connections: an
// honest peer confirms within one round trip, so even thousands of agents
// reconnecting at once after an MMC restart stay well inside it, while a
// flood of fresh keys costs at most this many connections.
const DefaultMaxUnconfirmed = 1024

// EndpointStats counts what the endpoint dropped before a connection saw it.
type EndpointStats struct {
	UnknownCID       atomic.Uint64 // data for no connection
	Malformed        atomic.Uint64 // unparseable datagrams
	HandshakeDropped atomic.Uint64 // initiations rejected (see handshake stats)
	Accepted         atomic.Uint64 // connections accepted
	Replaced         atomic.Uint64 // unconfirmed connections superseded
	// DuplicateInitiations counts exact copies of an initiation that
	// made a still-unconfirmed connection (answered with its response
	// again, at most every dupResendGap).
	DuplicateInitiations atomic.Uint64
	// UnconfirmedEvicted counts unconfirmed connections dropped because
	// MaxUnconfirmed was reached; UnconfirmedExpired those whose peer
	// never proved its keys within the handshake timeout.
	UnconfirmedEvicted atomic.Uint64
	UnconfirmedExpired atomic.Uint64
	// ResetsSent counts stateless resets sent for unknown connection ids,
	// ResetsLimited those withheld by the rate limits.
	ResetsSent    atomic.Uint64
	ResetsLimited atomic.Uint64
}

// Endpoint demultiplexes datagrams to connections by connection id and runs
// the responder side of the handshake. It is sans-I/O and not safe for
// concurrent use; Conn values it returns are driven separately.
type Endpoint struct {
	cfg       EndpointConfig
	responder *handshake.Responder
	rand      io.Reader
	// conns holds the connections by the low 32 bits of their CID, all
	// a short data packet names (newCID keeps them unique).
	conns map[uint32]*Conn
	// unconfirmed maps a peer's static key to its newest connection that
	// has not yet proven key possession; a retried initiation replaces it,
	// so a peer holds at most one such connection.
	unconfirmed map[[32]byte]*Conn
	// unconfirmedOrder lists unconfirmed connections oldest first, so the
	// oldest is found in O(1) when MaxUnconfirmed is reached. Entries
	// that left unconfirmed are skipped when met (and compacted away).
	unconfirmedOrder []*Conn
	// answered holds, for each unconfirmed connection, the initiation
	// that made it (by digest) and the response it was answered with: an
	// exact copy of that initiation from the same address gets the same
	// response again (dupInitiation).
	answered map[[32]byte]*answeredInit
	// stateless reset (reset.go): our tokens, and the peers' tokens by
	// which a reset finds its connection
	reset        *resetter
	resetTokens  map[[wire.ResetTokenLen]byte]*Conn
	resetTokenOf map[*Conn][wire.ResetTokenLen]byte
	stats        EndpointStats
}

// NewEndpoint builds an endpoint.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.MaxUnconfirmed <= 0 {
		cfg.MaxUnconfirmed = DefaultMaxUnconfirmed
	}
	rs, err := newResetter(cfg.Static.Private)
	if err != nil {
		return nil, fmt.Errorf("sudp: reset key: %w", err)
	}
	e := &Endpoint{
		cfg:          cfg,
		rand:         cfg.Rand,
		conns:        make(map[uint32]*Conn),
		unconfirmed:  make(map[[32]byte]*Conn),
		reset:        rs,
		resetTokens:  make(map[[wire.ResetTokenLen]byte]*Conn),
		resetTokenOf: make(map[*Conn][wire.ResetTokenLen]byte),
	}
	if cfg.Lookup != nil {
		r, err := handshake.NewResponder(handshake.ResponderConfig{
			Static:        cfg.Static,
			ClusterID:     cfg.ClusterID,
			Lookup:        cfg.Lookup,
			Rand:          cfg.Rand,
			RequireCookie: cfg.RequireCookie,
			LoadThreshold: cfg.LoadThreshold,
			RateLimit:     cfg.RateLimit,
		})
		if err != nil {
			return nil, err
		}
		e.responder = r
	}
	return e, nil
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() *EndpointStats { return &e.stats }

// HandshakeStats returns the responder's counters (zero if not accepting).
func (e *Endpoint) HandshakeStats() handshake.Stats {
	if e.responder == nil {
		return handshake.Stats{}
	}
	return e.responder.Stats()
}

// newCID chooses a random connection id whose low 32 bits — all a short
// data packet names — are unique among this endpoint's connections. All
// 64 bits are random: a stateless reset token derives from the whole id,
// so no one can learn the token of an id before it is used.
func (e *Endpoint) newCID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := io.ReadFull(e.rand, b[:]); err != nil {
			return 0, fmt.Errorf("sudp: connection id: %w", err)
		}
		id := binary.BigEndian.Uint64(b[:])
		if uint32(id) != 0 && e.conns[uint32(id)] == nil {
			return id, nil
		}
	}
}

// Connect starts a connection to the responder at addr whose static public
// key is remoteStatic, proving knowledge of psk.
func (e *Endpoint) Connect(now time.Time, addr netip.AddrPort, remoteStatic, psk [32]byte) (*Conn, error) {
	init, err := handshake.NewInitiator(handshake.InitiatorConfig{
		Static:       e.cfg.Static,
		RemoteStatic: remoteStatic,
		PSK:          psk,
		ClusterID:    e.cfg.ClusterID,
		Rand:         e.rand,
	})
	if err != nil {
		return nil, err
	}
	cid, err := e.newCID()
	if err != nil {
		return nil, err
	}
	c, err := newClientConn(e.cfg.Conn, e.rand, now, cid, addr, init)
	if err != nil {
		return nil, err
	}
	c.resetToken, c.resetTokenSend = e.reset.token(cid), true
	c.enableRehandshake(e.cfg.Static)
	e.conns[uint32(cid)] = c
	return c, nil
}

// Route finds the connection a datagram is for. For a handshake initiation
// it returns (nil, true): call HandleInitiation.
func (e *Endpoint) Route(pkt []byte) (c *Conn, initiation bool) {
	if len(pkt) < 12 {
		e.stats.Malformed.Add(1)
		return nil, false
	}
	var cid uint32
	switch pkt[0] {
	case wire.TypeInitiation:
		return nil, true
	case wire.TypeResponse:
		if len(pkt) < 20 {
			e.stats.Malformed.Add(1)
			return nil, false
		}
		cid = binary.BigEndian.Uint32(pkt[16:20])
	case wire.TypeCookieReply:
		cid = binary.BigEndian.Uint32(pkt[8:12])
	case wire.TypeData, wire.TypeRekey:
		cid = binary.BigEndian.Uint32(pkt[6:10])
	default:
		if !wire.IsShort(pkt[0]) {
			e.stats.Malformed.Add(1)
			return nil, false
		}
		cid = binary.BigEndian.Uint32(pkt[1:5])
	}
	c = e.conns[cid]
	if c == nil && pkt[0] == wire.TypeData {
		if rc := e.resetTarget(pkt); rc != nil {
			return rc, false // perhaps the peer's stateless reset
		}
	}
	if c == nil {
		e.stats.UnknownCID.Add(1)
	}
	return c, false
}

// ErrNotAccepting is returned for initiations at an endpoint with no Lookup.
var ErrNotAccepting = errors.New("sudp: endpoint does not accept connections")

// answeredInit is an initiation this endpoint answered with a new
// connection that has not confirmed yet.
type answeredInit struct {
	c        *Conn
	from     netip.AddrPort
	response []byte
	resentAt time.Time
}

// dupResendGap bounds how often one response is sent again.
const dupResendGap = 20 * time.Millisecond

// dupInitiation answers an exact copy of an initiation that created a
// still-unconfirmed connection, from the address it came from, with the
// response already made for it. A hole-punching dialer resends one
// initiation every 50 ms while the NATs open (a fresh ephemeral each time
// would make responses on longer paths useless); if the one response to
// the copy that got through is lost, the copies that follow are replays
// to the handshake — refused — and the dialer would wait for its next
// fresh initiation (a second). Resending costs no state and no crypto;
// the response is smaller than the initiation that draws it, goes only
// to where that initiation came from, at most once per dupResendGap.
func (e *Endpoint) dupInitiation(now time.Time, from netip.AddrPort, pkt []byte) ([]byte, bool) {
	if len(e.answered) == 0 {
		return nil, false
	}
	d := sha256.Sum256(pkt)
	a := e.answered[d]
	if a == nil {
		return nil, false
	}
	if e.unconfirmed[a.c.session.PeerStatic] != a.c {
		delete(e.answered, d) // confirmed, replaced or gone: the handshake decides
		return nil, false
	}
	if a.from != from {
		return nil, false
	}
	e.stats.DuplicateInitiations.Add(1)
	if now.Sub(a.resentAt) < dupResendGap {
		return nil, true // answered very recently: drop the copy
	}
	a.resentAt = now
	return a.response, true
}

// rememberAnswer records the response to an initiation that created c.
func (e *Endpoint) rememberAnswer(now time.Time, from netip.AddrPort, pkt []byte, c *Conn, resp []byte) {
	if e.answered == nil {
		e.answered = map[[32]byte]*answeredInit{}
	}
	if len(e.answered) >= 2*e.cfg.MaxUnconfirmed {
		for k, a := range e.answered {
			if e.unconfirmed[a.c.session.PeerStatic] != a.c {
				delete(e.answered, k)
			}
		}
	}
	if len(e.answered) >= 2*e.cfg.MaxUnconfirmed {
		return
	}
	e.answered[sha256.Sum256(pkt)] = &answeredInit{c: c, from: from, response: bytes.Clone(resp), resentAt: now}
}

// HandleInitiation runs the responder. It returns either a reply to send
// straight back (a cookie reply; no state kept) or a new connection whose
// first transmit is the handshake response.
//
// replaced, when not nil, is an older unconfirmed connection that the new
// one supersedes — the same peer's, or the oldest of all when
// MaxUnconfirmed is reached: the endpoint has forgotten it and the driver
// must stop driving it.
func (e *Endpoint) HandleInitiation(now time.Time, from netip.AddrPort, pkt []byte) (reply []byte, c, replaced *Conn, err error) {
	if e.responder == nil {
		e.stats.HandshakeDropped.Add(1)
		return nil, nil, nil, ErrNotAccepting
	}
	if resp, ok := e.dupInitiation(now, from, pkt); ok {
		return resp, nil, nil, nil
	}
	cid, err := e.newCID()
	if err != nil {
		return nil, nil, nil, err
	}
	reply, s, err := e.responder.HandleInitiation(now, from, pkt, cid)
	if err != nil {
		e.stats.HandshakeDropped.Add(1)
		return reply, nil, nil, err
	}
	if s == nil {
		return reply, nil, nil, nil
	}
	c, err = newServerConn(e.cfg.Conn, e.rand, now, from, s, reply, len(pkt))
	if err != nil {
		return nil, nil, nil, err
	}
	e.rememberAnswer(now, from, pkt, c, reply)
	c.resetToken, c.resetTokenSend = e.reset.token(cid), true
	c.enableRehandshake(e.cfg.Static)
	if old := e.unconfirmed[c.session.PeerStatic]; old != nil {
		delete(e.conns, uint32(old.localCID))
		e.forgetResetToken(old)
		replaced = old
		e.stats.Replaced.Add(1)
	} else if len(e.unconfirmed) >= e.cfg.MaxUnconfirmed {
		replaced = e.evictOldestUnconfirmed()
	}
	e.unconfirmed[c.session.PeerStatic] = c
	e.unconfirmedOrder = append(e.unconfirmedOrder, c)
	e.compactUnconfirmed()
	e.conns[uint32(cid)] = c
	e.stats.Accepted.Add(1)
	return nil, c, replaced, nil
}

// Confirmed tells the endpoint a connection proved its keys (the driver
// calls it after HandleDatagram when c.Confirmed() first turns true).
func (e *Endpoint) Confirmed(c *Conn) {
	if e.unconfirmed[c.session.PeerStatic] == c {
		delete(e.unconfirmed, c.session.PeerStatic)
	}
}

// Remove forgets a connection (call Abandon on it, under its own
// serialisation, if it is not closed yet).
func (e *Endpoint) Remove(c *Conn) {
	if e.conns[uint32(c.localCID)] == c {
		delete(e.conns, uint32(c.localCID))
	}
	e.forgetResetToken(c)
	if e.unconfirmed[c.session.PeerStatic] == c {
		delete(e.unconfirmed, c.session.PeerStatic)
		if errors.Is(c.err, ErrHandshakeTimeout) {
			e.stats.UnconfirmedExpired.Add(1)
		}
	}
}

// evictOldestUnconfirmed forgets the oldest unconfirmed connection.
func (e *Endpoint) evictOldestUnconfirmed() *Conn {
	for len(e.unconfirmedOrder) > 0 {
		c := e.unconfirmedOrder[0]
		e.unconfirmedOrder[0] = nil
		e.unconfirmedOrder = e.unconfirmedOrder[1:]
		if e.unconfirmed[c.session.PeerStatic] != c {
			continue // confirmed, replaced or removed since
		}
		delete(e.unconfirmed, c.session.PeerStatic)
		delete(e.conns, uint32(c.localCID))
		e.forgetResetToken(c)
		e.stats.UnconfirmedEvicted.Add(1)
		return c
	}
	return nil
}

// compactUnconfirmed drops the order's stale entries once they outnumber
// the live ones, so the list stays O(MaxUnconfirmed) and each initiation
// costs amortised O(1).
func (e *Endpoint) compactUnconfirmed() {
	if len(e.unconfirmedOrder) <= 2*len(e.unconfirmed)+16 {
		return
	}
	live := make([]*Conn, 0, 2*len(e.unconfirmed)+16)
	for _, c := range e.unconfirmedOrder {
		if e.unconfirmed[c.session.PeerStatic] == c {
			live = append(live, c)
		}
	}
	e.unconfirmedOrder = live
}

// Unconfirmed returns the number of connections whose peer has not yet
// proven it holds the keys.
func (e *Endpoint) Unconfirmed() int { return len(e.unconfirmed) }

// ReplayEntries reports the responder's replay tables (registered keys,
// and unregistered keys still remembered); zero if not accepting.
func (e *Endpoint) ReplayEntries() (registered, unregistered int) {
	if e.responder == nil {
		return 0, 0
	}
	return e.responder.ReplayEntries()
}

// Conns returns the number of connections.
func (e *Endpoint) Conns() int { return len(e.conns) }
