package core

import (
	"errors"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// The application-facing calls below move bytes in and out of the connection
// without blocking; the driver turns them into blocking, goroutine-safe
// calls (net.Conn for streams).

// OpenStream opens a bidirectional stream (uni=false) or a unidirectional
// reliable message stream (uni=true). ErrStreamLimit means the peer's
// MAX_STREAMS allows no more right now.
func (c *Conn) OpenStream(uni bool, prio Priority) (uint64, error) {
	if err := c.Err(); err != nil {
		return 0, err
	}
	if c.state != stateEstablished {
		return 0, errors.New("sudp: connection not established")
	}
	kind := 0
	if uni {
		kind = 1
	}
	seq := c.nextSeq[kind]
	if seq >= c.peerMaxStreams[kind] {
		return 0, ErrStreamLimit
	}
	c.nextSeq[kind]++
	id := seq << 2
	if !c.client {
		id |= wire.StreamServerBit
	}
	if uni {
		id |= wire.StreamUniBit
	}
	if prio >= numPriorities {
		prio = numPriorities - 1
	}
	s := &stream{id: id, prio: prio, maxSend: InitialStreamWindow, sendLimit: c.cfg.StreamSendBuffer, pool: &c.pages}
	if uni {
		s.rs = recvNone
	} else {
		s.window = c.cfg.StreamWindow
		s.maxRecv = InitialStreamWindow
		if c.cfg.StreamWindow > s.maxRecv {
			s.maxRecv = c.cfg.StreamWindow
			s.sendMaxSD = true
			c.pendingCtl = append(c.pendingCtl, id)
		}
	}
	c.streams[id] = s
	return id, nil
}

// CanOpenStream reports whether OpenStream would succeed now.
func (c *Conn) CanOpenStream(uni bool) bool {
	kind := 0
	if uni {
		kind = 1
	}
	return c.state == stateEstablished && c.nextSeq[kind] < c.peerMaxStreams[kind]
}

// AcceptStream returns the next stream the peer opened, if any.
func (c *Conn) AcceptStream(uni bool) (uint64, bool) {
	kind := 0
	if uni {
		kind = 1
	}
	if len(c.acceptQ[kind]) == 0 {
		return 0, false
	}
	id := c.acceptQ[kind][0]
	c.acceptQ[kind] = c.acceptQ[kind][1:]
	return id, true
}

// StreamWrite buffers up to len(p) bytes and returns how many it took;
// 0 with a nil error means the send buffer is full (wait and retry).
func (c *Conn) StreamWrite(id uint64, p []byte) (int, error) {
	if err := c.Err(); err != nil {
		return 0, err
	}
	s := c.streams[id]
	if s == nil {
		if _, ok := c.resetSet[id]; ok {
			return 0, ErrStreamStopped
		}
		if c.streamForgotten(id) {
			return 0, ErrStreamClosed
		}
		return 0, ErrUnknownStream
	}
	if s.ss == sendNone {
		return 0, ErrUnknownStream
	}
	switch s.ss {
	case sendReset:
		return 0, ErrStreamStopped
	case sendFinQ, sendDone:
		return 0, ErrStreamClosed
	}
	n := min(len(p), c.writable(s))
	if n <= 0 {
		return 0, nil
	}
	s.sbuf.ensure(s.written + uint64(n))
	s.sbuf.write(s.written, p[:n])
	s.written += uint64(n)
	c.schedule(s)
	return n, nil
}

// StreamWritable is how many bytes StreamWrite would accept now.
func (c *Conn) StreamWritable(id uint64) int {
	s := c.streams[id]
	if s == nil {
		return 0
	}
	return max(c.writable(s), 0)
}

// minQueueBytes is the least a queue-delay-bounded stream may hold unsent
// (a connection whose rate is not known yet must still start).
const minQueueBytes = 64 << 10

// writable is how many more bytes the application may write to s now.
func (c *Conn) writable(s *stream) int {
	n := s.writable()
	if s.maxQueueDelay > 0 {
		limit := max(minQueueBytes, int(c.rec.cc.PacingRate()*s.maxQueueDelay.Seconds()))
		n = min(n, limit-int(s.written-s.sent))
	}
	return n
}

// StreamSetMaxQueueDelay bounds the bytes written to stream id but not yet
// sent to what the connection sends in d at its current pacing rate (at
// least 64 KiB). A sender that must know when its bytes are on their way —
// a migration measuring its stream rate and timing its final
// stop-and-copy — sees backpressure within d instead of only when the
// 16 MiB send buffer fills (over a second at 100 Mbit/s).
func (c *Conn) StreamSetMaxQueueDelay(id uint64, d time.Duration) error {
	s := c.streams[id]
	if s == nil {
		return ErrUnknownStream
	}
	s.maxQueueDelay = max(d, 0)
	return nil
}

// StreamCloseWrite sends FIN after the buffered data.
func (c *Conn) StreamCloseWrite(id uint64) error {
	s := c.streams[id]
	if s == nil || s.ss == sendNone {
		return ErrUnknownStream
	}
	if s.ss == sendOpen {
		s.ss = sendFinQ
		c.schedule(s)
	}
	return nil
}

// StreamSendDone reports whether everything written, FIN included, has been
// acknowledged (or the stream was reset).
func (c *Conn) StreamSendDone(id uint64) bool {
	s := c.streams[id]
	return s == nil || s.ss == sendDone || s.ss == sendReset || s.ss == sendNone
}

// StreamReset abandons the send side with an application error code.
func (c *Conn) StreamReset(id uint64, code uint64) {
	if s := c.streams[id]; s != nil && (s.ss == sendOpen || s.ss == sendFinQ) {
		c.resetSend(s, code)
	}
}

func (c *Conn) resetSend(s *stream, code uint64) {
	s.ss = sendReset
	s.wasReset = true
	s.resetCode = code
	s.resetSent = false
	s.lost = rangeSet{}
	s.sbuf = ring{}
	c.schedule(s)
}

// StreamStopReading tells the peer to stop sending and discards what arrives.
func (c *Conn) StreamStopReading(id uint64, code uint64) {
	s := c.streams[id]
	if s != nil && s.peerReset {
		// Already reset by the peer: the application giving up on it is
		// as good as having seen the reset.
		s.resetSeen = true
		c.maybeFree(s)
		return
	}
	if s == nil || s.rs == recvNone || s.rs == recvDone || s.rs == recvReset {
		return
	}
	hi, _ := s.highestReceived()
	hi = max(hi, s.readOff)
	c.connRead += hi - s.readOff // received but unread: release it
	finKnown := s.rs == recvFinKnown
	s.stopQueued = true
	if finKnown {
		// The final size is known: settle the rest now (retransmissions
		// of it will be discarded uncounted).
		s.rs = recvOpen
		_ = c.settleFinalSize(s, s.finalSize)
	}
	s.rs = recvReset
	s.rbuf.drop(s.pool) // s.got stays: it records what the connection counted
	s.stopCode = code
	c.pendingCtl = append(c.pendingCtl, id)
	c.maybeSendMaxData()
	c.maybeFree(s)
}

// maybeSendMaxData re-advertises the connection window once the
// application consumed (or gave up) half of it.
func (c *Conn) maybeSendMaxData() {
	if c.connRead+c.cfg.ConnWindow/2 > c.connMaxRecv {
		c.connMaxRecv = c.connRead + c.cfg.ConnWindow
		c.sendMaxData = true
	}
}

// StreamRead copies received bytes into p. fin reports the end of the
// stream; (0, false, nil) means nothing is available yet.
func (c *Conn) StreamRead(id uint64, p []byte) (n int, fin bool, err error) {
	s := c.streams[id]
	if s == nil && c.streamForgotten(id) {
		return 0, true, nil // read to the end and released
	}
	if s == nil || s.rs == recvNone {
		return 0, false, ErrUnknownStream
	}
	if s.rs == recvReset {
		if s.peerReset {
			s.resetSeen = true
			c.maybeFree(s)
			return 0, false, &StreamError{Code: s.resetErr, Remote: true}
		}
		return 0, false, ErrStreamReset
	}
	if s.rs == recvDone {
		return 0, true, nil
	}
	ranges := s.got.len()
	n, fin = s.read(p)
	c.recvRanges -= ranges - s.got.len()
	if s.sendMaxSD {
		c.pendingCtl = append(c.pendingCtl, id)
	}
	c.connRead += uint64(n)
	c.stats.StreamBytesRecv += uint64(n)
	c.maybeSendMaxData()
	if fin {
		c.maybeFree(s)
	}
	if n == 0 && !fin {
		if err := c.Err(); err != nil {
			return 0, false, err
		}
	}
	return n, fin, nil
}

// streamForgotten reports whether id names a stream that existed and was
// released after both directions finished.
func (c *Conn) streamForgotten(id uint64) bool {
	kind := 0
	if isUni(id) {
		kind = 1
	}
	peerOpened := (id&wire.StreamServerBit != 0) == c.client
	if peerOpened {
		return id>>2 < c.peerOpened[kind]
	}
	return id>>2 < c.nextSeq[kind]
}

// StreamReadable is the number of bytes StreamRead would return now.
func (c *Conn) StreamReadable(id uint64) int {
	s := c.streams[id]
	if s == nil {
		return 0
	}
	return s.readable()
}

// maybeFree forgets a stream whose both directions are finished, and gives
// the peer credit for a new one if it had opened it.
func (c *Conn) maybeFree(s *stream) {
	// A reset send side is finished once RESET_STREAM is acknowledged
	// (sfReset ack sets sendDone): until then it may need retransmitting.
	sendFinished := s.ss == sendDone || s.ss == sendNone
	if s.rs == recvFinKnown && s.readOff == s.finalSize {
		s.rs = recvDone // everything read; the application need not see EOF
	}
	recvFinished := s.rs == recvDone || s.rs == recvNone || s.rs == recvReset
	if s.stopQueued && (!s.stopAcked || !s.finalCounted) {
		// Keep it until the peer heard STOP_SENDING and the final size
		// (RESET_STREAM or FIN) settled the connection credit.
		recvFinished = false
	}
	if s.peerReset && !s.resetSeen {
		recvFinished = false // keep it until the application saw the reset
	}
	if !sendFinished || !recvFinished {
		return
	}
	if c.streams[s.id] != s {
		return
	}
	delete(c.streams, s.id)
	c.recvRanges -= s.got.len()
	s.rbuf.drop(s.pool)
	c.pages.trim()
	if s.wasReset {
		// Remember why, so a later write reports it rather than an
		// unknown stream. Bounded: the oldest entries are dropped.
		if len(c.resetIDs) >= 1024 {
			delete(c.resetSet, c.resetIDs[0])
			c.resetIDs = c.resetIDs[1:]
		}
		if c.resetSet == nil {
			c.resetSet = make(map[uint64]struct{})
		}
		c.resetSet[s.id] = struct{}{}
		c.resetIDs = append(c.resetIDs, s.id)
	}
	if s.incoming {
		kind := 0
		if isUni(s.id) {
			kind = 1
		}
		c.ourMaxStreams[kind]++
		// Re-advertise only once half the limit came back (as for
		// MAX_DATA): one frame per MaxStreams/2 streams instead of an
		// ack-eliciting packet (and the peer's ACK of it) per message.
		if c.ourMaxStreams[kind]-c.advMaxStreams[kind] >= max(c.cfg.MaxStreams/2, 1) {
			c.sendMaxStreams[kind] = true
		}
	}
}

// SendDatagram queues a best-effort message of up to MaxDatagramMessage
// bytes. It is fragmented, never retransmitted, and delivered whole or not at
// all; when the queue is full the oldest queued messages are dropped.
func (c *Conn) SendDatagram(p []byte, prio Priority) error {
	if err := c.Err(); err != nil {
		return err
	}
	return c.dg.enqueue(p, prio, c.cfg.MaxDatagramSize, &c.stats)
}

// RecvDatagram returns the next complete best-effort message, if any.
func (c *Conn) RecvDatagram() ([]byte, bool) { return c.dg.pop() }
