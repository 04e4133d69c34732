// Package ratelimit limits how often each source address may make the SUDP
// responder run a handshake. It is the step between "this initiation has a
// valid mac1 (and, under load, a valid cookie)" and the expensive Noise
// Diffie-Hellman work, as in WireGuard.
//
// Each source (an IPv4 address, or an IPv6 /64) has a token bucket. Time is
// passed in, as everywhere in the sans-I/O core, so the limiter is exact and
// testable with a fake clock.
//
// Memory is bounded by Config.MaxEntries. Entries are kept in least recently
// seen order, so the oldest is always at the front: stale ones are removed a
// few at a time inside Allow, without a goroutine or a timer. When the table
// is full and even the oldest entry is still active, a new source is refused
// (fail closed) rather than admitted untracked or allowed to push out an
// active entry:
//
//   - admitting untracked sources would switch the limit off exactly when an
//     attacker has filled the table, i.e. when it is needed;
//   - evicting an active entry would let an attacker cycle through addresses
//     to reset the bucket of the source it floods from.
//
// Refusing costs a genuine new peer one retry while the table is saturated.
// Because the responder asks for a cookie (a proof that the source address is
// real) before this limiter once it is under load, filling the table takes
// that many real, reachable addresses or /64s, not spoofed ones.
//
// A Limiter is not safe for concurrent use: the SUDP endpoint serialises
// handshake processing. Allow does no allocation once the table has grown.
package ratelimit

import (
	"net/netip"
	"time"
)

// Config sets a Limiter's parameters. Zero (or negative) fields take the
// defaults.
type Config struct {
	// Rate is the sustained number of initiations a second one source may
	// send. Default DefaultRate.
	Rate float64
	// Burst is the bucket size: how many a source may send back to back.
	// Default DefaultBurst.
	Burst int
	// MaxEntries bounds the number of sources tracked. Default
	// DefaultMaxEntries.
	MaxEntries int
}

// Limiter is a per-source token-bucket rate limiter. Create it with New.
type Limiter struct {
	cost       time.Duration // tokens are nanoseconds of allowance; one initiation costs this much
	maxTokens  time.Duration // a full bucket: cost * burst
	idle       time.Duration // a source idle this long has a full bucket again and is forgotten
	maxEntries int

	index   map[netip.Addr]int32 // source key -> position in entries
	entries []entry              // dense, in no particular order
	// head and tail of a doubly linked list through entries, in order of
	// last use: head is the least recently seen source. -1 when empty.
	head, tail int32
}

type entry struct {
	key        netip.Addr
	last       time.Time     // when the bucket was last refilled
	tokens     time.Duration // allowance left, at most maxTokens
	prev, next int32
}

// New returns a Limiter for cfg.
func New(cfg Config) *Limiter {
	if !(cfg.Rate > 0) { // also catches NaN
		cfg.Rate = DefaultRate
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	// Entries are indexed with int32 to keep them small; no deployment needs
	// more than two billion tracked sources.
	cfg.MaxEntries = min(cfg.MaxEntries, 1<<31-1)

	cost := time.Duration(float64(time.Second) / cfg.Rate)
	cost = max(cost, 1)
	maxTokens := cost * time.Duration(cfg.Burst)
	if maxTokens/time.Duration(cfg.Burst) != cost { // overflow: absurd burst
		maxTokens = 1<<63 - 1
	}
	return &Limiter{
		cost:       cost,
		maxTokens:  maxTokens,
		idle:       max(MinIdle, maxTokens),
		maxEntries: cfg.MaxEntries,
		index:      make(map[netip.Addr]int32),
		head:       -1,
		tail:       -1,
	}
}

// Len returns the number of sources currently tracked.
func (l *Limiter) Len() int { return len(l.entries) }

// Allow reports whether addr may start a handshake at time now, and if so
// takes one token from its bucket. An invalid address is refused.
//
// now should not go backwards; if it does, no tokens are added until it has
// caught up again, and the least-recently-seen order (which drives garbage
// collection) is only approximate.
func (l *Limiter) Allow(now time.Time, addr netip.Addr) bool {
	key, ok := sourceKey(addr)
	if !ok {
		return false
	}
	l.collect(now, CollectPerCall)

	if i, ok := l.index[key]; ok {
		e := &l.entries[i]
		if d := now.Sub(e.last); d > 0 {
			if d >= l.maxTokens-e.tokens {
				e.tokens = l.maxTokens
			} else {
				e.tokens += d
			}
			e.last = now
		}
		l.moveToBack(i)
		if e.tokens < l.cost {
			return false
		}
		e.tokens -= l.cost
		return true
	}

	// collect has just removed stale entries from the front of the list; if
	// the table is still full the oldest entry is active, hence all are.
	if len(l.entries) >= l.maxEntries {
		return false
	}
	i := int32(len(l.entries))
	l.entries = append(l.entries, entry{
		key:    key,
		last:   now,
		tokens: l.maxTokens - l.cost,
		prev:   -1,
		next:   -1,
	})
	l.index[key] = i
	l.pushBack(i)
	return true
}

// sourceKey maps an address to the unit that is limited: the address itself
// for IPv4 (including IPv4-mapped IPv6, which is the same host), the /64 for
// IPv6. Zones are dropped: they name a local interface, not a remote host.
func sourceKey(addr netip.Addr) (netip.Addr, bool) {
	if !addr.IsValid() {
		return netip.Addr{}, false
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is4() {
		return addr, true
	}
	p, err := addr.Prefix(IPv6PrefixBits)
	if err != nil {
		return netip.Addr{}, false
	}
	return p.Addr(), true
}

// collect removes up to n entries from the front of the list whose bucket has
// been full and idle for l.idle. The list is in order of last use, so it stops
// at the first active entry.
func (l *Limiter) collect(now time.Time, n int) {
	for ; n > 0 && l.head >= 0; n-- {
		if now.Sub(l.entries[l.head].last) < l.idle {
			return
		}
		l.remove(l.head)
	}
}

// remove deletes entry i, moving the last entry of the slice into its place
// so that entries stays dense.
func (l *Limiter) remove(i int32) {
	l.unlink(i)
	delete(l.index, l.entries[i].key)
	last := int32(len(l.entries) - 1)
	if i != last {
		l.entries[i] = l.entries[last]
		moved := &l.entries[i]
		if moved.prev >= 0 {
			l.entries[moved.prev].next = i
		} else {
			l.head = i
		}
		if moved.next >= 0 {
			l.entries[moved.next].prev = i
		} else {
			l.tail = i
		}
		l.index[moved.key] = i
	}
	l.entries[last] = entry{}
	l.entries = l.entries[:last]
}

func (l *Limiter) unlink(i int32) {
	e := &l.entries[i]
	if e.prev >= 0 {
		l.entries[e.prev].next = e.next
	} else {
		l.head = e.next
	}
	if e.next >= 0 {
		l.entries[e.next].prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = -1, -1
}

func (l *Limiter) pushBack(i int32) {
	e := &l.entries[i]
	e.prev, e.next = l.tail, -1
	if l.tail >= 0 {
		l.entries[l.tail].next = i
	} else {
		l.head = i
	}
	l.tail = i
}

func (l *Limiter) moveToBack(i int32) {
	if l.tail == i {
		return
	}
	l.unlink(i)
	l.pushBack(i)
}
