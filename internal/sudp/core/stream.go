package core

import (
	"time"

	"errors"
	"fmt"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Priority orders what a connection sends when it has more to send than the
// rate allows: lower values go first. Control frames (ACKs, flow control,
// path validation) always precede all of them.
type Priority uint8

// Priorities for streams and messages.
const (
	PriorityControl Priority = 0 // small, urgent messages: commands, auth
	PriorityNormal  Priority = 1 // default
	PriorityBulk    Priority = 2 // migration streams, file transfers
	numPriorities            = 3
)

// StreamError reports a stream the peer reset, with its application code.
type StreamError struct {
	Code   uint64
	Remote bool
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("sudp: stream reset by peer (code %d)", e.Code)
}

// Is makes errors.Is(err, ErrStreamReset) true for a StreamError.
func (e *StreamError) Is(target error) bool { return target == ErrStreamReset }

// Stream errors returned to the application.
var (
	ErrStreamClosed  = errors.New("sudp: stream closed for writing")
	ErrStreamReset   = errors.New("sudp: stream reset by peer")
	ErrStreamStopped = errors.New("sudp: peer stopped reading the stream")
	ErrUnknownStream = errors.New("sudp: unknown stream")
	ErrStreamLimit   = errors.New("sudp: stream limit reached")
)

type sendState uint8

const (
	sendOpen  sendState = iota
	sendFinQ            // FIN written by the application, not yet acked
	sendDone            // everything incl. FIN acked
	sendReset           // reset by us or stopped by peer
	sendNone            // receive-only (peer's unidirectional stream)
)

type recvState uint8

const (
	recvOpen recvState = iota
	recvFinKnown
	recvDone  // application read everything incl. FIN
	recvReset // peer reset
	recvNone  // send-only (our unidirectional stream)
)

type stream struct {
	id       uint64
	prio     Priority
	finNoted bool // its FIN's tail was recorded (tail.go)
	queued   bool // in the scheduler's queue of its priority
	incoming bool // opened by the peer

	// send side
	ss        sendState
	sbuf      ring
	written   uint64   // bytes the application has written
	sent      uint64   // highest offset sent at least once
	acked     rangeSet // acknowledged ranges above sbuf.lo
	lost      rangeSet // ranges to retransmit
	finSent   bool
	finAcked  bool
	maxSend   uint64 // peer's MAX_STREAM_DATA
	sendLimit int    // bytes the application may buffer
	// maxQueueDelay, if set, also bounds the bytes written but not yet
	// sent to what the connection sends in that time (see
	// Conn.StreamSetMaxQueueDelay).
	maxQueueDelay time.Duration
	resetCode     uint64
	resetSent     bool

	// receive side
	rs         recvState
	rbuf       recvBuf
	pool       *pagePool // the connection's receive memory
	readOff    uint64    // next offset the application reads
	got        spanSet   // received ranges above readOff
	finalSize  uint64
	maxRecv    uint64 // limit we advertised
	window     uint64
	sendMaxSD  bool // a MAX_STREAM_DATA update is due
	stopCode   uint64
	stopSent   bool
	stopQueued bool
	resetErr   uint64
	peerReset  bool // RESET_STREAM received (error code in resetErr)
	stopAcked  bool // our STOP_SENDING was acknowledged
	resetSeen  bool // the application read the reset error
	// finalCounted: the final size is known and was accounted against
	// connection flow control (see Conn.settleFinalSize).
	finalCounted bool
	wasReset     bool // the send side ended by RESET_STREAM
}

func isUni(id uint64) bool { return id&wire.StreamUniBit != 0 }

// hasSendData reports whether the stream has frames to send now.
func (s *stream) hasSendData() bool {
	if s.ss == sendNone || s.ss == sendDone {
		return false
	}
	if s.ss == sendReset {
		return !s.resetSent
	}
	if !s.lost.empty() {
		return true
	}
	if s.sent < s.written && s.sent < s.maxSend {
		return true
	}
	return s.ss == sendFinQ && !s.finSent && s.sent == s.written
}

// writable is how many more bytes the application may buffer.
func (s *stream) writable() int {
	if s.ss != sendOpen {
		return 0
	}
	return s.sendLimit - int(s.written-s.sbuf.lo)
}

// onAcked marks [off, off+n) (and FIN) acknowledged and frees the prefix.
func (s *stream) onAcked(off uint64, n int, fin bool) {
	// A range already released (acknowledged before, in another copy of
	// it: a retransmission and its original both arriving) must not be
	// recorded again: below sbuf.lo it would sit first in acked for
	// ever and stop every later release — the stream would never finish.
	if lo, hi := max(off, s.sbuf.lo), off+uint64(n); lo < hi {
		s.acked.add(lo, hi)
		s.lost.remove(lo, hi)
	}
	if fin {
		s.finAcked = true
	}
	if f, ok := s.acked.first(); ok && f.lo <= s.sbuf.lo && f.hi > s.sbuf.lo {
		s.sbuf.release(f.hi)
		s.acked.trimBelow(f.hi)
	}
	if s.ss == sendFinQ && s.finAcked && s.sbuf.lo == s.written {
		s.ss = sendDone
	}
}

// onLost queues [off, off+n) for retransmission, minus what was acked since.
func (s *stream) onLost(off uint64, n int, fin bool) {
	if s.ss == sendReset || s.ss == sendDone {
		return
	}
	lo, hi := max(off, s.sbuf.lo), off+uint64(n)
	if lo < hi {
		s.lost.add(lo, hi)
		for _, sp := range s.acked.r {
			if sp.lo < hi && sp.hi > lo {
				s.lost.remove(sp.lo, sp.hi)
			}
		}
	}
	if fin && !s.finAcked {
		s.finSent = false
	}
}

// recvData stores a STREAM frame. It returns a flow-control violation error.
func (s *stream) recvData(off uint64, data []byte, fin bool) error {
	end := off + uint64(len(data))
	if s.rs == recvReset || s.rs == recvDone {
		return nil
	}
	if end > s.maxRecv {
		return errFlowControl
	}
	if s.rs == recvFinKnown && end > s.finalSize {
		return errFinalSize
	}
	if fin {
		if s.rs == recvFinKnown && end != s.finalSize {
			return errFinalSize
		}
		if hi, _ := s.highestReceived(); max(hi, s.readOff) > end {
			return errFinalSize
		}
		s.finalSize = end
		s.rs = recvFinKnown
	}
	if end <= s.readOff {
		return nil
	}
	if off < s.readOff {
		data = data[s.readOff-off:]
		off = s.readOff
	}
	if len(data) == 0 {
		return nil
	}
	s.rbuf.write(s.pool, off, data)
	s.got.add(off, end)
	return nil
}

func (s *stream) highestReceived() (uint64, bool) {
	l, ok := s.got.last()
	return l.hi, ok
}

// readable is the number of contiguous bytes ready for the application.
func (s *stream) readable() int {
	f, ok := s.got.first()
	if !ok || f.lo > s.readOff {
		return 0
	}
	return int(f.hi - s.readOff)
}

// read copies contiguous data into p.
func (s *stream) read(p []byte) (int, bool) {
	n := min(len(p), s.readable())
	if n > 0 {
		s.rbuf.read(s.pool, s.readOff, p[:n])
		s.readOff += uint64(n)
		s.got.trimBelow(s.readOff)
	}
	fin := s.rs == recvFinKnown && s.readOff == s.finalSize
	if fin {
		s.rs = recvDone
		s.rbuf.drop(s.pool) // the last page, partly read, is not needed either
	}
	// Re-advertise when the application has consumed half the window.
	if s.rs == recvOpen && s.maxRecv-s.readOff < s.window/2 {
		s.maxRecv = s.readOff + s.window
		s.sendMaxSD = true
	}
	return n, fin
}
