package sudp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/core"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
	"github.com/ferry-vm/ferry/internal/sudp/socket"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Config configures an Endpoint.
type Config struct {
	// Listen is the UDP address to bind ("0.0.0.0:7946", "127.0.0.1:0").
	Listen string
	// Static is the endpoint's long-term key pair.
	Static noise.DHKey
	// ClusterID binds every handshake to one Ferry cluster.
	ClusterID string
	// Lookup authorises incoming connections; nil refuses them all.
	Lookup func(peerStatic [32]byte) (handshake.Peer, error)
	// Rejected, if set, is told of every initiation the responder refused
	// (errors from package handshake; *handshake.PeerError names the key
	// for replays and refused peers). Like Lookup it runs on the reader
	// goroutine and must not block.
	Rejected func(from netip.AddrPort, err error)
	// RequireCookie makes every initiator prove its address first.
	RequireCookie bool
	LoadThreshold int
	RateLimit     ratelimit.Config
	// MaxUnconfirmed bounds connections whose peer has not yet proven its
	// keys (zero: core.DefaultMaxUnconfirmed); see core.EndpointConfig.
	MaxUnconfirmed int
	// Conn tunes each connection.
	Conn core.Config
	// SmallBuffers opens the socket for a low rate (no receive offload,
	// a few small receive buffers): for processes with many endpoints.
	SmallBuffers bool
	// Logger receives connection lifecycle events (never key material).
	Logger *slog.Logger
	// Foreign, if set, receives every datagram whose first byte is at or
	// above ForeignMin: protocols that share the endpoint's port and NAT
	// mapping without being SUDP (hole punching, relay binding). It runs
	// on the reader goroutine, must not block, and must copy b to keep
	// it. Unset, such datagrams are dropped and counted (Stats.Foreign).
	Foreign func(from netip.AddrPort, b []byte)
}

// ForeignMin is the least first byte of a datagram that is not SUDP's:
// SUDP's packet types are small numbers (wire.TypeInitiation …), so a
// datagram from a protocol sharing the socket can never be taken for one
// of its packets, nor one of its packets for a foreign datagram.
const ForeignMin = 0x40

// getBatch takes a send batch for datagrams of up to maxSize bytes from
// the endpoint's pool; putBatch returns it.
func (e *Endpoint) getBatch(maxSize int) *socket.Batch {
	if b, ok := e.batches.Get().(*socket.Batch); ok && b.MaxSize() == maxSize {
		b.Reset()
		return b
	}
	return socket.NewBatch(maxSize)
}

func (e *Endpoint) putBatch(maxSize int, b *socket.Batch) {
	if b.MaxSize() == maxSize {
		e.batches.Put(b)
	}
}

// ErrEndpointClosed is returned by calls on a closed Endpoint.
var ErrEndpointClosed = errors.New("sudp: endpoint closed")

// Endpoint is a UDP socket carrying any number of SUDP connections.
type Endpoint struct {
	cfg  Config
	log  *slog.Logger
	sock *socket.Conn

	foreign atomic.Uint64 // Stats.Foreign

	mu    sync.Mutex // guards ep, conns and closed
	ep    *core.Endpoint
	conns map[*core.Conn]*Conn
	ended totals // counters of connections that have ended

	accept chan *Conn
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed chan struct{}
	// closing is set (under mu) when Close begins: Dial refuses from then.
	closing bool
	once    sync.Once

	batches sync.Pool // *socket.Batch send buffers shared by the connections

	recvLimited atomic.Uint64 // packets dropped over their connection's LimitReceive
}

// Listen opens an endpoint.
func Listen(cfg Config) (*Endpoint, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ep, err := core.NewEndpoint(core.EndpointConfig{
		Static:         cfg.Static,
		ClusterID:      cfg.ClusterID,
		Lookup:         cfg.Lookup,
		RequireCookie:  cfg.RequireCookie,
		LoadThreshold:  cfg.LoadThreshold,
		RateLimit:      cfg.RateLimit,
		MaxUnconfirmed: cfg.MaxUnconfirmed,
		Conn:           cfg.Conn,
	})
	if err != nil {
		return nil, err
	}
	listen := socket.Listen
	if cfg.SmallBuffers {
		listen = socket.ListenSmall
	}
	sock, err := listen(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("sudp: listen %s: %w", cfg.Listen, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Endpoint{
		cfg:    cfg,
		log:    cfg.Logger,
		sock:   sock,
		ep:     ep,
		conns:  make(map[*core.Conn]*Conn),
		accept: make(chan *Conn, 64),
		ctx:    ctx,
		cancel: cancel,
		closed: make(chan struct{}),
	}
	e.wg.Add(1)
	go e.readLoop()
	return e, nil
}

// LocalAddr is the bound UDP address.
func (e *Endpoint) LocalAddr() netip.AddrPort { return e.sock.LocalAddr() }

// PublicKey is the endpoint's static public key.
func (e *Endpoint) PublicKey() [32]byte {
	var k [32]byte
	copy(k[:], e.cfg.Static.Public)
	return k
}

// Dial connects to the endpoint at addr whose static public key is
// remoteStatic, authenticating with psk, and waits for the handshake.
func (e *Endpoint) Dial(ctx context.Context, addr string, remoteStatic, psk [32]byte) (*Conn, error) {
	return e.DialWith(ctx, addr, remoteStatic, psk, DialOptions{})
}

// DialOptions adjust one Dial.
type DialOptions struct {
	// Retry, when set, resends the handshake initiation every Retry for
	// the first RetryFor of the dial (hole punching: the peer's NAT drops
	// the first initiations until the peer's own packets open it).
	Retry, RetryFor time.Duration
}

// DialWith is Dial with options.
func (e *Endpoint) DialWith(ctx context.Context, addr string, remoteStatic, psk [32]byte, opts DialOptions) (*Conn, error) {
	ap, err := resolve(addr)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	if e.closing || e.ctx.Err() != nil {
		e.mu.Unlock()
		return nil, ErrEndpointClosed
	}
	now := time.Now()
	cc, err := e.ep.Connect(now, ap, remoteStatic, psk)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	if opts.Retry > 0 {
		cc.SetHandshakeRetry(now, opts.Retry, now.Add(opts.RetryFor))
	}
	c := e.startConn(cc)
	e.mu.Unlock()
	if err := c.waitEstablished(ctx); err != nil {
		c.Close()
		return nil, err
	}
	e.log.Debug("sudp: connected", "peer", addr, "cid", fmt.Sprintf("%016x", cc.LocalCID()))
	return c, nil
}

// SendRaw sends b to addr from the endpoint's socket, outside every
// connection: a protocol sharing the port (Config.Foreign) uses the same
// NAT mapping as the endpoint's connections, which is the point of hole
// punching. b's first byte must be at or above ForeignMin, so that no
// SUDP endpoint takes it for a packet.
func (e *Endpoint) SendRaw(addr netip.AddrPort, b []byte) error {
	if len(b) == 0 || b[0] < ForeignMin {
		return errors.New("sudp: a raw datagram must start at or above ForeignMin")
	}
	if e.ctx.Err() != nil {
		return ErrEndpointClosed
	}
	bt := socket.NewBatch(len(b))
	bt.To = addr
	copy(bt.Next(len(b)), b)
	bt.Commit(len(b))
	return e.sock.Send(bt)
}

func resolve(addr string) (netip.AddrPort, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("sudp: resolve %s: %w", addr, err)
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Accept waits for the next incoming connection that completed its
// handshake and proved its keys.
func (e *Endpoint) Accept(ctx context.Context) (*Conn, error) {
	select {
	case c := <-e.accept:
		return c, nil
	case <-e.closed:
		return nil, ErrEndpointClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close closes every connection (with a CLOSE frame) and the socket.
func (e *Endpoint) Close() error {
	e.once.Do(func() {
		e.mu.Lock()
		// No dial starts a connection from here on: one that did before
		// is in the snapshot below, and its wg.Add happened before the
		// Wait at the end (a dial racing Close used to add to the group
		// while Close waited on it — the race detector caught it).
		e.closing = true
		conns := make([]*Conn, 0, len(e.conns))
		for _, c := range e.conns {
			conns = append(conns, c)
		}
		e.mu.Unlock()
		// CLOSE every connection, then give their loops one short,
		// shared moment to put the frames on the wire.
		for _, c := range conns {
			_ = c.Close()
		}
		deadline := time.After(50 * time.Millisecond)
	wait:
		for _, c := range conns {
			select {
			case <-c.closeSent:
			case <-c.exited:
			case <-deadline:
				break wait
			}
		}
		e.cancel()
		close(e.closed)
		e.sock.Close()
	})
	e.wg.Wait()
	return nil
}

// Stats snapshots endpoint-level counters.
type Stats struct {
	Conns            int
	UnknownCID       uint64
	Malformed        uint64
	HandshakeDropped uint64
	Accepted         uint64
	// Unconfirmed is how many connections wait for their peer to prove
	// its keys; UnconfirmedEvicted and UnconfirmedExpired count those
	// dropped at MaxUnconfirmed and after the handshake timeout.
	Unconfirmed        int
	UnconfirmedEvicted uint64
	UnconfirmedExpired uint64
	// ResetsSent counts stateless resets sent for unknown connection ids;
	// ResetsLimited those withheld by the rate limits.
	ResetsSent    uint64
	ResetsLimited uint64
	// Foreign counts datagrams at or above ForeignMin dropped for want of
	// a Foreign handler.
	Foreign uint64
	// DuplicateInitiations counts exact copies of an answered initiation
	// (a punching dialer's), answered with the same response again.
	DuplicateInitiations uint64
	Handshake            handshake.Stats
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.ep.Stats()
	return Stats{
		Conns:                e.ep.Conns(),
		UnknownCID:           s.UnknownCID.Load(),
		Malformed:            s.Malformed.Load(),
		HandshakeDropped:     s.HandshakeDropped.Load(),
		Accepted:             s.Accepted.Load(),
		Unconfirmed:          e.ep.Unconfirmed(),
		UnconfirmedEvicted:   s.UnconfirmedEvicted.Load(),
		UnconfirmedExpired:   s.UnconfirmedExpired.Load(),
		ResetsSent:           s.ResetsSent.Load(),
		ResetsLimited:        s.ResetsLimited.Load(),
		Foreign:              e.foreign.Load(),
		DuplicateInitiations: s.DuplicateInitiations.Load(),
		Handshake:            e.ep.HandshakeStats(),
	}
}

// startConn wraps a core connection and starts its send/timer goroutine.
// e.mu is held.
func (e *Endpoint) startConn(cc *core.Conn) *Conn {
	c := newConn(e, cc)
	c.rlim.bucket = cc.Session().RecvLimit
	e.conns[cc] = c
	e.wg.Add(1)
	go c.run()
	return c
}

// removeConn forgets a finished connection, keeping its counters in the
// endpoint's totals. e.mu is not held.
func (e *Endpoint) removeConn(c *Conn) {
	st := c.Stats()
	e.mu.Lock()
	if _, ok := e.conns[c.cc]; ok {
		e.ended.add(&st)
	}
	e.ep.Remove(c.cc)
	delete(e.conns, c.cc)
	e.mu.Unlock()
}

// readLoop receives datagram batches and hands each to its connection.
func (e *Endpoint) readLoop() {
	defer e.wg.Done()
	batch := make([]socket.Datagram, 0, socket.ReadBatch*64)
	touched := make(map[*Conn]struct{})
	for {
		var err error
		batch, err = e.sock.Read(batch[:0])
		if err != nil {
			if e.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			e.log.Warn("sudp: read", "err", err)
			continue
		}
		now := time.Now()
		var cur *Conn
		for i := range batch {
			d := &batch[i]
			if cur != nil && len(d.Data) > 0 && d.Data[0] == wire.TypeInitiation {
				// Handshake work must not stall the connection we hold.
				cur.mu.Unlock()
				cur = nil
			}
			if len(d.Data) > 0 && d.Data[0] >= ForeignMin {
				if e.cfg.Foreign != nil {
					e.cfg.Foreign(d.From, d.Data)
				} else {
					e.foreign.Add(1)
				}
				continue
			}
			c := e.route(now, d)
			if c == nil {
				continue
			}
			if c != cur {
				if cur != nil {
					cur.mu.Unlock()
				}
				cur = c
				cur.mu.Lock()
			}
			if e.overReceiveRate(c, now, len(d.Data)) {
				continue
			}
			wasConfirmed := c.cc.Confirmed()
			authentic, n := c.cc.PacketsReceived(), len(d.Data)
			c.cc.HandleDatagram(now, d.From, d.Data)
			if c.cc.PacketsReceived() == authentic {
				c.rlim.refund(n)
			}
			if !wasConfirmed && c.cc.Confirmed() {
				c.confirmedNow = true
			}
			touched[c] = struct{}{}
		}
		if cur != nil {
			cur.mu.Unlock()
		}
		for c := range touched {
			c.afterInput()
			delete(touched, c)
		}
	}
}

// route finds the connection for a datagram, running the responder for
// handshake initiations.
func (e *Endpoint) route(now time.Time, d *socket.Datagram) *Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	cc, initiation := e.ep.Route(d.Data)
	if initiation {
		reply, nc, replaced, err := e.ep.HandleInitiation(now, d.From, d.Data)
		if reply != nil {
			b := socket.NewBatch(len(reply))
			b.To = d.From
			copy(b.Next(len(reply)), reply)
			b.Commit(len(reply))
			_ = e.sock.Send(b)
		}
		if err != nil {
			e.log.Debug("sudp: initiation rejected", "from", d.From, "err", err)
			if e.cfg.Rejected != nil {
				e.cfg.Rejected(d.From, err)
			}
			return nil
		}
		if replaced != nil {
			if old := e.conns[replaced]; old != nil {
				delete(e.conns, replaced)
				go old.abandon()
			}
		}
		if nc != nil {
			c := e.startConn(nc)
			c.wake()
		}
		return nil
	}
	if cc == nil {
		// Data for a connection we do not have (we restarted, or it
		// ended): tell the peer with a stateless reset.
		if reset := e.ep.StatelessReset(now, d.From, d.Data); reset != nil {
			b := socket.NewBatch(len(reset))
			b.To = d.From
			copy(b.Next(len(reset)), reset)
			b.Commit(len(reset))
			_ = e.sock.Send(b)
		}
		return nil
	}
	return e.conns[cc]
}

func (e *Endpoint) deliverAccepted(c *Conn) {
	e.mu.Lock()
	e.ep.Confirmed(c.cc)
	e.mu.Unlock()
	select {
	case e.accept <- c:
	default:
		// Nobody is accepting: refuse rather than queue without bound.
		e.log.Warn("sudp: accept queue full, closing connection", "peer", c.RemoteAddr())
		go c.Close()
	}
}
