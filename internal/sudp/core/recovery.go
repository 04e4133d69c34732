package core

import (
	"fmt"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/congestion"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// sentPacket is what loss recovery remembers of a sent packet.
type sentPacket struct {
	pn          uint64
	size        int
	outstanding bool // neither acknowledged nor declared lost
	eliciting   bool
	duplicated  bool // its stream data was sent again ahead of any loss (tail)
	cc          congestion.PacketState
	frames      []sentFrame
}

// recovery implements RFC 9002-style loss detection on one packet number
// space: packets are kept in a deque indexed by packet number (numbers are
// consecutive), RTT is estimated from ACKs, and a packet is lost when three
// later packets were acknowledged or it is older than 9/8 RTT.
type recovery struct {
	cc    *congestion.Controller
	pacer congestion.Pacer

	pkts []sentPacket // pkts[i].pn == base+i
	head int          // first slot that may still be outstanding
	base uint64

	bytesInFlight        int
	ackElicitingInFlight int
	largestAcked         uint64
	hasAcked             bool
	lastElicitingSent    time.Time
	lossTime             time.Time
	ptoCount             int

	srtt, rttvar, minRTT, latestRTT time.Duration
	hasRTT                          bool

	ackedScratch []congestion.PacketState
	lostScratch  []congestion.PacketState
	frameScratch []sentFrame
}

const initialRTT = 100 * time.Millisecond

func (r *recovery) init(cfg Config, now time.Time) {
	r.cc = congestion.New(congestion.Config{
		MaxDatagramSize: cfg.MaxDatagramSize,
		MaxRate:         cfg.MaxRate,
		InitialRTT:      initialRTT,
	}, now)
	r.srtt = initialRTT
	r.rttvar = initialRTT / 2
}

func (r *recovery) onHandshakeRTT(d time.Duration) {
	if d > 0 && !r.hasRTT {
		r.updateRTT(d, 0)
	}
}

func (r *recovery) updateRTT(sample, ackDelay time.Duration) {
	r.latestRTT = sample
	if !r.hasRTT {
		r.hasRTT = true
		r.minRTT = sample
		r.srtt = sample
		r.rttvar = sample / 2
		return
	}
	r.minRTT = min(r.minRTT, sample)
	adj := sample
	if adj-ackDelay >= r.minRTT {
		adj -= ackDelay
	}
	d := r.srtt - adj
	if d < 0 {
		d = -d
	}
	r.rttvar = (3*r.rttvar + d) / 4
	r.srtt = (7*r.srtt + adj) / 8
}

// pto is the probe timeout (RFC 9002 §6.2.1) without backoff.
func (r *recovery) pto() time.Duration {
	return r.srtt + max(4*r.rttvar, timerGranularity) + maxAckDelay
}

// canSend: congestion window and pacing allow one more full packet now.
func (r *recovery) canSend(now time.Time, size int) bool {
	if r.bytesInFlight+size > r.cc.CongestionWindow() {
		r.pacer.Blocked()
		return false
	}
	return r.pacer.Delay(now, r.cc.PacingRate(), size) == 0
}

// pacingDelay is how long until the pacer releases a packet (0 if now).
func (r *recovery) pacingDelay(now time.Time, size int) time.Duration {
	if r.bytesInFlight+size > r.cc.CongestionWindow() {
		r.pacer.Blocked()
		return -1 // window-limited: an ACK, not time, unblocks
	}
	return r.pacer.Delay(now, r.cc.PacingRate(), size)
}

func (r *recovery) onSent(now time.Time, pn uint64, size int, eliciting bool, frames []sentFrame) {
	if len(r.pkts) == 0 {
		r.base = pn
	}
	// Reuse the slot's frame slice to avoid an allocation per packet.
	var slot *sentPacket
	if len(r.pkts) < cap(r.pkts) {
		r.pkts = r.pkts[:len(r.pkts)+1]
		slot = &r.pkts[len(r.pkts)-1]
		slot.frames = append(slot.frames[:0], frames...)
	} else {
		r.pkts = append(r.pkts, sentPacket{frames: append([]sentFrame(nil), frames...)})
		slot = &r.pkts[len(r.pkts)-1]
	}
	slot.pn = pn
	slot.size = size
	slot.eliciting = eliciting
	slot.duplicated = false
	slot.outstanding = eliciting
	if eliciting {
		slot.cc = r.cc.OnPacketSent(now, size, r.bytesInFlight)
		r.bytesInFlight += size
		r.ackElicitingInFlight++
		r.lastElicitingSent = now
		r.pacer.OnSent(now, r.cc.PacingRate(), size)
	}
	r.frameScratch = frames[:0]
}

// compact drops finished packets at the front.
func (r *recovery) compact() {
	for r.head < len(r.pkts) && !r.pkts[r.head].outstanding {
		r.head++
	}
	if r.head == len(r.pkts) {
		r.base += uint64(r.head)
		r.pkts = r.pkts[:0]
		r.head = 0
		return
	}
	if r.head > 4096 && r.head > len(r.pkts)/2 {
		// Move the live packets to the front by swapping, not copying:
		// a copy would leave two slots sharing one frames array, and
		// reusing the stale slot would overwrite a live packet's frames.
		n := len(r.pkts) - r.head
		for i := 0; i < n; i++ {
			r.pkts[i], r.pkts[r.head+i] = r.pkts[r.head+i], r.pkts[i]
		}
		for i := n; i < len(r.pkts); i++ {
			r.pkts[i].frames = r.pkts[i].frames[:0]
		}
		r.pkts = r.pkts[:n]
		r.base += uint64(r.head)
		r.head = 0
	}
}

// onAck processes an ACK frame.
func (c *Conn) onAck(now time.Time, a *wire.Ack) error {
	r := &c.rec
	largest := a.Ranges[0].Largest
	if largest >= c.nextPN {
		return fmt.Errorf("sudp: ACK of unsent packet %d", largest)
	}
	acked := r.ackedScratch[:0]
	var rttSample time.Duration
	newLargest := !r.hasAcked || largest > r.largestAcked
	for _, rg := range a.Ranges {
		lo := max(rg.Smallest, r.base+uint64(r.head))
		hi := min(rg.Largest+1, r.base+uint64(len(r.pkts)))
		for pn := lo; pn < hi; pn++ {
			p := &r.pkts[pn-r.base]
			if !p.outstanding {
				continue
			}
			p.outstanding = false
			r.bytesInFlight -= p.size
			r.ackElicitingInFlight--
			acked = append(acked, p.cc)
			if pn == largest {
				rttSample = now.Sub(p.cc.SentTime)
			}
			if pn >= c.sendKey.firstPN && c.sendKey.used {
				c.sendGenAcked = true
			}
			c.onFramesAcked(p.frames)
		}
	}
	r.ackedScratch = acked
	if newLargest {
		r.largestAcked = largest
		r.hasAcked = true
	}
	if len(acked) == 0 {
		return nil
	}
	if rttSample > 0 {
		r.updateRTT(rttSample, min(time.Duration(a.Delay)*time.Microsecond, maxAckDelay))
	}
	r.cc.OnAck(now, acked, rttSample, r.bytesInFlight)
	r.ptoCount = 0
	c.detectLoss(now)
	r.compact()
	return nil
}

// detectLoss declares lost every outstanding packet below the largest
// acknowledged that is PacketThreshold packets or 9/8 RTT older.
func (c *Conn) detectLoss(now time.Time) {
	r := &c.rec
	r.lossTime = time.Time{}
	if !r.hasAcked {
		return
	}
	delay := max(max(r.srtt, r.latestRTT)*timeThresholdNum/timeThresholdDen, timerGranularity)
	lost := r.lostScratch[:0]
	for i := r.head; i < len(r.pkts); i++ {
		p := &r.pkts[i]
		if p.pn >= r.largestAcked {
			break
		}
		if !p.outstanding {
			continue
		}
		if r.largestAcked-p.pn >= PacketThreshold || !p.cc.SentTime.After(now.Add(-delay)) {
			p.outstanding = false
			r.bytesInFlight -= p.size
			r.ackElicitingInFlight--
			lost = append(lost, p.cc)
			c.stats.PacketsLost++
			c.onFramesLost(p.frames)
			continue
		}
		t := p.cc.SentTime.Add(delay)
		if r.lossTime.IsZero() || t.Before(r.lossTime) {
			r.lossTime = t
		}
	}
	r.lostScratch = lost
	if len(lost) > 0 {
		r.cc.OnLoss(now, lost, r.bytesInFlight)
	}
}

func (c *Conn) onFramesAcked(frames []sentFrame) {
	for i := range frames {
		f := &frames[i]
		switch f.kind {
		case sfStream:
			if s := c.streams[f.id]; s != nil {
				s.onAcked(f.off, f.n, f.fin)
				c.maybeFree(s)
			}
		case sfReset:
			if s := c.streams[f.id]; s != nil {
				s.ss = sendDone
				c.maybeFree(s)
			}
		case sfStop:
			if s := c.streams[f.id]; s != nil {
				s.stopAcked = true
				c.maybeFree(s)
			}
		}
	}
}

func (c *Conn) onFramesLost(frames []sentFrame) {
	for i := range frames {
		f := &frames[i]
		switch f.kind {
		case sfStream:
			if s := c.streams[f.id]; s != nil {
				s.onLost(f.off, f.n, f.fin)
				c.schedule(s)
			}
		case sfMaxData:
			c.sendMaxData = true
		case sfMaxStreams:
			c.sendMaxStreams[f.id] = true
		case sfMaxStreamData:
			if s := c.streams[f.id]; s != nil && s.rs == recvOpen {
				s.sendMaxSD = true
				c.pendingCtl = append(c.pendingCtl, f.id)
			}
		case sfReset:
			if s := c.streams[f.id]; s != nil {
				s.resetSent = false
				c.schedule(s)
			}
		case sfStop:
			if s := c.streams[f.id]; s != nil && !s.stopAcked {
				s.stopSent = false
				c.pendingCtl = append(c.pendingCtl, f.id)
			}
		case sfDatagram:
			c.stats.DatagramsDropped++
		case sfResetToken:
			c.resetTokenSend = true
		}
	}
}
