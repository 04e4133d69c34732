// Package link models one direction of an emulated WAN link, sans I/O.
//
// A Link has no goroutines and reads no clock: the caller passes the current
// time to Enqueue and Dequeue and asks NextDelivery when to come back. Given
// the same Config (including Seed) and the same sequence of calls it makes the
// same decisions, so tests run in virtual time.
//
// The model, in the order a packet meets it:
//
//  1. Bottleneck. Packets are serialised one after another at Rate bits/s on
//     their IP size: departure = max(now, previous departure) + 8·size/Rate.
//     In front of it sits a drop-tail queue of QueueBytes bytes (the bytes not
//     yet fully serialised, including the packet on the wire); a packet that
//     does not fit is dropped (DroppedQueue). An empty queue always accepts.
//  2. Loss, applied when the packet leaves the bottleneck, so a lost packet
//     still used its slot: the best goodput is Rate·(1−p). Loss is Bernoulli
//     with probability Loss, or Gilbert–Elliott when GE is set.
//  3. Propagation: Delay plus a uniform [0, Jitter) extra. Packets stay in FIFO
//     order (a packet is never delivered before the one in front of it), except
//     those picked by Reorder, which are held back by a further ReorderDelay
//     and overtaken by later packets. Keeping FIFO means a packet waits for
//     the one ahead of it, so when packets come closer together than Jitter
//     their delays crowd towards Delay+Jitter (as with netem's jitter plus
//     rate): jitter is then mostly extra delay, not spread.
//  4. Corruption (one bit of the transport payload flipped, checksum fixed up,
//     see corruptPacket) and duplication (the copy is delivered right after the
//     original).
//
// A Link is not safe for concurrent use, except Stats, which may be called
// from any goroutine at any time.
package link

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Defaults used when the corresponding Config field is zero.
const (
	// DefaultQueueDelay is the bottleneck buffer, expressed as time at Rate,
	// used when neither QueueBytes nor QueueDelay is set: 100 ms — about one
	// bandwidth-delay product of the 50–100 ms RTT paths Ferry targets, the
	// classic router sizing rule — and never less than MinDefaultQueueBytes.
	DefaultQueueDelay = 100 * time.Millisecond
	// MinDefaultQueueBytes is the floor of the default buffer (43 full-size
	// packets), so that slow links still absorb a burst.
	MinDefaultQueueBytes = 64 << 10
	// DefaultReorderDelay is the hold-back of a reordered packet when
	// ReorderDelay is zero and Jitter is zero (otherwise 2·Jitter).
	DefaultReorderDelay = time.Millisecond
)

// GilbertElliott is a two-state bursty loss model. Before each packet the
// state may change (Good→Bad with probability P, Bad→Good with probability
// R); the packet is then lost with probability K in Good and H in Bad. With
// K=0 and H=1 (the simple Gilbert model) the mean loss burst is 1/R packets
// and the mean loss rate P/(P+R).
type GilbertElliott struct {
	P float64 // probability Good → Bad, per packet
	R float64 // probability Bad → Good, per packet
	K float64 // loss probability in Good
	H float64 // loss probability in Bad
}

// LossRate is the long-run loss probability of the model.
func (g GilbertElliott) LossRate() float64 {
	if g.P+g.R == 0 {
		return g.K
	}
	return (g.R*g.K + g.P*g.H) / (g.P + g.R)
}

// Config describes one direction of a link. The zero Config is a perfect,
// unlimited, zero-delay link.
type Config struct {
	Delay  time.Duration   // one-way propagation delay
	Jitter time.Duration   // extra uniform [0, Jitter) delay per packet; FIFO order is kept
	Loss   float64         // Bernoulli loss probability after the bottleneck
	GE     *GilbertElliott // bursty loss; replaces Loss when set
	Rate   float64         // bottleneck rate, bits/s of IP packet size; 0 = unlimited (and no queue)

	// The drop-tail buffer in front of the bottleneck, either in bytes or in
	// time at Rate (set at most one). If both are zero: DefaultQueueDelay at
	// Rate, at least MinDefaultQueueBytes. Ignored when Rate is 0.
	QueueBytes int
	QueueDelay time.Duration

	Reorder      float64       // probability a packet is held back by ReorderDelay
	ReorderDelay time.Duration // hold-back of a reordered packet; 0 = 2·Jitter, or DefaultReorderDelay without jitter
	Duplicate    float64       // probability a packet is delivered twice
	Corrupt      float64       // probability one payload bit is flipped (see corruptPacket)

	// Seed seeds the link's random source; equal seeds give equal decisions.
	// SetConfig ignores it (the random stream continues). Give the two
	// directions of a path different seeds, or their losses coincide.
	Seed uint64
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.Delay < 0 || c.Jitter < 0 || c.QueueDelay < 0 || c.ReorderDelay < 0 {
		return errors.New("link: negative duration")
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("link: invalid rate %v", c.Rate)
	}
	if c.QueueBytes < 0 {
		return fmt.Errorf("link: negative queue %d", c.QueueBytes)
	}
	if c.QueueBytes > 0 && c.QueueDelay > 0 {
		return errors.New("link: set the queue in bytes or in time, not both")
	}
	names := []string{"loss", "reorder", "duplicate", "corrupt"}
	vals := []float64{c.Loss, c.Reorder, c.Duplicate, c.Corrupt}
	if g := c.GE; g != nil {
		names = append(names, "GE p", "GE r", "GE k", "GE h")
		vals = append(vals, g.P, g.R, g.K, g.H)
	}
	for i, v := range vals {
		if !(v >= 0 && v <= 1) { // also rejects NaN
			return fmt.Errorf("link: %s probability %v not in [0,1]", names[i], v)
		}
	}
	return nil
}

// QueueLimit is the drop-tail buffer in bytes that c implies, 0 when there is
// no bottleneck.
func (c Config) QueueLimit() int {
	if c.Rate == 0 {
		return 0
	}
	if c.QueueBytes > 0 {
		return c.QueueBytes
	}
	d := c.QueueDelay
	if d == 0 {
		d = DefaultQueueDelay
	}
	b := int(c.Rate * d.Seconds() / 8)
	if c.QueueDelay == 0 && b < MinDefaultQueueBytes {
		b = MinDefaultQueueBytes
	}
	return b
}

func (c Config) reorderDelay() time.Duration {
	switch {
	case c.ReorderDelay > 0:
		return c.ReorderDelay
	case c.Jitter > 0:
		return 2 * c.Jitter
	}
	return DefaultReorderDelay
}

// Stats are a link's counters. Enqueued = DroppedQueue + DroppedLoss +
// (Delivered − Duplicated) + QueuedPackets + InFlightPackets.
type Stats struct {
	Enqueued       uint64 // packets offered to Enqueue
	Delivered      uint64 // packets returned by Dequeue, duplicates included
	DeliveredBytes uint64
	DroppedLoss    uint64 // lost after the bottleneck (random or Gilbert–Elliott)
	DroppedQueue   uint64 // dropped by the full drop-tail queue
	Duplicated     uint64 // extra copies made
	Corrupted      uint64 // packets with a flipped bit
	Reordered      uint64 // packets held back by ReorderDelay

	// Gauges, as of the last Enqueue or Dequeue.
	QueuedBytes     uint64 // bytes waiting for, or on, the bottleneck
	QueuedPackets   uint64
	InFlightPackets uint64 // past the bottleneck, waiting for their delivery time
}

type counters struct {
	enqueued, delivered, deliveredBytes, droppedLoss, droppedQueue,
	duplicated, corrupted, reordered, queuedBytes, queuedPackets, inFlight atomic.Uint64
}

// entry is a packet with its time: departure from the bottleneck while in
// the queue, delivery time afterwards (nanoseconds since Link.base).
type entry struct {
	pkt []byte
	at  int64
	seq uint64
}

// Link is one direction of an emulated link. Create it with New.
type Link struct {
	cfg      Config
	limit    int     // drop-tail bytes, 0 = none
	nsPerBit float64 // 1e9/Rate, 0 when unlimited
	reorderD int64
	rng      *rand.Rand
	geBad    bool

	based bool
	base  time.Time

	queue      ring // waiting for / on the bottleneck, at = departure
	queueBytes int
	lastDepart int64

	inorder     ring      // past the bottleneck, non-decreasing at
	held        entryHeap // reordered packets, by (at, seq)
	lastInOrder int64
	seq         uint64

	alloc   func(n int) []byte
	release func([]byte)

	c counters
}

// New returns a link with configuration cfg.
func New(cfg Config) (*Link, error) {
	l := &Link{rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	if err := l.SetConfig(cfg); err != nil {
		return nil, err
	}
	return l, nil
}

// SetConfig changes the configuration at run time, keeping queued packets.
// Packets already waiting for the bottleneck keep their departure times; the
// new loss, delay, jitter, reordering, duplication and corruption apply to
// packets as they leave the bottleneck from the next call on, the new rate and
// queue size to packets enqueued from now on. Delivery order stays FIFO
// across the change (a shorter delay does not let new packets overtake).
func (l *Link) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	l.cfg = cfg
	l.limit = cfg.QueueLimit()
	l.nsPerBit = 0
	if cfg.Rate > 0 {
		l.nsPerBit = 1e9 / cfg.Rate
	}
	l.reorderD = int64(cfg.reorderDelay())
	return nil
}

// Config returns the current configuration.
func (l *Link) Config() Config { return l.cfg }

// SetBuffers sets how the link allocates the copy of a duplicated packet
// (default make) and where it hands packets it drops (default: nowhere), so a
// caller with a buffer pool can run without per-packet allocation. Both are
// called from within Enqueue and Dequeue.
func (l *Link) SetBuffers(alloc func(n int) []byte, release func([]byte)) {
	l.alloc, l.release = alloc, release
}

func (l *Link) ns(now time.Time) int64 {
	if !l.based {
		l.based, l.base = true, now
	}
	return int64(now.Sub(l.base))
}

func (l *Link) drop(pkt []byte) {
	if l.release != nil {
		l.release(pkt)
	}
}

// Enqueue offers pkt to the link at time now. The link owns pkt from here on:
// it comes back from Dequeue, or is handed to the release function of
// SetBuffers when dropped.
func (l *Link) Enqueue(now time.Time, pkt []byte) {
	t := l.ns(now)
	l.advance(t)
	l.c.enqueued.Add(1)
	size := len(pkt)
	if l.limit > 0 && l.queue.n > 0 && l.queueBytes+size > l.limit {
		l.c.droppedQueue.Add(1)
		l.drop(pkt)
		l.gauges()
		return
	}
	start := max(t, l.lastDepart)
	l.lastDepart = start + int64(math.Round(float64(size)*8*l.nsPerBit))
	l.queue.push(entry{pkt: pkt, at: l.lastDepart})
	l.queueBytes += size
	l.advance(t) // an unlimited link departs at once
	l.gauges()
}

// advance moves the packets that have left the bottleneck by t into the
// propagation stage.
func (l *Link) advance(t int64) {
	for l.queue.n > 0 && l.queue.front().at <= t {
		e := l.queue.pop()
		l.queueBytes -= len(e.pkt)
		l.propagate(e.pkt, e.at)
	}
}

func (l *Link) lost() bool {
	if ge := l.cfg.GE; ge != nil {
		if l.geBad {
			if ge.R > 0 && l.rng.Float64() < ge.R {
				l.geBad = false
			}
		} else if ge.P > 0 && l.rng.Float64() < ge.P {
			l.geBad = true
		}
		p := ge.K
		if l.geBad {
			p = ge.H
		}
		return p > 0 && l.rng.Float64() < p
	}
	return l.cfg.Loss > 0 && l.rng.Float64() < l.cfg.Loss
}

func (l *Link) propagate(pkt []byte, depart int64) {
	if l.lost() {
		l.c.droppedLoss.Add(1)
		l.drop(pkt)
		return
	}
	cfg := &l.cfg
	at := depart + int64(cfg.Delay)
	if cfg.Jitter > 0 {
		at += l.rng.Int64N(int64(cfg.Jitter))
	}
	if cfg.Corrupt > 0 && l.rng.Float64() < cfg.Corrupt && corruptPacket(pkt, l.rng) {
		l.c.corrupted.Add(1)
	}
	var dup []byte
	if cfg.Duplicate > 0 && l.rng.Float64() < cfg.Duplicate {
		if l.alloc != nil {
			dup = l.alloc(len(pkt))[:len(pkt)]
		} else {
			dup = make([]byte, len(pkt))
		}
		copy(dup, pkt)
		l.c.duplicated.Add(1)
	}
	if cfg.Reorder > 0 && l.rng.Float64() < cfg.Reorder {
		l.c.reordered.Add(1)
		at += l.reorderD
		l.seq++
		l.held.push(entry{pkt: pkt, at: at, seq: l.seq})
		if dup != nil {
			l.seq++
			l.held.push(entry{pkt: dup, at: at, seq: l.seq})
		}
		return
	}
	at = max(at, l.lastInOrder)
	l.lastInOrder = at
	l.seq++
	l.inorder.push(entry{pkt: pkt, at: at, seq: l.seq})
	if dup != nil {
		l.seq++
		l.inorder.push(entry{pkt: dup, at: at, seq: l.seq})
	}
}

// NextDelivery reports when Dequeue may next return a packet; ok is false
// when the link holds no packet. The time is exact for packets past the
// bottleneck, and a lower bound (departure + Delay) for one still queued: a
// Dequeue at that time may return nothing if the packet is then lost or
// jittered, after which NextDelivery tells the real time.
func (l *Link) NextDelivery() (next time.Time, ok bool) {
	t := int64(math.MaxInt64)
	if l.inorder.n > 0 {
		t = l.inorder.front().at
	}
	if len(l.held) > 0 && l.held[0].at < t {
		t = l.held[0].at
	}
	if l.queue.n > 0 {
		if q := l.queue.front().at + int64(l.cfg.Delay); q < t {
			t = q
		}
	}
	if t == math.MaxInt64 {
		return time.Time{}, false
	}
	return l.base.Add(time.Duration(t)), true
}

// Dequeue appends to out the packets due at or before now, in delivery order,
// and returns it. The caller owns the returned packets.
func (l *Link) Dequeue(now time.Time, out [][]byte) [][]byte {
	t := l.ns(now)
	l.advance(t)
	for {
		var e entry
		switch {
		case l.inorder.n > 0 && l.inorder.front().at <= t &&
			(len(l.held) == 0 || l.inorder.front().before(&l.held[0])):
			e = l.inorder.pop()
		case len(l.held) > 0 && l.held[0].at <= t:
			e = l.held.pop()
		default:
			l.gauges()
			return out
		}
		l.c.delivered.Add(1)
		l.c.deliveredBytes.Add(uint64(len(e.pkt)))
		out = append(out, e.pkt)
	}
}

func (l *Link) gauges() {
	l.c.queuedBytes.Store(uint64(l.queueBytes))
	l.c.queuedPackets.Store(uint64(l.queue.n))
	l.c.inFlight.Store(uint64(l.inorder.n + len(l.held)))
}

// Stats returns the counters; safe to call from any goroutine.
func (l *Link) Stats() Stats {
	return Stats{
		Enqueued:        l.c.enqueued.Load(),
		Delivered:       l.c.delivered.Load(),
		DeliveredBytes:  l.c.deliveredBytes.Load(),
		DroppedLoss:     l.c.droppedLoss.Load(),
		DroppedQueue:    l.c.droppedQueue.Load(),
		Duplicated:      l.c.duplicated.Load(),
		Corrupted:       l.c.corrupted.Load(),
		Reordered:       l.c.reordered.Load(),
		QueuedBytes:     l.c.queuedBytes.Load(),
		QueuedPackets:   l.c.queuedPackets.Load(),
		InFlightPackets: l.c.inFlight.Load(),
	}
}

func (e *entry) before(o *entry) bool {
	return e.at < o.at || (e.at == o.at && e.seq < o.seq)
}

// ring is a FIFO of entries that reuses its storage (power-of-two size).
type ring struct {
	buf  []entry
	head int
	n    int
}

func (r *ring) push(e entry) {
	if r.n == len(r.buf) {
		size := max(64, 2*len(r.buf))
		nb := make([]entry, size)
		for i := 0; i < r.n; i++ {
			nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = e
	r.n++
}

func (r *ring) front() *entry { return &r.buf[r.head] }

func (r *ring) pop() entry {
	e := r.buf[r.head]
	r.buf[r.head] = entry{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return e
}

// entryHeap is a binary min-heap by (at, seq); no interface boxing.
type entryHeap []entry

func (h *entryHeap) push(e entry) {
	*h = append(*h, e)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s[i].before(&s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *entryHeap) pop() entry {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s[last] = entry{}
	s = s[:last]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(s) && s[l].before(&s[m]) {
			m = l
		}
		if r < len(s) && s[r].before(&s[m]) {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}
