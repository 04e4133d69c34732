package replica

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/core"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// Raft's RPCs run over SUDP, the protocol the MMC already speaks: no
// second protocol, no plaintext port. raft.NetworkTransport works on any
// raft.StreamLayer (a net.Listener plus Dial); StreamLayer provides one
// where each raft connection is one SUDP stream, on one authenticated
// SUDP connection per pair of members. The same connection carries the
// admin requests a follower forwards to the leader (streamkind.go): each
// stream starts with a kind byte.
//
// Authentication: a member's raft address is its SUDP listen address and
// Members maps each address to the member's static public key. Dial
// authenticates the peer by that key (the Noise handshake fails against
// any other); on the accepting side a connection carries raft streams
// only if its peer's static key is a member's (Serve refuses the others
// and counts them). The handshake's psk is ClusterPSK, derived from a
// secret every member holds, so that a member key alone (e.g. an old
// member's, leaked) is not enough without the cluster's secret either.
//
// Multiplexing: the layer does not own the endpoint nor its accept loop.
// The MMC's accept loop hands it the connections whose peer is a member
// (Serve) beside its agent sessions; an endpoint that serves only raft
// (a witness, tests) can let the layer accept (AcceptFrom) and use
// Members.Lookup as its handshake authoriser.

// ClusterPSK derives the psk of raft connections between members from
// the cluster's secret (HKDF-SHA256, its own label: the secret may key
// other things).
func ClusterPSK(secret []byte) ([32]byte, error) {
	var psk [32]byte
	if len(secret) < 32 {
		return psk, errors.New("replica: the cluster secret must be at least 32 bytes")
	}
	k, err := hkdf.Key(sha256.New, secret, nil, "ferry raft member psk v1", 32)
	if err != nil {
		return psk, err
	}
	copy(psk[:], k)
	clear(k)
	return psk, nil
}

// Members maps each member's raft address to its static public key. It
// is safe for concurrent use; the owner keeps it in step with the raft
// configuration (a member is added here before AddVoter).
type Members struct {
	mu     sync.RWMutex
	byAddr map[raft.ServerAddress][32]byte

	refusedLookups atomic.Uint64
}

// NewMembers returns an empty directory.
func NewMembers() *Members { return &Members{byAddr: map[raft.ServerAddress][32]byte{}} }

// Set records the member at addr.
func (m *Members) Set(addr raft.ServerAddress, key [32]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.byAddr[addr] = key
}

// Remove forgets the member at addr.
func (m *Members) Remove(addr raft.ServerAddress) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.byAddr, addr)
}

// Key is the static key of the member at addr.
func (m *Members) Key(addr raft.ServerAddress) ([32]byte, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	k, ok := m.byAddr[addr]
	return k, ok
}

// Has reports whether key is a member's (constant time per entry).
func (m *Members) Has(key [32]byte) (raft.ServerAddress, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var found raft.ServerAddress
	ok := false
	for addr, k := range m.byAddr {
		if constantTimeEq(k, key) {
			found, ok = addr, true
		}
	}
	return found, ok
}

// Lookup returns the handshake authoriser of an endpoint that serves
// only raft (a witness; tests): members' keys are allowed, with psk; any
// other key is refused and counted (RefusedLookups). It does not block
// (sudp.Config.Lookup runs on the endpoint's reader goroutine).
func (m *Members) Lookup(psk [32]byte) func(peer [32]byte) (handshake.Peer, error) {
	return func(peer [32]byte) (handshake.Peer, error) {
		addr, ok := m.Has(peer)
		if !ok {
			m.refusedLookups.Add(1)
			return handshake.Peer{}, errors.New("replica: not a cluster member")
		}
		return handshake.Peer{ID: "mmc " + string(addr), PSK: psk, Allowed: true}, nil
	}
}

// RefusedLookups counts handshakes Lookup refused.
func (m *Members) RefusedLookups() uint64 { return m.refusedLookups.Load() }

func constantTimeEq(a, b [32]byte) bool {
	var v byte
	for i := range a {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// StreamLayerConfig configures a StreamLayer.
type StreamLayerConfig struct {
	// Endpoint is the member's SUDP endpoint (owned by the caller).
	Endpoint *sudp.Endpoint
	// Advertise is this member's raft address (its SUDP address as the
	// other members reach it).
	Advertise raft.ServerAddress
	// Members authenticates peers.
	Members *Members
	// PSK is the handshake psk between members (ClusterPSK).
	PSK [32]byte
	// Logger receives connection events (never key material).
	Logger *slog.Logger
	// KindTimeout bounds the wait for the kind byte of a stream a member
	// opened (DefaultKindTimeout if 0); a stream without one is refused.
	KindTimeout time.Duration
	// MaxPendingStreams bounds, per connection, the streams waiting for
	// their kind byte (DefaultMaxPendingStreams if 0): the connection's
	// next streams are accepted only as those finish, so a peer that
	// opens streams and sends nothing holds at most this many goroutines
	// and delays only its own streams.
	MaxPendingStreams int
}

// ErrLayerClosed is returned by a closed StreamLayer.
var ErrLayerClosed = errors.New("replica: stream layer closed")

// StreamLayer implements raft.StreamLayer over SUDP streams.
type StreamLayer struct {
	cfg StreamLayerConfig
	log *slog.Logger

	incoming chan net.Conn // raft streams

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // Serve and AcceptFrom goroutines

	mu    sync.Mutex
	conns map[raft.ServerAddress]*sudp.Conn // dialed, one per member
	dials map[raft.ServerAddress]*dialCall  // dials in progress
	admin *adminListener                    // nil until AdminListener

	refusedConns   atomic.Uint64
	refusedStreams atomic.Uint64
}

type dialCall struct {
	done chan struct{}
	conn *sudp.Conn
	err  error
}

// NewStreamLayer returns a layer on cfg.Endpoint.
func NewStreamLayer(cfg StreamLayerConfig) *StreamLayer {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.KindTimeout <= 0 {
		cfg.KindTimeout = DefaultKindTimeout
	}
	if cfg.MaxPendingStreams <= 0 {
		cfg.MaxPendingStreams = DefaultMaxPendingStreams
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &StreamLayer{
		cfg:      cfg,
		log:      cfg.Logger,
		incoming: make(chan net.Conn),
		ctx:      ctx,
		cancel:   cancel,
		conns:    map[raft.ServerAddress]*sudp.Conn{},
		dials:    map[raft.ServerAddress]*dialCall{},
	}
}

// NewTransport is raft's NetworkTransport on layer (a pool of 3
// connections per peer, 10 s I/O timeout: raft's usual settings).
func NewTransport(layer *StreamLayer, log *slog.Logger) *raft.NetworkTransport {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  newHCLog(log.With("component", "raft-transport")),
	})
}

// RefusedConns counts connections handed to Serve whose peer is not a
// member.
func (l *StreamLayer) RefusedConns() uint64 { return l.refusedConns.Load() }

// AcceptFrom runs the accept loop of an endpoint that serves only raft,
// handing every connection to Serve, until Close.
func (l *StreamLayer) AcceptFrom(ep *sudp.Endpoint) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ep.Accept(l.ctx)
			if err != nil {
				return
			}
			l.Serve(c)
		}
	}()
}

// Serve carries the streams the peer of c opens (raft's and admin
// requests), until c or the layer closes; a connection whose peer is not
// a member is closed and counted. It returns at once.
func (l *StreamLayer) Serve(c *sudp.Conn) {
	peer := c.Session().PeerStatic
	if _, ok := l.cfg.Members.Has(peer); !ok {
		l.refusedConns.Add(1)
		l.log.Warn("replica: refused raft connection from a non-member", "from", c.RemoteAddr())
		c.CloseWithError(core.CodeApplication, "not a cluster member") //nolint:errcheck // refusing
		return
	}
	l.goServe(c)
}

// goServe starts serve(c) unless the layer is closed (then it closes c).
// The check and wg.Add happen under mu, which Close takes to cancel, so
// no goroutine starts after Close began waiting.
func (l *StreamLayer) goServe(c *sudp.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		c.Close()
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.serve(c)
	}()
}

// serve accepts c's streams and starts one goroutine per stream, which
// reads its kind byte and hands it on; it waits for them before
// returning. Closing the layer closes c, which ends their reads.
func (l *StreamLayer) serve(c *sudp.Conn) {
	stop := context.AfterFunc(l.ctx, func() { c.Close() })
	defer stop()
	var streams sync.WaitGroup
	defer streams.Wait()
	// A slot per stream waiting for its kind byte; classify frees it.
	pending := make(chan struct{}, l.cfg.MaxPendingStreams)
	for {
		select {
		case pending <- struct{}{}:
		case <-l.ctx.Done():
			return
		}
		s, err := c.AcceptStream(l.ctx)
		if err != nil {
			return
		}
		// A member removed from Members since the connection opened gets
		// no new streams.
		if _, ok := l.cfg.Members.Has(c.Session().PeerStatic); !ok {
			l.refusedConns.Add(1)
			s.Close()
			c.CloseWithError(core.CodeApplication, "no longer a cluster member") //nolint:errcheck // refusing
			return
		}
		streams.Add(1)
		go func() {
			defer streams.Done()
			kind, refused := l.classify(s, pending)
			if refused != "" {
				l.refuse(s, refused)
				return
			}
			l.route(s, kind)
		}()
	}
}

// Accept implements net.Listener: the next raft stream a member opened.
func (l *StreamLayer) Accept() (net.Conn, error) {
	select {
	case s := <-l.incoming:
		return s, nil
	case <-l.ctx.Done():
		return nil, ErrLayerClosed
	}
}

// Close implements net.Listener: it stops Serve and AcceptFrom, closes
// the admin listener and the connections the layer dialed, and waits for
// its goroutines. The endpoint stays open.
func (l *StreamLayer) Close() error {
	l.mu.Lock()
	l.cancel()
	conns := l.conns
	l.conns = map[raft.ServerAddress]*sudp.Conn{}
	if l.admin != nil {
		l.admin.Close()
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	l.wg.Wait()
	return nil
}

// Addr implements net.Listener: the advertised raft address.
func (l *StreamLayer) Addr() net.Addr { return raftAddr(l.cfg.Advertise) }

type raftAddr string

func (a raftAddr) Network() string { return "sudp" }
func (a raftAddr) String() string  { return string(a) }

// Dial implements raft.StreamLayer: a new raft stream (its kind byte
// written) on the connection to the member at address, dialing it first
// if there is none (or it ended).
func (l *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(l.ctx, timeout)
	defer cancel()
	s, err := l.openKind(ctx, address, kindRaft)
	if err != nil {
		return nil, err // not a nil *sudp.Stream in a non-nil net.Conn
	}
	return s, nil
}

func (l *StreamLayer) forget(address raft.ServerAddress, c *sudp.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns[address] == c {
		delete(l.conns, address)
	}
}

// conn returns the live connection to address, dialing it once for any
// number of concurrent callers.
func (l *StreamLayer) conn(ctx context.Context, address raft.ServerAddress) (*sudp.Conn, error) {
	key, ok := l.cfg.Members.Key(address)
	if !ok {
		return nil, fmt.Errorf("replica: %s is not a known member", address)
	}
	l.mu.Lock()
	if l.ctx.Err() != nil {
		l.mu.Unlock()
		return nil, ErrLayerClosed
	}
	if c, ok := l.conns[address]; ok {
		if c.Err() == nil && c.Session().PeerStatic == key {
			l.mu.Unlock()
			return c, nil
		}
		delete(l.conns, address)
		c.Close()
	}
	call, dialing := l.dials[address]
	if !dialing {
		call = &dialCall{done: make(chan struct{})}
		l.dials[address] = call
	}
	l.mu.Unlock()

	if dialing {
		select {
		case <-call.done:
			return call.conn, call.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	c, err := l.cfg.Endpoint.Dial(ctx, string(address), key, l.cfg.PSK)
	l.mu.Lock()
	delete(l.dials, address)
	if err == nil {
		if l.ctx.Err() != nil {
			c.Close()
			c, err = nil, ErrLayerClosed
		} else {
			l.conns[address] = c
		}
	}
	l.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("replica: dial %s: %w", address, err)
	} else {
		// The peer opens its streams to us on this connection too.
		l.goServe(c)
	}
	call.conn, call.err = c, err
	close(call.done)
	return c, err
}

var _ raft.StreamLayer = (*StreamLayer)(nil)
var _ io.Closer = (*StreamLayer)(nil)
