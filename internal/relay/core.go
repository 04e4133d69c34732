package relay

import (
	"errors"
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// Side is one end of an allocation: A (port Pa) or B (port Pb).
type Side uint8

// The two sides of an allocation.
const (
	SideA Side = 0
	SideB Side = 1
)

// Other is the side a datagram received on s is forwarded to.
func (s Side) Other() Side { return s ^ 1 }

func (s Side) String() string {
	if s == SideA {
		return "a"
	}
	return "b"
}

// Limits bound what a relay holds and forwards. Zero fields take the
// defaults (DefaultLimits).
type Limits struct {
	// MaxAllocations caps the allocations held at once.
	MaxAllocations int
	// IdleTimeout expires an allocation that forwarded nothing and
	// accepted no bind for this long (its agents are gone and nobody
	// released it).
	IdleTimeout time.Duration
	// AllocPackets and AllocBytes are each allocation's forwarding rate
	// (per second, both directions together); GlobalPackets and
	// GlobalBytes the whole relay's.
	AllocPackets, AllocBytes   float64
	GlobalPackets, GlobalBytes float64
	// Burst sizes every forwarding bucket: what the rate allows in this
	// much time, back to back.
	Burst time.Duration
	// Bind limits bind attempts (any datagram starting with Magic) per
	// source address, before any MAC is computed.
	Bind ratelimit.Config
}

// DefaultLimits are sized so that the relay is not the bottleneck of one
// migration on a 10 Gbit/s host (an allocation may forward 8 Gbit/s, 1 Mi
// packets/s) while one allocation cannot take the whole relay (16 Gbit/s):
// a token-bucket policer drops what exceeds it, which SUDP's congestion
// control reads as loss, so a limit a link reaches costs it more than the
// excess (on loopback, a 256 MiB/s limit dropped 6 % of the packets of a
// 64 MiB stream and made it 35 % slower).
// Each allocation's two ports hold about 2 MiB of receive buffers (batched
// receive with offload), so 256 allocations cost about 512 MiB at most.
// An honest agent binds a few times a second at most (retries 200 ms
// apart, then a keepalive every few seconds), so 50 binds a second from
// one address leaves room for a whole site behind one NAT address.
var DefaultLimits = Limits{
	MaxAllocations: 256,
	IdleTimeout:    60 * time.Second,
	AllocPackets:   1 << 20,
	AllocBytes:     1 << 30,
	GlobalPackets:  2 << 20,
	GlobalBytes:    2 << 30,
	Burst:          50 * time.Millisecond,
	Bind:           ratelimit.Config{Rate: 50, Burst: 20, MaxEntries: 4096},
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.MaxAllocations <= 0 {
		l.MaxAllocations = d.MaxAllocations
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	pos := func(v *float64, def float64) {
		if !(*v > 0) { // also NaN
			*v = def
		}
	}
	pos(&l.AllocPackets, d.AllocPackets)
	pos(&l.AllocBytes, d.AllocBytes)
	pos(&l.GlobalPackets, d.GlobalPackets)
	pos(&l.GlobalBytes, d.GlobalBytes)
	if l.Burst <= 0 {
		l.Burst = d.Burst
	}
	if l.Bind == (ratelimit.Config{}) {
		l.Bind = d.Bind
	}
	return l
}

// Reason says why the core dropped a datagram (or refused a bind).
type Reason uint8

// Drop reasons; each has its own counter (Stats.Dropped).
const (
	// ReasonNone: not dropped.
	ReasonNone Reason = iota
	// DropNoAlloc: the port's allocation is gone (released or expired
	// while the datagram was in flight).
	DropNoAlloc
	// DropUnbound: from an address that is not its side's bound address
	// (a third party, or the agent before its bind or after its NAT moved).
	DropUnbound
	// DropPeerUnbound: the other side has not bound yet.
	DropPeerUnbound
	// DropAllocRate and DropGlobalRate: over the allocation's or the
	// relay's forwarding rate.
	DropAllocRate
	DropGlobalRate
	// DropBindRate: bind attempts from this source over Limits.Bind.
	DropBindRate
	// DropBindMalformed: starts with Magic but is not a bind.
	DropBindMalformed
	// DropBindBadMAC: not authentic for this allocation and side (wrong
	// key, or another allocation's id).
	DropBindBadMAC
	// DropBindReplay: authentic, but its counter is not above the last
	// accepted one (a replay, or an old bind overtaken by a newer one).
	DropBindReplay

	numReasons
)

var reasonNames = [numReasons]string{
	ReasonNone:        "none",
	DropNoAlloc:       "no_allocation",
	DropUnbound:       "unbound",
	DropPeerUnbound:   "peer_unbound",
	DropAllocRate:     "allocation_rate",
	DropGlobalRate:    "global_rate",
	DropBindRate:      "bind_rate",
	DropBindMalformed: "bind_malformed",
	DropBindBadMAC:    "bind_bad_mac",
	DropBindReplay:    "bind_replay",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// ActionKind is what the driver does with a datagram.
type ActionKind uint8

// Actions.
const (
	// Drop: nothing is sent (Action.Reason says why).
	Drop ActionKind = iota
	// Forward: send the datagram, unchanged, from the Out side's port
	// to To.
	Forward
	// Reply: send Action.Ack from the Out side's port (the port the
	// bind came in on) to To (the bind's source).
	Reply
)

// Action is the core's decision about one datagram.
type Action struct {
	Kind   ActionKind
	Reason Reason // for Drop
	Out    Side
	To     netip.AddrPort
	Ack    []byte // for Reply
}

// Stats are the core's counters.
type Stats struct {
	Allocations int // held now
	// AllocsCreated, AllocsRefused (MaxAllocations reached),
	// AllocsReleased and AllocsExpired (idle) count allocations.
	AllocsCreated, AllocsRefused, AllocsReleased, AllocsExpired uint64
	// BindsAccepted counts valid binds; BindsMoved those that changed a
	// side's bound address (first binds included).
	BindsAccepted, BindsMoved uint64
	// ForwardedPackets and ForwardedBytes count what was forwarded.
	ForwardedPackets, ForwardedBytes uint64
	// Dropped counts refused datagrams by Reason.
	Dropped [numReasons]uint64
}

// Errors of Core.Allocate.
var (
	ErrTooManyAllocations = errors.New("relay: allocation limit reached")
	ErrDuplicateID        = errors.New("relay: allocation id in use")
)

type allocation struct {
	keys    [2][KeySize]byte
	bound   [2]netip.AddrPort // zero: not bound yet
	counter [2]uint64         // last accepted bind counter per side
	last    time.Time         // last forward or accepted bind
	packets bucket
	bytes   bucket
}

// Core is the relay's sans-I/O decision state: allocations, bindings,
// limits and counters. Time is passed in. It is not safe for concurrent
// use; the driver serialises calls.
type Core struct {
	lim     Limits
	allocs  map[AllocID]*allocation
	packets bucket // global
	bytes   bucket
	binds   *ratelimit.Limiter
	stats   Stats
}

// NewCore returns an empty core.
func NewCore(now time.Time, lim Limits) *Core {
	lim = lim.withDefaults()
	return &Core{
		lim:     lim,
		allocs:  make(map[AllocID]*allocation),
		packets: newBucket(now, lim.GlobalPackets, lim.Burst, 1),
		bytes:   newBucket(now, lim.GlobalBytes, lim.Burst, maxDatagram),
		binds:   ratelimit.New(lim.Bind),
	}
}

// Limits returns the limits in force (defaults filled in).
func (c *Core) Limits() Limits { return c.lim }

// Allocate adds allocation id with the two sides' bind keys. Neither side
// is bound until it sends a valid bind.
func (c *Core) Allocate(now time.Time, id AllocID, keyA, keyB *[KeySize]byte) error {
	if _, ok := c.allocs[id]; ok {
		return ErrDuplicateID
	}
	if len(c.allocs) >= c.lim.MaxAllocations {
		c.stats.AllocsRefused++
		return ErrTooManyAllocations
	}
	c.allocs[id] = &allocation{
		keys:    [2][KeySize]byte{*keyA, *keyB},
		last:    now,
		packets: newBucket(now, c.lim.AllocPackets, c.lim.Burst, 1),
		bytes:   newBucket(now, c.lim.AllocBytes, c.lim.Burst, maxDatagram),
	}
	c.stats.AllocsCreated++
	return nil
}

// Release forgets allocation id (zeroing its keys) and reports whether it
// existed.
func (c *Core) Release(id AllocID) bool {
	if !c.forget(id) {
		return false
	}
	c.stats.AllocsReleased++
	return true
}

func (c *Core) forget(id AllocID) bool {
	a, ok := c.allocs[id]
	if !ok {
		return false
	}
	clear(a.keys[0][:])
	clear(a.keys[1][:])
	delete(c.allocs, id)
	return true
}

// Expire forgets the allocations idle for IdleTimeout at now and returns
// their ids (the driver closes their ports). It walks every allocation:
// the driver calls it about once a second and MaxAllocations bounds it.
func (c *Core) Expire(now time.Time) []AllocID {
	var gone []AllocID
	for id, a := range c.allocs {
		if now.Sub(a.last) >= c.lim.IdleTimeout {
			gone = append(gone, id)
		}
	}
	for _, id := range gone {
		c.forget(id)
		c.stats.AllocsExpired++
	}
	return gone
}

// Bound returns side's bound address in allocation id (invalid when not
// bound or no such allocation).
func (c *Core) Bound(id AllocID, side Side) netip.AddrPort {
	if a, ok := c.allocs[id]; ok {
		return a.bound[side&1]
	}
	return netip.AddrPort{}
}

// Stats returns the counters.
func (c *Core) Stats() Stats {
	s := c.stats
	s.Allocations = len(c.allocs)
	return s
}

func (c *Core) drop(r Reason) Action {
	c.stats.Dropped[r]++
	return Action{Kind: Drop, Reason: r}
}

// Handle decides what happens to datagram b, received at now from from on
// side's port of allocation id. b is not retained. Any datagram starting
// with Magic is a bind attempt and is never forwarded.
func (c *Core) Handle(now time.Time, id AllocID, side Side, from netip.AddrPort, b []byte) Action {
	side &= 1
	a, ok := c.allocs[id]
	if !ok {
		return c.drop(DropNoAlloc)
	}
	if len(b) > 0 && b[0] == Magic {
		return c.bind(now, id, a, side, from, b)
	}
	if !a.bound[side].IsValid() || from != a.bound[side] {
		return c.drop(DropUnbound)
	}
	to := a.bound[side.Other()]
	if !to.IsValid() {
		return c.drop(DropPeerUnbound)
	}
	n := float64(len(b))
	a.packets.refill(now)
	a.bytes.refill(now)
	if !a.packets.has(1) || !a.bytes.has(n) {
		return c.drop(DropAllocRate)
	}
	c.packets.refill(now)
	c.bytes.refill(now)
	if !c.packets.has(1) || !c.bytes.has(n) {
		return c.drop(DropGlobalRate)
	}
	a.packets.take(1)
	a.bytes.take(n)
	c.packets.take(1)
	c.bytes.take(n)
	a.last = now
	c.stats.ForwardedPackets++
	c.stats.ForwardedBytes += uint64(len(b))
	return Action{Kind: Forward, Out: side.Other(), To: to}
}

// bind checks a bind attempt: rate per source first (before any MAC work),
// then shape, then the MAC under this side's key, then the counter.
func (c *Core) bind(now time.Time, id AllocID, a *allocation, side Side, from netip.AddrPort, b []byte) Action {
	if !c.binds.Allow(now, from.Addr()) {
		return c.drop(DropBindRate)
	}
	m, err := ParseMsg(b)
	if err != nil || m.Kind != KindBind {
		return c.drop(DropBindMalformed)
	}
	if m.ID != id || !VerifyMsg(b, &a.keys[side]) {
		return c.drop(DropBindBadMAC)
	}
	if m.Counter <= a.counter[side] {
		return c.drop(DropBindReplay)
	}
	a.counter[side] = m.Counter
	a.last = now
	c.stats.BindsAccepted++
	if a.bound[side] != from {
		a.bound[side] = from
		c.stats.BindsMoved++
	}
	ack := AppendMsg(make([]byte, 0, MsgSize), Msg{Kind: KindAck, ID: id, Counter: m.Counter}, &a.keys[side])
	return Action{Kind: Reply, Out: side, To: from, Ack: ack}
}

// maxDatagram is the largest UDP payload.
const maxDatagram = 65535

// bucket is a token bucket with time passed in.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

// newBucket returns a full bucket refilling at rate a second and holding
// what the rate gives in burst, but at least least (one datagram's worth,
// so that a low rate still passes whole datagrams).
func newBucket(now time.Time, rate float64, burst time.Duration, least float64) bucket {
	size := max(rate*burst.Seconds(), least)
	return bucket{rate: rate, burst: size, tokens: size, last: now}
}

func (b *bucket) refill(now time.Time) {
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
}

func (b *bucket) has(n float64) bool { return b.tokens >= n }
func (b *bucket) take(n float64)     { b.tokens -= n }

// unallocate undoes an Allocate whose ports could not be opened: the
// allocation never existed for anyone.
func (c *Core) unallocate(id AllocID) {
	if c.forget(id) {
		c.stats.AllocsCreated--
	}
}
