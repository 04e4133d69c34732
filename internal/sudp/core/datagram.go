package core

import (
	"errors"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// ErrDatagramTooLarge rejects a best-effort message above MaxDatagramMessage.
var ErrDatagramTooLarge = errors.New("sudp: best-effort message too large")

// datagramReassemblyTimeout bounds how long a partial best-effort message
// waits for its missing fragments; they are never retransmitted, so after a
// couple of RTTs they are not coming.
const datagramReassemblyTimeout = 2 * time.Second

type fragment struct {
	id, index, count uint64
	data             []byte
}

type partialRef struct {
	id uint64
	p  *partial
}

type partial struct {
	count    uint64
	size     int               // bytes charged: data plus per-fragment overhead
	frags    map[uint64][]byte // grows with what arrives, not with what is announced
	deadline time.Time
}

// Memory charged for bookkeeping, so that many empty fragments cannot hide
// behind a small byte count.
const (
	partialOverhead  = 128
	fragmentOverhead = 64
)

// datagrams holds best-effort messages in both directions.
type datagrams struct {
	maxMsg   int
	maxQueue int
	nextID   uint64

	out    [numPriorities][]fragment
	queued int

	in      map[uint64]*partial
	inBytes int
	// inOrder lists the partial messages as they were started, which is
	// also their deadline order (each gets the same timeout): the oldest
	// is found without scanning d.in, which a peer can fill with 1,024
	// messages and then make every fragment of a new one evict. Entries
	// of messages completed or dropped since are skipped lazily.
	inOrder []partialRef
	ready   [][]byte
	readyB  int
}

func (d *datagrams) init(cfg Config) {
	d.maxMsg = cfg.MaxDatagramMessage
	d.maxQueue = cfg.DatagramQueue
	d.in = make(map[uint64]*partial)
}

func (d *datagrams) enqueue(p []byte, prio Priority, maxPacket int, st *ConnStats) error {
	if len(p) > d.maxMsg {
		return ErrDatagramTooLarge
	}
	if prio >= numPriorities {
		prio = numPriorities - 1
	}
	chunk := maxPacket - wire.DataOverhead - maxDatagramFrameHeader - 1
	count := max(1, (len(p)+chunk-1)/chunk)
	msg := append([]byte(nil), p...)
	id := d.nextID
	d.nextID++
	for i := 0; i < count; i++ {
		lo := i * chunk
		hi := min(lo+chunk, len(msg))
		d.out[prio] = append(d.out[prio], fragment{id: id, index: uint64(i), count: uint64(count), data: msg[lo:hi]})
	}
	d.queued += len(msg)
	st.DatagramsSent++
	// Over the limit: drop the oldest whole messages, lowest priority first.
	for pr := numPriorities - 1; pr >= 0 && d.queued > d.maxQueue; pr-- {
		for len(d.out[pr]) > 0 && d.queued > d.maxQueue {
			drop := d.out[pr][0].id
			for len(d.out[pr]) > 0 && d.out[pr][0].id == drop {
				d.queued -= len(d.out[pr][0].data)
				d.out[pr] = d.out[pr][1:]
			}
			st.DatagramsDropped++
		}
	}
	return nil
}

// appendFragment adds the next queued fragment of priority p if it fits.
func (d *datagrams) appendFragment(p Priority, b []byte, room int) ([]byte, bool) {
	q := d.out[p]
	if len(q) == 0 {
		return b, false
	}
	f := q[0]
	if len(b)+wire.DatagramHeaderLen(f.id, f.index, f.count, len(f.data))+len(f.data) > room {
		return b, false
	}
	b = wire.AppendDatagram(b, f.id, f.index, f.count, f.data)
	d.queued -= len(f.data)
	q[0] = fragment{}
	d.out[p] = q[1:]
	return b, true
}

// receive stores a fragment; a complete message moves to the ready queue.
func (d *datagrams) receive(now time.Time, f *wire.Datagram, st *ConnStats) {
	maxFrags := uint64(d.maxMsg/64 + 1)
	if f.Count > maxFrags {
		st.DatagramsDropped++
		return
	}
	if f.Count == 1 {
		d.deliver(append([]byte(nil), f.Data...), st)
		return
	}
	p := d.in[f.ID]
	if p == nil {
		for len(d.in) > 0 && (d.inBytes+partialOverhead > 4*d.maxMsg || len(d.in) >= 1024) {
			d.evictOldest(st)
		}
		p = &partial{count: f.Count, frags: make(map[uint64][]byte), size: partialOverhead, deadline: now.Add(datagramReassemblyTimeout)}
		d.in[f.ID] = p
		d.track(f.ID, p)
		d.inBytes += partialOverhead
	}
	if _, dup := p.frags[f.Index]; dup || p.count != f.Count {
		return // duplicate or inconsistent fragment
	}
	cost := len(f.Data) + fragmentOverhead
	if p.size+cost > d.maxMsg+partialOverhead+int(p.count)*fragmentOverhead || d.inBytes+cost > 4*d.maxMsg+1024*partialOverhead {
		d.forget(f.ID, p)
		st.DatagramsDropped++
		return
	}
	p.frags[f.Index] = append([]byte(nil), f.Data...)
	p.size += cost
	d.inBytes += cost
	if uint64(len(p.frags)) < p.count {
		return
	}
	n := 0
	for _, fr := range p.frags {
		n += len(fr)
	}
	msg := make([]byte, 0, n)
	for i := uint64(0); i < p.count; i++ {
		msg = append(msg, p.frags[i]...)
	}
	d.forget(f.ID, p)
	d.deliver(msg, st)
}

func (d *datagrams) deliver(msg []byte, st *ConnStats) {
	if d.readyB+len(msg) > d.maxQueue {
		st.DatagramsDropped++ // the application is not reading
		return
	}
	d.ready = append(d.ready, msg)
	d.readyB += len(msg)
	st.DatagramsRecv++
}

// track appends a new partial message to inOrder. When completed and
// dropped messages make up most of it, the live ones are copied down, so
// its length stays within twice the messages held (plus a constant) and the
// copying is amortised over the appends.
func (d *datagrams) track(id uint64, p *partial) {
	if len(d.inOrder) >= 64 && len(d.inOrder) > 2*len(d.in) {
		live := d.inOrder[:0]
		for _, r := range d.inOrder {
			if d.in[r.id] == r.p {
				live = append(live, r)
			}
		}
		clear(d.inOrder[len(live):])
		d.inOrder = live
	}
	d.inOrder = append(d.inOrder, partialRef{id, p})
}

// oldest returns the partial message started first, dropping the entries
// of messages no longer held from the front of inOrder.
func (d *datagrams) oldest() (partialRef, bool) {
	for len(d.inOrder) > 0 {
		r := d.inOrder[0]
		if d.in[r.id] == r.p {
			return r, true
		}
		d.inOrder[0] = partialRef{}
		d.inOrder = d.inOrder[1:]
	}
	return partialRef{}, false
}

// forget drops a partial message. Its entry in inOrder stays until it
// reaches the front or is compacted away, so its fragments are let go now.
func (d *datagrams) forget(id uint64, p *partial) {
	delete(d.in, id)
	d.inBytes -= p.size
	p.frags = nil
}

func (d *datagrams) evictOldest(st *ConnStats) {
	if r, ok := d.oldest(); ok {
		d.forget(r.id, r.p)
		st.DatagramsDropped++
	}
}

func (d *datagrams) pop() ([]byte, bool) {
	if len(d.ready) == 0 {
		return nil, false
	}
	m := d.ready[0]
	d.ready[0] = nil
	d.ready = d.ready[1:]
	d.readyB -= len(m)
	return m, true
}

func (d *datagrams) nextExpiry() time.Time {
	if r, ok := d.oldest(); ok {
		return r.p.deadline
	}
	return time.Time{}
}

func (d *datagrams) expire(now time.Time, st *ConnStats) {
	for {
		r, ok := d.oldest()
		if !ok || now.Before(r.p.deadline) {
			return
		}
		d.forget(r.id, r.p)
		st.DatagramsDropped++
	}
}
