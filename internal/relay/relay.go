package relay

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/socket"
)

// Config configures a Relay.
type Config struct {
	// ListenIP is the address the allocation ports are opened on (the
	// relay host's public address, or 0.0.0.0). Default 0.0.0.0.
	ListenIP netip.Addr
	// Advertise is the address agents send to, named in every Allocation
	// (the relay's public address when it sits behind a port forward).
	// Default ListenIP, which then must not be unspecified.
	Advertise netip.Addr
	// PortLo and PortHi are the inclusive range allocation ports are
	// taken from (two per allocation); the firewall opens exactly this
	// range. Both zero: ephemeral ports (tests).
	PortLo, PortHi uint16
	// Limits bound allocations and forwarding.
	Limits Limits
	// Logger receives allocation events (never keys).
	Logger *slog.Logger
}

// Allocation is what the controller (the MMC) hands on to the agents: the
// id they bind with, and the port each side sends to.
type Allocation struct {
	ID    AllocID
	AddrA netip.AddrPort // side A sends here (relay:Pa)
	AddrB netip.AddrPort // side B sends here (relay:Pb)
}

// Errors of Relay.
var (
	ErrClosed       = errors.New("relay: closed")
	ErrNoPorts      = errors.New("relay: no two free ports in the range")
	ErrUnknownAlloc = errors.New("relay: no such allocation")
	errBadPortRange = errors.New("relay: bad port range")
	errNoAdvertise  = errors.New("relay: listening on an unspecified address needs the address to advertise")
)

const (
	// fwdMaxSize is a forward batch's slot; larger datagrams go alone.
	fwdMaxSize = 2048
	// expireTickCeiling is the longest pause between expiry sweeps.
	expireTickCeiling = time.Second
)

// Relay is the I/O driver: it owns the allocation ports and a reader
// goroutine per port, and runs every datagram through the Core.
type Relay struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex // guards core, allocs, inUse, nextPort, noPorts, closed
	core     *Core
	allocs   map[AllocID]*portPair
	inUse    map[uint16]bool
	nextPort uint16
	noPorts  uint64
	closed   bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Test hooks, set before the first Allocate: tap sees every datagram
	// received (on the reader goroutine, b only valid during the call);
	// tamper replaces forwarding: it is given each datagram the core let
	// through and calls emit for whatever it wants sent instead (emit
	// copies).
	tap    func(side Side, from netip.AddrPort, b []byte)
	tamper func(side Side, b []byte, emit func([]byte))
}

type portPair struct {
	id    AllocID
	socks [2]*socket.Conn
	ports [2]uint16
}

// New starts a relay with no allocations.
func New(cfg Config) (*Relay, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if !cfg.ListenIP.IsValid() {
		cfg.ListenIP = netip.IPv4Unspecified()
	}
	if !cfg.Advertise.IsValid() {
		cfg.Advertise = cfg.ListenIP
	}
	if cfg.Advertise.IsUnspecified() {
		return nil, errNoAdvertise
	}
	if (cfg.PortLo == 0) != (cfg.PortHi == 0) || cfg.PortHi < cfg.PortLo || (cfg.PortLo != 0 && cfg.PortHi == cfg.PortLo) {
		return nil, fmt.Errorf("%w: %d-%d (need two ports at least, or none for ephemeral)", errBadPortRange, cfg.PortLo, cfg.PortHi)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{
		cfg:      cfg,
		log:      cfg.Logger,
		core:     NewCore(time.Now(), cfg.Limits),
		allocs:   make(map[AllocID]*portPair),
		inUse:    make(map[uint16]bool),
		nextPort: cfg.PortLo,
		ctx:      ctx,
		cancel:   cancel,
	}
	r.wg.Add(1)
	go r.expireLoop()
	return r, nil
}

// Limits returns the limits in force.
func (r *Relay) Limits() Limits { return r.core.Limits() }

// Allocate creates an allocation whose sides bind with keyA and keyB (the
// caller keeps and zeroes its copies) and opens its two ports.
func (r *Relay) Allocate(ctx context.Context, keyA, keyB [KeySize]byte) (Allocation, error) {
	defer clear(keyA[:])
	defer clear(keyB[:])
	if err := ctx.Err(); err != nil {
		return Allocation{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Allocation{}, ErrClosed
	}
	id, err := r.newID()
	if err != nil {
		return Allocation{}, err
	}
	now := time.Now()
	if err := r.core.Allocate(now, id, &keyA, &keyB); err != nil {
		r.log.Warn("relay: allocation refused", "err", err)
		return Allocation{}, err
	}
	pp, err := r.openPair(id)
	if err != nil {
		r.core.unallocate(id)
		r.noPorts++
		r.log.Warn("relay: allocation refused", "err", err)
		return Allocation{}, err
	}
	r.allocs[id] = pp
	for s := range 2 {
		r.wg.Add(1)
		go r.serve(pp, Side(s))
	}
	al := Allocation{
		ID:    id,
		AddrA: netip.AddrPortFrom(r.cfg.Advertise, pp.ports[SideA]),
		AddrB: netip.AddrPortFrom(r.cfg.Advertise, pp.ports[SideB]),
	}
	r.log.Info("relay: allocated", "id", fmt.Sprintf("%016x", uint64(id)), "a", al.AddrA, "b", al.AddrB)
	return al, nil
}

// newID draws a random allocation id not in use. r.mu is held.
func (r *Relay) newID() (AllocID, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("relay: allocation id: %w", err)
		}
		id := AllocID(binary.BigEndian.Uint64(b[:]))
		if _, ok := r.allocs[id]; id != 0 && !ok {
			return id, nil
		}
	}
}

// openPair opens two ports for allocation id: ephemeral ones, or the next
// two of the range that are neither ours nor taken by another process.
// r.mu is held.
func (r *Relay) openPair(id AllocID) (*portPair, error) {
	pp := &portPair{id: id}
	fail := func(err error) (*portPair, error) {
		for _, s := range pp.socks {
			if s != nil {
				s.Close()
			}
		}
		return nil, err
	}
	if r.cfg.PortLo == 0 {
		for s := range 2 {
			c, err := socket.Listen(netip.AddrPortFrom(r.cfg.ListenIP, 0).String())
			if err != nil {
				return fail(fmt.Errorf("relay: listen: %w", err))
			}
			pp.socks[s], pp.ports[s] = c, c.LocalAddr().Port()
		}
		return pp, nil
	}
	span := int(r.cfg.PortHi) - int(r.cfg.PortLo) + 1
	got := 0
	for tried := 0; tried < span && got < 2; tried++ {
		p := r.nextPort
		if r.nextPort == r.cfg.PortHi {
			r.nextPort = r.cfg.PortLo
		} else {
			r.nextPort++
		}
		if r.inUse[p] {
			continue
		}
		c, err := socket.Listen(net.JoinHostPort(r.cfg.ListenIP.String(), strconv.Itoa(int(p))))
		if err != nil {
			continue // another process holds it
		}
		pp.socks[got], pp.ports[got] = c, p
		got++
	}
	if got < 2 {
		return fail(ErrNoPorts)
	}
	r.inUse[pp.ports[0]], r.inUse[pp.ports[1]] = true, true
	return pp, nil
}

// Release ends allocation id and closes its ports.
func (r *Relay) Release(id AllocID) error {
	r.mu.Lock()
	pp, ok := r.allocs[id]
	if ok {
		r.core.Release(id)
		r.dropPair(pp)
	}
	r.mu.Unlock()
	if !ok {
		return ErrUnknownAlloc
	}
	r.log.Info("relay: released", "id", fmt.Sprintf("%016x", uint64(id)))
	return nil
}

// dropPair forgets pp and closes its sockets, which ends its readers.
// r.mu is held.
func (r *Relay) dropPair(pp *portPair) {
	delete(r.allocs, pp.id)
	for s := range 2 {
		delete(r.inUse, pp.ports[s])
		pp.socks[s].Close()
	}
}

// Close releases every allocation and stops the relay's goroutines.
func (r *Relay) Close() error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		r.cancel()
		for id, pp := range r.allocs {
			r.core.Release(id)
			r.dropPair(pp)
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// expireLoop ends idle allocations.
func (r *Relay) expireLoop() {
	defer r.wg.Done()
	tick := min(expireTickCeiling, r.core.Limits().IdleTimeout/4)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case now := <-t.C:
			r.mu.Lock()
			for _, id := range r.core.Expire(now) {
				if pp := r.allocs[id]; pp != nil {
					r.dropPair(pp)
				}
				r.log.Info("relay: allocation expired (idle)", "id", fmt.Sprintf("%016x", uint64(id)))
			}
			r.mu.Unlock()
		}
	}
}

// serve reads side's port of pp until it is closed, forwarding what the
// core lets through out of the other port in batches.
func (r *Relay) serve(pp *portPair, side Side) {
	defer r.wg.Done()
	in, out := pp.socks[side], pp.socks[side.Other()]
	batch := make([]socket.Datagram, 0, socket.ReadBatch*64)
	acts := make([]Action, 0, cap(batch))
	fwd := socket.NewBatch(fwdMaxSize)
	send := func(c *socket.Conn, b *socket.Batch) {
		if err := c.Send(b); err != nil && !errors.Is(err, net.ErrClosed) {
			r.log.Debug("relay: send", "to", b.To, "err", err)
		}
		b.Reset()
	}
	emit := func(to netip.AddrPort, d []byte) {
		if len(d) > fwdMaxSize {
			one := socket.NewBatch(len(d))
			one.To = to
			copy(one.Next(len(d)), d)
			one.Commit(len(d))
			send(out, one)
			return
		}
		if fwd.Len() > 0 && (fwd.To != to || fwd.Full(fwdMaxSize)) {
			send(out, fwd)
		}
		fwd.To = to
		copy(fwd.Next(len(d)), d)
		fwd.Commit(len(d))
	}
	for {
		var err error
		batch, err = in.Read(batch[:0])
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.ctx.Err() != nil {
				return
			}
			r.log.Warn("relay: read", "port", pp.ports[side], "err", err)
			continue
		}
		now := time.Now()
		acts = acts[:0]
		r.mu.Lock()
		for i := range batch {
			acts = append(acts, r.core.Handle(now, pp.id, side, batch[i].From, batch[i].Data))
		}
		r.mu.Unlock()
		for i, a := range acts {
			d := batch[i].Data
			if r.tap != nil {
				r.tap(side, batch[i].From, d)
			}
			switch a.Kind {
			case Forward:
				if r.tamper != nil {
					to := a.To
					r.tamper(side, d, func(b []byte) { emit(to, b) })
				} else {
					emit(a.To, d)
				}
			case Reply:
				ack := socket.NewBatch(len(a.Ack))
				ack.To = a.To
				copy(ack.Next(len(a.Ack)), a.Ack)
				ack.Commit(len(a.Ack))
				send(in, ack)
			}
		}
		if fwd.Len() > 0 {
			send(out, fwd)
		}
	}
}

// RelayStats are the relay's counters: the core's, and allocations refused
// for want of ports.
type RelayStats struct {
	Stats
	AllocsNoPorts uint64
}

// Stats returns the relay's counters.
func (r *Relay) Stats() RelayStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return RelayStats{Stats: r.core.Stats(), AllocsNoPorts: r.noPorts}
}

// Bound returns side's bound address in allocation id (invalid when not
// bound).
func (r *Relay) Bound(id AllocID, side Side) netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.core.Bound(id, side)
}

// Allocator is what a relay's controller (the MMC) needs of it, whether the
// relay is embedded (a *Relay) or elsewhere.
type Allocator interface {
	Allocate(ctx context.Context, keyA, keyB [KeySize]byte) (Allocation, error)
	Release(id AllocID) error
}

var _ Allocator = (*Relay)(nil)
