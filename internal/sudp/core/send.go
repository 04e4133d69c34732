package core

import (
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// sentFrame records what a packet carried, so that a lost packet's frames
// (never the packet itself) can be sent again with fresh values.
type sentFrame struct {
	kind uint8
	fin  bool
	n    int
	id   uint64
	off  uint64
}

const (
	sfStream uint8 = iota
	sfMaxData
	sfMaxStreamData
	sfMaxStreams
	sfReset
	sfStop
	sfDatagram
	sfResetToken
)

// maxDatagramFrameHeader bounds a DATAGRAM frame's header (type + 4 varints).
const maxDatagramFrameHeader = 1 + 8 + 4 + 4 + 4

// PollTransmit writes the next datagram to send into buf (which must hold
// MaxDatagramSize bytes) and returns its length and destination. ok is false
// when there is nothing to send now; NextTimeout says when to ask again.
func (c *Conn) PollTransmit(now time.Time, buf []byte) (n int, to netip.AddrPort, ok bool) {
	c.frameHadAck = false
	switch c.state {
	case stateClosed, stateDraining:
		return 0, to, false
	case stateHandshake:
		if c.hsPacket == nil {
			return 0, to, false
		}
		n = copy(buf, c.hsPacket)
		c.hsPacket = nil
		c.stats.PacketsSent++
		c.stats.BytesSent += uint64(n)
		return n, c.path.addr, true
	}
	if c.respPending != nil {
		// The handshake response leaves once; anti-amplification holds as
		// it is smaller than the initiation.
		n = copy(buf, c.respPending)
		c.respPending = nil
		c.path.sentBytes += uint64(n)
		c.stats.PacketsSent++
		c.stats.BytesSent += uint64(n)
		return n, c.path.addr, true
	}
	if !c.confirmedForSend() {
		return 0, to, false
	}
	if c.state == stateEstablished {
		c.maybeStartRekey(now)
		if n, to, ok := c.pollRekey(buf); ok {
			return n, to, ok
		}
	}
	c.maybeUpdateKey(now)
	if c.keyExpired && c.state != stateClosing {
		// Nothing is protected by a key past its hard limit: not data,
		// not a keepalive, not a probe. A re-handshake replaces it.
		return 0, to, false
	}
	for len(c.pathRespQ) > 0 {
		if n, to, ok := c.sendPathResponse(now, buf); ok {
			return n, to, ok
		}
	}

	if n, to, ok := c.sendPathChallenge(now, buf); ok {
		return n, to, ok
	}
	dst := c.path.addr
	// The path's family caps it too: a connection that moved to an IPv6
	// path sends what IPv6 carries.
	budget := min(c.cfg.MaxDatagramSize, len(buf), c.path.budget(), maxDatagramFor(c.path.addr))
	if budget < wire.DataOverhead+64 {
		return 0, to, false
	}
	room := budget - wire.TagSize
	// Probes and keepalives take the long header: a peer that lost the
	// connection (a restart) answers only long packets with a stateless
	// reset (docs/protocol.md §4.1), so these are what detect it.
	b := c.startPacket(buf, c.probes > 0 || c.keepAliveDue(now))
	frames := c.rec.frameScratch[:0]
	eliciting := false

	if c.state == stateClosing {
		if !c.closePending {
			return 0, to, false
		}
		c.closePending = false
		b = wire.AppendClose(b, c.closeCode, c.closeReason)
		return c.finishPacket(now, b, dst, false, nil)
	}

	// An ACK-only packet is owed only for ack-eliciting packets; otherwise
	// two peers would acknowledge each other's ACKs forever.
	wantAck := c.ackEliciting > 0 && (c.ackEliciting >= ackElicitingThres || !now.Before(c.ackDeadline))
	// Acknowledge only when something ack-eliciting arrived: a bulk sender
	// that receives nothing but ACKs would otherwise spend part of every
	// data packet acknowledging them.
	if c.ackEliciting > 0 {
		b = c.appendAck(now, b, room)
	}
	// Congestion and pacing gate everything that elicits an ACK, except
	// probes sent on a probe timeout.
	canSend := c.probes > 0 || c.rec.canSend(now, c.cfg.MaxDatagramSize)
	if !canSend {
		if c.WantsToSend() {
			c.endAppLimited(now) // data came; the window holds it now
		} else {
			// Held by the pacer with nothing queued: the driver will
			// not wait for the pacer, and the idle time until data
			// comes is not lateness to make up.
			c.rec.pacer.Blocked()
		}
	}
	if canSend {
		b, frames = c.appendControl(b, room, frames)
		if len(frames) > 0 {
			eliciting = true
		}
		var more bool
		b, frames, more = c.appendData(now, b, room, frames)
		if !more && c.probes == 0 && c.duplicateTail() {
			b, frames, more = c.appendData(now, b, room, frames)
		}
		if more {
			eliciting = true
			c.endAppLimited(now)
		} else if c.probes == 0 {
			if c.appLimitedSince.IsZero() {
				c.appLimitedSince = now
			}
			// Nothing to send although the window and the pacer allow it:
			// rate samples from now on understate the path, and the
			// controller must not shrink its model on them.
			c.rec.cc.OnAppLimited(c.rec.bytesInFlight)
			c.rec.pacer.Blocked()
		}
		if !eliciting && (c.probes > 0 || c.pingPending || c.keepAliveDue(now)) {
			b = wire.AppendPing(b)
			eliciting = true
		}
		if c.keyUpdateFrame && eliciting && room-len(b) > 10 {
			b = wire.AppendValue(b, wire.FrameKeyUpdate, c.sendKey.gen)
			c.keyUpdateFrame = false
		}
		if eliciting {
			c.pingPending = false
			if c.probes > 0 {
				c.probes--
			}
		}
	}
	if !eliciting && !wantAck {
		return 0, to, false
	}
	if len(b) == c.hdrLen {
		return 0, to, false
	}
	return c.finishPacket(now, b, dst, eliciting, frames)
}

// endAppLimited closes an app-limited interval, if one is open.
func (c *Conn) endAppLimited(now time.Time) {
	if !c.appLimitedSince.IsZero() {
		c.stats.AppLimited += now.Sub(c.appLimitedSince)
		c.appLimitedSince = time.Time{}
	}
}

// startPacket appends the next packet's header to buf[:0]: short unless
// long is asked for or configured, or the number is too far from the
// largest the peer acknowledged for 4 bytes to carry it unambiguously.
func (c *Conn) startPacket(buf []byte, long bool) []byte {
	if !long && !c.cfg.LongHeaders {
		if n := wire.ShortPNLen(c.nextPN, c.rec.largestAcked, c.rec.hasAcked); n > 0 {
			c.hdrLen = 5 + n
			return wire.AppendShortHeader(buf[:0], c.sendKey.phase(), c.remoteCID, c.nextPN, n)
		}
	}
	c.hdrLen = wire.DataHeaderSize
	return wire.AppendHeader(buf[:0], wire.Header{
		KeyPhase: c.sendKey.phase(),
		DstCID:   c.remoteCID,
		PN:       c.nextPN,
	})
}

// finishPacket seals a packet and records it for loss recovery.
func (c *Conn) finishPacket(now time.Time, b []byte, dst netip.AddrPort, eliciting bool, frames []sentFrame) (int, netip.AddrPort, bool) {
	pn := c.nextPN
	c.nextPN++
	if !c.sendKey.used {
		c.sendKey.used = true
		c.sendKey.firstPN = pn
	}
	b = c.sendKey.seal(b, c.hdrLen, pn)
	size := len(b)
	c.sendKeyBytes += uint64(size)
	if c.frameHadAck {
		c.ackPending = false
		c.ackEliciting = 0
		c.frameHadAck = false
	}
	c.rec.onSent(now, pn, size, eliciting, frames)
	if dst == c.path.addr {
		c.path.sentBytes += uint64(size)
	}
	c.stats.PacketsSent++
	c.stats.BytesSent += uint64(size)
	c.lastSend = now
	return size, dst, true
}

func (c *Conn) sendPathResponse(now time.Time, buf []byte) (int, netip.AddrPort, bool) {
	r := c.pathRespQ[0]
	c.pathRespQ = c.pathRespQ[1:]
	p := &c.path
	if r.to != p.addr {
		pp := c.findPathProbe(r.to)
		if pp == nil {
			return 0, r.to, false
		}
		p = &pp.path
	}
	if p.budget() < pathChallengeSize {
		return 0, r.to, false // would exceed 3x what that address sent
	}
	b := c.startPacket(buf, false)
	b = wire.AppendPath(b, wire.FramePathResponse, r.data)
	// Only a response on the validated path counts for recovery: one to a
	// candidate address may go unanswered (see sendPathChallenge).
	n, to, ok := c.finishPacket(now, b, r.to, p == &c.path, nil)
	if p != &c.path {
		p.sentBytes += uint64(n)
	}
	return n, to, ok
}

func (c *Conn) appendAck(now time.Time, b []byte, room int) []byte {
	rs := c.ackRangesScratch[:0]
	for i := len(c.recvd.r) - 1; i >= 0; i-- {
		sp := c.recvd.r[i]
		rs = append(rs, wire.AckRange{Smallest: sp.lo, Largest: sp.hi - 1})
	}
	c.ackRangesScratch = rs
	if len(rs) == 0 {
		return b
	}
	delay := uint64(now.Sub(c.largestRecvTime) / time.Microsecond)
	for len(rs) > 0 && len(b)+wire.AckLen(delay, rs) > room-8 {
		rs = rs[:len(rs)-1]
	}
	if len(rs) == 0 {
		return b
	}
	c.frameHadAck = true
	return wire.AppendAck(b, delay, rs)
}

func (c *Conn) keepAliveDue(now time.Time) bool {
	return now.Sub(c.lastSend) >= c.cfg.KeepAlive && c.rec.ackElicitingInFlight == 0
}

// appendControl adds flow-control and stream-control frames.
func (c *Conn) appendControl(b []byte, room int, frames []sentFrame) ([]byte, []sentFrame) {
	const maxCtl = 1 + 8 + 8
	b, frames = c.appendResetToken(b, room, frames)
	if c.sendMaxData && room-len(b) > maxCtl {
		c.sendMaxData = false
		b = wire.AppendValue(b, wire.FrameMaxData, c.connMaxRecv)
		frames = append(frames, sentFrame{kind: sfMaxData})
	}
	for k := 0; k < 2; k++ {
		if c.sendMaxStreams[k] && room-len(b) > maxCtl {
			c.sendMaxStreams[k] = false
			t := byte(wire.FrameMaxStreamsBidi)
			if k == 1 {
				t = wire.FrameMaxStreamsUni
			}
			b = wire.AppendValue(b, t, c.ourMaxStreams[k])
			c.advMaxStreams[k] = c.ourMaxStreams[k]
			frames = append(frames, sentFrame{kind: sfMaxStreams, id: uint64(k)})
		}
	}
	for len(c.pendingCtl) > 0 && room-len(b) > 2*maxCtl {
		id := c.pendingCtl[0]
		c.pendingCtl = c.pendingCtl[1:]
		s := c.streams[id]
		if s == nil {
			continue
		}
		if s.sendMaxSD && s.rs == recvOpen {
			s.sendMaxSD = false
			b = wire.AppendStreamValue(b, wire.FrameMaxStreamData, id, s.maxRecv)
			frames = append(frames, sentFrame{kind: sfMaxStreamData, id: id})
		}
		if s.stopQueued && !s.stopSent {
			s.stopSent = true
			b = wire.AppendStreamValue(b, wire.FrameStopSending, id, s.stopCode)
			frames = append(frames, sentFrame{kind: sfStop, id: id})
		}
	}
	if len(c.pendingCtl) == 0 {
		c.pendingCtl = c.pendingCtl[:0:0]
	}
	return b, frames
}

// appendData fills the rest of the packet with stream data and datagram
// fragments, highest priority first, round-robin within a priority.
func (c *Conn) appendData(now time.Time, b []byte, room int, frames []sentFrame) ([]byte, []sentFrame, bool) {
	added := false
	for p := 0; p < numPriorities; p++ {
		// Datagrams at this priority first: they are small and urgent.
		for room-len(b) > maxDatagramFrameHeader+16 {
			var ok bool
			b, ok = c.dg.appendFragment(Priority(p), b, room)
			if !ok {
				break
			}
			frames = append(frames, sentFrame{kind: sfDatagram})
			added = true
		}
		q := c.sched[p]
		for len(q) > 0 && room-len(b) > 32 {
			s := q[0]
			var wrote bool
			b, frames, wrote = c.appendStream(now, s, b, room, frames)
			if wrote {
				added = true
			}
			if !s.hasSendData() || !c.streamCanSendNow(s) {
				s.queued = false
				q = append(q[:0], q[1:]...)
				continue
			}
			// Round-robin: rotate in place (no allocation per packet).
			if len(q) > 1 {
				copy(q, q[1:])
				q[len(q)-1] = s
			}
			if !wrote {
				break
			}
		}
		c.sched[p] = q
	}
	return b, frames, added
}

// streamCanSendNow: a stream blocked only by flow control leaves the queue
// until a MAX_*_DATA frame re-schedules it.
func (c *Conn) streamCanSendNow(s *stream) bool {
	if s.ss == sendReset || !s.lost.empty() {
		return true
	}
	if s.ss == sendFinQ && !s.finSent && s.sent == s.written {
		return true
	}
	return s.sent < s.maxSend && c.connSent < c.connMaxSend
}

func (c *Conn) appendStream(now time.Time, s *stream, b []byte, room int, frames []sentFrame) ([]byte, []sentFrame, bool) {
	if s.ss == sendReset {
		if !s.resetSent && room-len(b) > 1+8+8+8 {
			s.resetSent = true
			b = wire.AppendReset(b, s.id, s.resetCode, s.sent)
			frames = append(frames, sentFrame{kind: sfReset, id: s.id})
			return b, frames, true
		}
		return b, frames, false
	}
	free := room - len(b)
	// Retransmissions first.
	if lr, ok := s.lost.first(); ok {
		n, toEnd := streamFit(s.id, lr.lo, lr.hi-lr.lo, free)
		if n <= 0 {
			return b, frames, false
		}
		end := lr.lo + uint64(n)
		fin := s.ss == sendFinQ && end == s.written
		b = appendStreamHeader(b, s.id, lr.lo, n, fin, toEnd)
		b = b[:len(b)+n]
		s.sbuf.read(lr.lo, b[len(b)-n:])
		s.lost.remove(lr.lo, end)
		if fin {
			s.finSent = true
		}
		c.stats.RetransmittedBytes += uint64(n)
		frames = append(frames, sentFrame{kind: sfStream, id: s.id, off: lr.lo, n: n, fin: fin})
		return b, frames, true
	}
	avail := min(s.written-s.sent, s.maxSend-s.sent, c.connMaxSend-c.connSent)
	if avail == 0 {
		if s.ss == sendFinQ && !s.finSent && s.sent == s.written && free >= wire.StreamHeaderLen(s.id, s.sent, 0) {
			b = wire.AppendStreamHeader(b, s.id, s.sent, 0, true)
			s.finSent = true
			c.firstFin(now, s)
			frames = append(frames, sentFrame{kind: sfStream, id: s.id, off: s.sent, fin: true})
			return b, frames, true
		}
		return b, frames, false
	}
	n, toEnd := streamFit(s.id, s.sent, avail, free)
	if n <= 0 {
		return b, frames, false
	}
	off := s.sent
	end := off + uint64(n)
	fin := s.ss == sendFinQ && end == s.written
	b = appendStreamHeader(b, s.id, off, n, fin, toEnd)
	b = b[:len(b)+n]
	s.sbuf.read(off, b[len(b)-n:])
	s.sent = end
	c.connSent += uint64(n)
	c.stats.StreamBytesSent += uint64(n)
	if fin {
		s.finSent = true
		c.firstFin(now, s)
	}
	frames = append(frames, sentFrame{kind: sfStream, id: s.id, off: off, n: n, fin: fin})
	return b, frames, true
}

// streamFit is how many of avail bytes at offset off of stream id a
// STREAM frame carries in free bytes of a packet, and whether it fills
// the packet: then it takes the header without a length (its data runs
// to the packet's end), and nothing can follow it, since free is what
// is left of the packet's room.
func streamFit(id, off, avail uint64, free int) (n int, toEnd bool) {
	if he := wire.StreamEndHeaderLen(id, off); free > he && avail >= uint64(free-he) {
		return free - he, true
	}
	hl := wire.StreamHeaderLen(id, off, int(min(avail, uint64(free))))
	return min(int(min(avail, 1<<30)), free-hl), false
}

func appendStreamHeader(b []byte, id, off uint64, n int, fin, toEnd bool) []byte {
	if toEnd {
		return wire.AppendStreamEndHeader(b, id, off, fin)
	}
	return wire.AppendStreamHeader(b, id, off, n, fin)
}

// schedule puts a stream with something to send in its priority's queue.
func (c *Conn) schedule(s *stream) {
	if s.queued || !s.hasSendData() {
		return
	}
	s.queued = true
	c.sched[s.prio] = append(c.sched[s.prio], s)
}

// maybeUpdateKey moves the send direction to the next key generation: to a
// re-handshake's key as soon as one is ready, or along the hash chain after
// the configured packets or time, once the peer has acknowledged a packet of
// the current generation (so it holds the current keys and the phase bit
// cannot be ambiguous).
//
// Past KeyRejectAfter (or 2^23 packets, AES-GCM's confidentiality bound per
// RFC 9001 §6.6, or twice the packet limit if larger) on one generation — the
// update could not happen because the peer never acknowledged a packet of
// it, typically because the path is gone — the key is expired: nothing more
// is sent under it, and the re-handshake (started as the limit neared)
// provides the next key when the peer is heard again. The connection lives
// as long as its IdleTimeout allows.
func (c *Conn) maybeUpdateKey(now time.Time) {
	if c.rk.sendPending != nil {
		c.switchToRekeyed(now)
		c.keyExpired = false
		return
	}
	k := c.sendKey
	c.checkKeyExpiry(now)
	if c.state != stateEstablished && c.state != stateHandshake {
		return
	}
	if !k.used {
		return
	}
	due := c.nextPN-k.firstPN >= c.cfg.KeyUpdatePackets || c.sendKeyBytes >= c.cfg.KeyUpdateBytes ||
		now.Sub(c.sendKeyStart) >= c.cfg.KeyUpdateInterval
	if !due {
		return
	}
	if !c.sendGenAcked {
		// A side that only sends ACKs never has a packet acknowledged:
		// make the next packet ack-eliciting so the update can proceed.
		// At most one per PTO: during an outage every call here would
		// otherwise add a PING to the path.
		if c.rec.ackElicitingInFlight == 0 || now.Sub(c.rec.lastElicitingSent) >= c.rec.pto() {
			c.pingPending = true
		}
		return
	}
	n, err := k.next()
	if err != nil {
		return
	}
	k.zero()
	c.sendKey = n
	c.sendKeyStart = now
	c.sendKeyBytes = 0
	c.sendGenAcked = false
	c.keyUpdateFrame = true
	c.keyExpired = c.epochExpired(now) // a hash-chain step does not renew an expired epoch
	c.stats.KeyUpdates++
}
