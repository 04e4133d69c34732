package core

import "time"

// Tail duplication. A bulk stream's last round trip of data is where loss
// costs most: a lost packet there is repaired only after later packets'
// ACKs (or a probe timeout) reveal it, one round trip after it was sent,
// and nothing else is waiting to use the link meanwhile. So once a bulk
// stream has sent its FIN and the connection has nothing else to send,
// the window room that the returning ACKs free is spent sending the
// stream's last packets again, newest first, each once: a packet lost
// within the last half round trip before the FIN then arrives as its
// duplicate does, well before its repair would. Real repairs go first
// (lost ranges are sent lowest offset first, and the duplicates are the
// highest). It costs at most half a round trip of bytes per finished
// stream, sent while the link would otherwise idle. This bounds the end of
// a live migration, the final copy, on a lossy path.

// tailShare is the part of the round trip before the FIN whose packets
// are duplicated: later duplicates would arrive no earlier than the
// repair of a loss among them.
const tailShare = 2 // 1/2 of SRTT

// streamTail is the tail of the bulk stream id: the packets sent from
// from up to its FIN's packet, number finPN (packets after it, the
// duplicates included, are not the tail).
type streamTail struct {
	id    uint64
	from  time.Time
	finPN uint64
	set   bool
}

// firstFin records the tail of bulk stream s, whose FIN went out now
// (the first time: a FIN sent again is a repair).
func (c *Conn) firstFin(now time.Time, s *stream) {
	if s.prio != PriorityBulk || s.finNoted {
		return
	}
	s.finNoted = true
	// The FIN is in the packet being built, which takes the next number.
	c.tail = streamTail{id: s.id, from: now.Add(-c.rec.srtt / tailShare), finPN: c.nextPN, set: true}
}

// duplicateTail queues the stream data of the newest tail packet that is
// still outstanding and not yet duplicated. It reports whether it queued
// anything.
func (c *Conn) duplicateTail() bool {
	t := c.tail
	if !t.set || c.noTailDups {
		return false
	}
	s := c.streams[t.id]
	if s == nil || s.ss != sendFinQ || !s.finSent || s.sent != s.written {
		c.tail = streamTail{} // done, reset, or writing again
		return false
	}
	r := &c.rec
	for i := len(r.pkts) - 1; i >= r.head; i-- {
		p := &r.pkts[i]
		if p.pn > t.finPN || !p.outstanding || p.duplicated {
			continue
		}
		if p.cc.SentTime.Before(t.from) {
			break
		}
		p.duplicated = true
		for j := range p.frames {
			if f := &p.frames[j]; f.kind == sfStream && f.id == t.id {
				s.onLost(f.off, f.n, f.fin)
			}
		}
		if s.hasSendData() { // not if all of it was acknowledged meanwhile
			c.schedule(s)
			return true
		}
	}
	c.tail = streamTail{} // every tail packet is acknowledged or duplicated
	return false
}
