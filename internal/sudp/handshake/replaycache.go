package handshake

import (
	"container/list"
	"time"
)

// Bounds of the replay table of unregistered keys (Peer.Unregistered).
const (
	// DefaultMaxUnregistered is how many unregistered keys' timestamps the
	// responder remembers at once.
	DefaultMaxUnregistered = 4096
	// DefaultUnregisteredTTL is how long it remembers one. It outlasts an
	// initiator's handshake retries (core's HandshakeTimeout, 20 s), so a
	// copy of an initiation replayed while its sender is still connecting
	// is refused.
	DefaultUnregisteredTTL = 2 * time.Minute
)

// replayCache holds the newest accepted timestamp of keys the lookup does
// not know (enrolments by a fresh key). Any number of such keys may be
// presented, so unlike the registered peers' map it is bounded: entries
// expire after ttl, and when it is full the oldest one is dropped. Every
// operation is O(1), whatever was inserted before.
//
// Forgetting a key weakens nothing that matters: a replayed initiation of a
// forgotten key yields at most one unconfirmed connection, which never
// confirms (the replayer lacks the ephemeral and static private keys) and
// expires after the handshake timeout.
type replayCache struct {
	max     int
	ttl     time.Duration
	entries map[[32]byte]*list.Element
	order   list.List // of *replayEntry, least recently written first
}

type replayEntry struct {
	key     [32]byte
	ts      timestamp
	expires time.Time
}

func newReplayCache(max int, ttl time.Duration) *replayCache {
	if max <= 0 {
		max = DefaultMaxUnregistered
	}
	if ttl <= 0 {
		ttl = DefaultUnregisteredTTL
	}
	return &replayCache{max: max, ttl: ttl, entries: make(map[[32]byte]*list.Element)}
}

// expire drops entries whose time is up; at most n of them, so that one
// call costs O(1) (each put calls it, which keeps pace with the inserts).
func (c *replayCache) expire(now time.Time, n int) {
	for ; n > 0; n-- {
		front := c.order.Front()
		if front == nil {
			return
		}
		e := front.Value.(*replayEntry)
		if now.Before(e.expires) {
			return
		}
		c.order.Remove(front)
		delete(c.entries, e.key)
	}
}

// get returns the newest timestamp accepted for key, if still remembered.
func (c *replayCache) get(now time.Time, key [32]byte) (timestamp, bool) {
	el, ok := c.entries[key]
	if !ok {
		return timestamp{}, false
	}
	e := el.Value.(*replayEntry)
	if !now.Before(e.expires) {
		return timestamp{}, false
	}
	return e.ts, true
}

// put records ts as key's newest timestamp. evicted reports that a
// still-fresh entry was dropped to make room.
func (c *replayCache) put(now time.Time, key [32]byte, ts timestamp) (evicted bool) {
	c.expire(now, 2)
	if el, ok := c.entries[key]; ok {
		e := el.Value.(*replayEntry)
		e.ts, e.expires = ts, now.Add(c.ttl)
		c.order.MoveToBack(el)
		return false
	}
	if len(c.entries) >= c.max {
		front := c.order.Front()
		c.order.Remove(front)
		delete(c.entries, front.Value.(*replayEntry).key)
		evicted = true
	}
	c.entries[key] = c.order.PushBack(&replayEntry{key: key, ts: ts, expires: now.Add(c.ttl)})
	return evicted
}

func (c *replayCache) len() int { return len(c.entries) }
