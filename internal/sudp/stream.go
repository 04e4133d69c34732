package sudp

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
)

// Stream is an ordered, reliable byte stream on a Conn. It implements
// net.Conn, so code written for TCP (a raft transport, io.Copy of a QEMU
// migration stream) runs on SUDP unchanged. A unidirectional message stream
// is a Stream that only one side writes.
type Stream struct {
	c  *Conn
	id uint64

	dmu           sync.Mutex
	eof           bool // FIN was delivered with the last bytes
	readDeadline  time.Time
	writeDeadline time.Time
}

var _ net.Conn = (*Stream)(nil)

// ID is the stream id.
func (s *Stream) ID() uint64 { return s.id }

// Read reads data in order; io.EOF after the peer's FIN.
func (s *Stream) Read(p []byte) (int, error) { return s.readCtx(context.Background(), p) }

func (s *Stream) readCtx(ctx context.Context, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.dmu.Lock()
	eof := s.eof
	s.dmu.Unlock()
	if eof {
		return 0, io.EOF
	}
	var n int
	var fin, ctl bool
	err := s.c.waitDeadline(ctx, s.readDL, func() (bool, error) {
		var err error
		n, fin, err = s.c.cc.StreamRead(s.id, p)
		ctl = s.c.cc.ControlPending()
		return n > 0 || fin, err
	})
	if n > 0 {
		if fin {
			s.dmu.Lock()
			s.eof = true
			s.dmu.Unlock()
		}
		if ctl {
			s.c.wake() // flow-control credit is due
		}
		return n, nil
	}
	if err != nil {
		return 0, s.mapErr(err)
	}
	if fin {
		return 0, io.EOF
	}
	return 0, nil
}

// Write writes all of p, blocking while the send buffer is full.
func (s *Stream) Write(p []byte) (int, error) { return s.writeCtx(context.Background(), p) }

func (s *Stream) writeCtx(ctx context.Context, p []byte) (int, error) {
	return s.writeFin(ctx, p, false)
}

// writeFin is writeCtx that, with fin, also ends the stream in the same
// critical section as the last bytes, so data and FIN leave in one packet
// and the driver is woken once.
func (s *Stream) writeFin(ctx context.Context, p []byte, fin bool) (int, error) {
	total := 0
	for len(p) > 0 {
		var n int
		err := s.c.waitDeadline(ctx, s.writeDL, func() (bool, error) {
			var err error
			n, err = s.c.cc.StreamWrite(s.id, p)
			if err == nil && fin && n == len(p) {
				err = s.c.cc.StreamCloseWrite(s.id)
			}
			return n > 0, err
		})
		if n > 0 {
			total += n
			p = p[n:]
			s.c.wake()
		}
		if err != nil {
			return total, s.mapErr(err)
		}
	}
	return total, nil
}

// ReadFrom copies from r in large chunks (io.Copy uses it).
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := s.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (s *Stream) mapErr(err error) error {
	if errors.Is(err, errTimeout) {
		return os.ErrDeadlineExceeded
	}
	return err
}

// CloseWrite sends FIN after the buffered data; reading continues.
func (s *Stream) CloseWrite() error {
	s.c.mu.Lock()
	err := s.c.cc.StreamCloseWrite(s.id)
	s.c.mu.Unlock()
	s.c.wake()
	return err
}

// Close releases the stream as net.Conn's Close does: the write side ends
// with FIN after the buffered data, and unless everything was read the read
// side stops (the peer is told to stop sending), so the stream's resources
// and the peer's stream credit come back. It does not wait for delivery:
// use Flush before Close for that. Use CloseWrite to half-close.
func (s *Stream) Close() error {
	s.dmu.Lock()
	eof := s.eof
	s.dmu.Unlock()
	s.c.mu.Lock()
	err := s.c.cc.StreamCloseWrite(s.id)
	if errors.Is(err, core.ErrUnknownStream) || errors.Is(err, core.ErrStreamClosed) {
		err = nil
	}
	if !eof {
		s.c.cc.StreamStopReading(s.id, 0)
	}
	s.c.notifyLocked()
	s.c.mu.Unlock()
	s.c.wake()
	return err
}

// Flush waits until the peer acknowledged everything written, FIN included
// if the stream was closed.
func (s *Stream) Flush(ctx context.Context) error {
	return s.c.wait(ctx, time.Time{}, func() (bool, error) {
		if s.c.cc.StreamSendDone(s.id) {
			return true, nil
		}
		return false, s.c.cc.Err()
	})
}

// SetMaxQueueDelay bounds the bytes written but not yet sent to what the
// connection sends in d (see core.Conn.StreamSetMaxQueueDelay): writes
// then block once d's worth of data waits, so the writer's view of its
// progress is at most d ahead of the network.
func (s *Stream) SetMaxQueueDelay(d time.Duration) {
	s.c.mu.Lock()
	_ = s.c.cc.StreamSetMaxQueueDelay(s.id, d)
	s.c.mu.Unlock()
}

// Reset abandons the write side with an application error code.
func (s *Stream) Reset(code uint64) {
	s.c.mu.Lock()
	s.c.cc.StreamReset(s.id, code)
	s.c.mu.Unlock()
	s.c.wake()
}

// StopReading asks the peer to stop sending and discards unread data.
func (s *Stream) StopReading(code uint64) {
	s.c.mu.Lock()
	s.c.cc.StreamStopReading(s.id, code)
	s.c.notifyLocked()
	s.c.mu.Unlock()
	s.c.wake()
}

func (s *Stream) readDL() time.Time {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	return s.readDeadline
}

func (s *Stream) writeDL() time.Time {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	return s.writeDeadline
}

// LocalAddr implements net.Conn.
func (s *Stream) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(s.c.LocalAddr()) }

// RemoteAddr implements net.Conn.
func (s *Stream) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(s.c.RemoteAddr()) }

// SetDeadline implements net.Conn.
func (s *Stream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn; it also applies to a blocked Read.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.dmu.Lock()
	s.readDeadline = t
	s.dmu.Unlock()
	s.c.mu.Lock()
	s.c.notifyLocked()
	s.c.mu.Unlock()
	return nil
}

// SetWriteDeadline implements net.Conn.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.dmu.Lock()
	s.writeDeadline = t
	s.dmu.Unlock()
	s.c.mu.Lock()
	s.c.notifyLocked()
	s.c.mu.Unlock()
	return nil
}
