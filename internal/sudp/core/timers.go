package core

import (
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// NextTimeout returns when HandleTimeout (or PollTransmit, for pacing) must
// next be called; the zero time means no timer is armed.
func (c *Conn) NextTimeout() time.Time {
	var t time.Time
	set := func(v time.Time) {
		if !v.IsZero() && (t.IsZero() || v.Before(t)) {
			t = v
		}
	}
	switch c.state {
	case stateClosed:
		return t
	case stateHandshake:
		set(c.hsNext)
		set(c.hsStart.Add(c.cfg.HandshakeTimeout))
		return t
	case stateClosing, stateDraining:
		set(c.drainUntil)
		return t
	}
	set(c.lastRecv.Add(c.cfg.IdleTimeout))
	if !c.confirmed && !c.client {
		set(c.hsStart.Add(c.cfg.HandshakeTimeout))
		return t
	}
	// Deadlines for sending only matter when the path lets us send; on an
	// address still being validated with its budget spent they would spin.
	// Nor while the send key is expired: nothing but re-handshake
	// messages leaves until it is replaced.
	canSend := c.path.budget() >= wire.DataOverhead+64 && !c.keyExpired
	if c.ackEliciting > 0 && canSend {
		set(c.ackDeadline)
	}
	r := &c.rec
	if !r.lossTime.IsZero() {
		set(r.lossTime)
	} else if r.ackElicitingInFlight > 0 && !c.keyExpired {
		set(r.lastElicitingSent.Add(r.pto() << min(r.ptoCount, 6)))
	}
	if c.sendKey != nil && !c.keyExpired {
		set(c.sendKeyStart.Add(c.cfg.KeyRejectAfter))
		if iv := c.cfg.RehandshakeInterval; iv > 0 && len(c.rk.static.Private) != 0 {
			set(c.rk.last.Add(iv + c.cfg.KeyRejectAfter))
		}
	}
	if c.rk.hs != nil {
		set(c.rk.initNext)
	}
	set(c.rekeyDueAt())
	if c.rec.ackElicitingInFlight == 0 && canSend {
		set(c.lastSend.Add(c.cfg.KeepAlive))
	}
	if c.recvPrev != nil {
		set(c.prevDiscardAt)
	}
	set(c.pathProbeDeadline())
	set(c.dg.nextExpiry())
	return t
}

// HandleTimeout runs every timer that has expired at now.
func (c *Conn) HandleTimeout(now time.Time) {
	switch c.state {
	case stateClosed:
		return
	case stateHandshake:
		if !now.Before(c.hsStart.Add(c.cfg.HandshakeTimeout)) {
			c.err = ErrHandshakeTimeout
			c.forget()
			return
		}
		if !now.Before(c.hsNext) {
			if err := c.sendInitiation(now); err != nil {
				c.err = err
				c.forget()
			}
		}
		return
	case stateClosing, stateDraining:
		if !now.Before(c.drainUntil) {
			c.forget()
		}
		return
	}
	if !c.client && !c.confirmed && !now.Before(c.hsStart.Add(c.cfg.HandshakeTimeout)) {
		// The peer never proved it holds the keys: whoever sent the
		// initiation (perhaps a replay) gets no more of our memory.
		c.err = ErrHandshakeTimeout
		c.forget()
		return
	}
	if !now.Before(c.lastRecv.Add(c.cfg.IdleTimeout)) {
		c.err = ErrIdleTimeout
		c.forget()
		return
	}
	c.checkKeyExpiry(now)
	if c.state != stateEstablished {
		return
	}
	c.rekeyTimeout(now)
	if c.recvPrev != nil && !now.Before(c.prevDiscardAt) {
		c.recvPrev.zero()
		c.recvPrev = nil
	}
	c.expirePathProbes(now)
	c.dg.expire(now, &c.stats)
	r := &c.rec
	if !r.lossTime.IsZero() && !now.Before(r.lossTime) {
		c.detectLoss(now)
		r.compact()
	} else if r.ackElicitingInFlight > 0 && !c.keyExpired && !now.Before(r.lastElicitingSent.Add(r.pto()<<min(r.ptoCount, 6))) {
		// Probe timeout: send up to two ack-eliciting probes past the
		// congestion window; their ACKs drive loss detection.
		r.ptoCount++
		c.probes = 2
		c.pingPending = true
		if !c.streamsQueued() {
			c.requeueTail(c.probes)
		}
	}
}

// streamsQueued reports whether any stream has data scheduled to send.
func (c *Conn) streamsQueued() bool {
	for p := range c.sched {
		if len(c.sched[p]) > 0 {
			return true
		}
	}
	return false
}

// requeueTail queues the stream data of the newest n outstanding packets
// to be sent again, without declaring those packets lost (RFC 9002
// §6.2.4: a probe should carry data). A probe that is a bare PING only
// learns from its ACK that the tail was lost, and the retransmission
// then costs another round trip; a probe that carries the tail repairs
// it itself. This is what bounds the end of a bulk transfer — the
// final copy of a live migration — on a lossy path.
func (c *Conn) requeueTail(n int) {
	r := &c.rec
	for i := len(r.pkts) - 1; i >= r.head && n > 0; i-- {
		p := &r.pkts[i]
		if !p.outstanding {
			continue
		}
		carried := false
		for j := range p.frames {
			f := &p.frames[j]
			if f.kind != sfStream {
				continue
			}
			if s := c.streams[f.id]; s != nil {
				s.onLost(f.off, f.n, f.fin)
				c.schedule(s)
				carried = true
			}
		}
		if carried {
			n--
		}
	}
}

// PacingDelay says how long the pacer holds the next full packet back (0:
// send now; negative: blocked by the congestion window until an ACK).
// The driver uses it to sleep precisely between bursts.
func (c *Conn) PacingDelay(now time.Time) time.Duration {
	return c.rec.pacingDelay(now, c.cfg.MaxDatagramSize)
}

// WantsToSend reports whether the connection has ack-eliciting data queued
// (streams or datagrams), used by the driver to decide whether to wait for
// the pacer.
func (c *Conn) WantsToSend() bool {
	if c.state != stateEstablished || c.keyExpired {
		return false
	}
	for p := range c.sched {
		if len(c.sched[p]) > 0 {
			return true
		}
	}
	return c.dg.queued > 0 || c.pingPending || c.sendMaxData
}

// ControlPending reports whether flow-control or stream-control frames wait
// to be sent (so that a reader need not wake the driver otherwise).
func (c *Conn) ControlPending() bool {
	return len(c.pendingCtl) > 0 || c.sendMaxData || c.sendMaxStreams[0] || c.sendMaxStreams[1]
}
