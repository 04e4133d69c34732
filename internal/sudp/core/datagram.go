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
		d.inBytes += partialOverhead
	}
	if _, dup := p.frags[f.Index]; dup || p.count != f.Count {
		return // duplicate or inconsistent fragment
	}
	cost := len(f.Data) + fragmentOverhead
	if p.size+cost > d.maxMsg+partialOverhead+int(p.count)*fragmentOverhead || d.inBytes+cost > 4*d.maxMsg+1024*partialOverhead {
		delete(d.in, f.ID)
		d.inBytes -= p.size
		st.DatagramsDropped++
		return
	}
	p.frags[f.Index] = append([]byte(nil), f.Data...)
	p.size += cost
	d.inBytes += cost
	if uint64(len(p.frags)) < p.count {
		return
	}
	delete(d.in, f.ID)
	d.inBytes -= p.size
	n := 0
	for _, fr := range p.frags {
		n += len(fr)
	}
	msg := make([]byte, 0, n)
	for i := uint64(0); i < p.count; i++ {
		msg = append(msg, p.frags[i]...)
	}
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

func (d *datagrams) evictOldest(st *ConnStats) {
	var oldID uint64
	var old *partial
	for id, p := range d.in {
		if old == nil || p.deadline.Before(old.deadline) {
			oldID, old = id, p
		}
	}
	if old != nil {
		delete(d.in, oldID)
		d.inBytes -= old.size
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
	var t time.Time
	for _, p := range d.in {
		if t.IsZero() || p.deadline.Before(t) {
			t = p.deadline
		}
	}
	return t
}

func (d *datagrams) expire(now time.Time, st *ConnStats) {
	for id, p := range d.in {
		if !now.Before(p.deadline) {
			delete(d.in, id)
			d.inBytes -= p.size
			st.DatagramsDropped++
		}
	}
}
