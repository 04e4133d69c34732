package sudp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Priority re-exports the scheduling classes for callers of this package.
type Priority = core.Priority

// Scheduling classes.
const (
	PriorityControl = core.PriorityControl
	PriorityNormal  = core.PriorityNormal
	PriorityBulk    = core.PriorityBulk
)

// Conn is one authenticated SUDP connection. All methods are safe for
// concurrent use.
type Conn struct {
	ep *Endpoint
	cc *core.Conn

	mu           sync.Mutex // guards cc and the fields below
	changed      chan struct{}
	confirmedNow bool
	accepted     bool
	done         bool
	// resetTokenLearned: the peer's stateless reset token was handed to
	// the endpoint, so that the peer's reset finds this connection
	resetTokenLearned bool
	rlim              recvLimit // LimitReceive

	wakeCh    chan struct{}
	stop      chan struct{}
	exited    chan struct{}
	closeSent chan struct{} // closed once the loop sent while closing
	closeOnce sync.Once
}

func newConn(e *Endpoint, cc *core.Conn) *Conn {
	return &Conn{
		ep:        e,
		cc:        cc,
		changed:   make(chan struct{}),
		wakeCh:    make(chan struct{}, 1),
		stop:      make(chan struct{}),
		exited:    make(chan struct{}),
		closeSent: make(chan struct{}),
	}
}

// notifyLocked wakes every goroutine waiting for a state change. c.mu held.
func (c *Conn) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// wake asks the send loop to poll the core.
func (c *Conn) wake() {
	select {
	case c.wakeCh <- struct{}{}:
	default:
	}
}

// afterInput runs after the reader fed datagrams to the connection.
func (c *Conn) afterInput() {
	c.mu.Lock()
	deliver := c.confirmedNow && !c.accepted && !c.cc.Client()
	if deliver {
		c.accepted = true
	}
	c.confirmedNow = false
	var tok [wire.ResetTokenLen]byte
	learn := false
	if !c.resetTokenLearned {
		tok, learn = c.cc.PeerResetToken()
		c.resetTokenLearned = learn
	}
	c.notifyLocked()
	c.mu.Unlock()
	if learn {
		c.ep.mu.Lock()
		c.ep.ep.LearnResetToken(c.cc, tok)
		c.ep.mu.Unlock()
	}
	if deliver {
		c.ep.deliverAccepted(c)
	}
	c.wake()
}

// wait blocks until cond (evaluated with c.mu held) is true, the connection
// fails, ctx ends, or deadline passes.
func (c *Conn) wait(ctx context.Context, deadline time.Time, cond func() (bool, error)) error {
	return c.waitDeadline(ctx, func() time.Time { return deadline }, cond)
}

// waitDeadline is wait with a deadline re-read after every wake-up, so that
// SetReadDeadline applies to a Read already blocked (as net.Conn requires).
func (c *Conn) waitDeadline(ctx context.Context, deadlineFn func() time.Time, cond func() (bool, error)) error {
	var timer *time.Timer
	var timeout <-chan time.Time
	var armed time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if dl := deadlineFn(); !dl.Equal(armed) {
			armed = dl
			if timer != nil {
				timer.Stop()
				timer, timeout = nil, nil
			}
			if !dl.IsZero() {
				d := time.Until(dl)
				if d <= 0 {
					return errTimeout
				}
				timer = time.NewTimer(d)
				timeout = timer.C
			}
		}
		c.mu.Lock()
		ok, err := cond()
		ch := c.changed
		c.mu.Unlock()
		if ok || err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout:
			return errTimeout
		case <-c.ep.closed:
			return ErrEndpointClosed
		}
	}
}

func (c *Conn) waitEstablished(ctx context.Context) error {
	return c.wait(ctx, time.Time{}, func() (bool, error) {
		if c.cc.Established() {
			return true, nil
		}
		return false, c.cc.Err()
	})
}

// run is the connection's send and timer loop. It polls the core for
// datagrams, sends them in GSO batches, and sleeps until the next timer, the
// pacer, or a wake-up.
func (c *Conn) run() {
	defer c.ep.wg.Done()
	defer close(c.exited)
	// Buffers for the largest datagram any path takes (the core sizes
	// each one for its path).
	maxSize := core.MaxDatagramSizeIPv4
	if c.ep.cfg.Conn.MaxDatagramSize > 0 {
		maxSize = max(c.ep.cfg.Conn.MaxDatagramSize, 256) // as core clamps it
	}
	carry := make([]byte, maxSize) // a datagram for another destination
	carryN := 0
	var carryTo netip.AddrPort
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		c.mu.Lock()
		if t := c.cc.NextTimeout(); !t.IsZero() && !now.Before(t) {
			c.cc.HandleTimeout(now)
			c.notifyLocked()
		}
		// Send buffers come from the endpoint's pool and go back before
		// waiting: an idle connection holds none (a GSO batch is 64 KiB,
		// and an MMC has thousands of mostly idle connections).
		batch := c.ep.getBatch(maxSize)
		var to netip.AddrPort
		if carryN > 0 {
			copy(batch.Next(maxSize), carry[:carryN])
			batch.Commit(carryN)
			to, carryN = carryTo, 0
		}
		full := false
		for !batch.Full(maxSize) {
			buf := batch.Next(maxSize)
			n, dst, ok := c.cc.PollTransmit(now, buf)
			if !ok {
				break
			}
			if batch.Len() > 0 && dst != to {
				// Another destination (path validation): it already has
				// a packet number, so it goes first in the next batch.
				carryN = copy(carry, buf[:n])
				carryTo = dst
				full = true
				break
			}
			to = dst
			batch.Commit(n)
		}
		full = full || batch.Full(maxSize)
		next := c.cc.NextTimeout()
		if c.cc.WantsToSend() {
			if d := c.cc.PacingDelay(now); d > 0 {
				if p := now.Add(d); next.IsZero() || p.Before(next) {
					next = p
				}
			}
		}
		closed := c.cc.IsClosed()
		if closed {
			c.notifyLocked()
		}
		closeErr := c.cc.Err()
		closing := closeErr != nil
		c.mu.Unlock()

		sent := batch.Len() > 0
		if sent {
			batch.To = to
			if err := c.ep.sock.Send(batch); err != nil && c.ep.ctx.Err() == nil {
				c.ep.log.Debug("sudp: send", "err", err)
			}
		}
		c.ep.putBatch(maxSize, batch)
		if closing {
			c.closeOnce.Do(func() {
				c.logClose(closeErr)
				close(c.closeSent)
			})
		}
		if closed {
			c.ep.removeConn(c)
			return
		}
		if full {
			continue // more may be ready right away
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		if wait == 0 && sent {
			continue
		}
		timer.Reset(max(wait, 20*time.Microsecond))
		select {
		case <-c.wakeCh:
		case <-timer.C:
		case <-c.stop:
			c.mu.Lock()
			c.cc.Abandon()
			c.notifyLocked()
			c.mu.Unlock()
			c.ep.removeConn(c)
			return
		case <-c.ep.ctx.Done():
			c.mu.Lock()
			c.cc.Abandon()
			c.notifyLocked()
			c.mu.Unlock()
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// abandon stops driving the connection without telling the peer.
func (c *Conn) abandon() {
	c.mu.Lock()
	if !c.done {
		c.done = true
		close(c.stop)
	}
	c.mu.Unlock()
}

// Close closes the connection gracefully: a CLOSE frame goes to the peer
// and Close returns once it has been sent (the draining continues in the
// background).
func (c *Conn) Close() error { return c.CloseWithError(core.CodeNoError, "") }

// CloseWithError closes with an application code (>= core.CodeApplication)
// and a reason the peer sees.
func (c *Conn) CloseWithError(code uint64, reason string) error {
	c.mu.Lock()
	c.cc.Close(time.Now(), code, reason)
	c.notifyLocked()
	c.mu.Unlock()
	c.wake()
	return nil
}

// CloseError is how a connection ended: the close code and reason, and
// whether the peer closed it (use errors.As on Err's result).
type CloseError = core.CloseError

// Err returns why the connection ended, nil while it is open.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cc.Err()
}

// Done returns a channel closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.exited }

// RemoteAddr is the peer's current UDP address.
func (c *Conn) RemoteAddr() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cc.RemoteAddr()
}

// LocalAddr is the endpoint's address.
func (c *Conn) LocalAddr() netip.AddrPort { return c.ep.LocalAddr() }

// Session describes the authenticated peer.
func (c *Conn) Session() core.Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cc.Session()
}

// Stats snapshots the connection's counters.
func (c *Conn) Stats() core.ConnStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cc.Stats()
}

// SetMaxRate caps the connection's send rate in bytes per second (0: none).
func (c *Conn) SetMaxRate(bps float64) {
	c.mu.Lock()
	c.cc.SetMaxRate(bps)
	c.mu.Unlock()
	c.wake()
}

// Resume starts the connection's rate controller from what an earlier
// connection measured over the same path (see core.Conn.Resume).
func (c *Conn) Resume(bw float64, minRTT time.Duration, loss float64) bool {
	c.mu.Lock()
	ok := c.cc.Resume(bw, minRTT, loss)
	c.mu.Unlock()
	c.wake() // the pacer's next deadline moves
	return ok
}

// SetIdleTimeout changes how long the connection lives without hearing
// from its peer (see core.Conn.SetIdleTimeout).
func (c *Conn) SetIdleTimeout(d time.Duration) {
	c.mu.Lock()
	c.cc.SetIdleTimeout(d)
	c.mu.Unlock()
	c.wake() // the driver's next deadline moves
}

// ProbePath starts moving the connection to addr (a direct path to the
// peer found while the connection runs through a relay): the connection
// challenges addr and moves, with the peer, once the answer comes back
// from it; streams carry on across the move. See core.Conn.ProbePath.
func (c *Conn) ProbePath(addr netip.AddrPort) error {
	c.mu.Lock()
	err := c.cc.ProbePath(time.Now(), netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()))
	c.mu.Unlock()
	c.wake()
	return err
}

// OpenStream opens an ordered, reliable, bidirectional byte stream, waiting
// if the peer's stream limit is reached.
func (c *Conn) OpenStream(ctx context.Context) (*Stream, error) {
	return c.openStream(ctx, false, PriorityNormal)
}

// OpenStreamPriority opens a stream with a scheduling priority.
func (c *Conn) OpenStreamPriority(ctx context.Context, prio Priority) (*Stream, error) {
	return c.openStream(ctx, false, prio)
}

func (c *Conn) openStream(ctx context.Context, uni bool, prio Priority) (*Stream, error) {
	var id uint64
	err := c.wait(ctx, time.Time{}, func() (bool, error) {
		if err := c.cc.Err(); err != nil {
			return false, err
		}
		if !c.cc.CanOpenStream(uni) {
			return false, nil
		}
		var err error
		id, err = c.cc.OpenStream(uni, prio)
		return err == nil, err
	})
	if err != nil {
		return nil, err
	}
	return &Stream{c: c, id: id}, nil
}

// AcceptStream waits for a stream the peer opened.
func (c *Conn) AcceptStream(ctx context.Context) (*Stream, error) {
	return c.acceptStream(ctx, false)
}

func (c *Conn) acceptStream(ctx context.Context, uni bool) (*Stream, error) {
	var id uint64
	err := c.wait(ctx, time.Time{}, func() (bool, error) {
		var ok bool
		if id, ok = c.cc.AcceptStream(uni); ok {
			return true, nil
		}
		return false, c.cc.Err()
	})
	if err != nil {
		return nil, err
	}
	return &Stream{c: c, id: id}, nil
}

// OpenMessage starts a reliable message of any length, written through the
// returned stream and ended by Close. Each message travels on its own
// unidirectional stream, so a large message never delays a small one.
func (c *Conn) OpenMessage(ctx context.Context, prio Priority) (*Stream, error) {
	return c.openStream(ctx, true, prio)
}

// SendMessage sends one reliable message and returns once it is buffered
// (not necessarily delivered).
// SendControl is SendMessage at PriorityControl: what the control
// message layer (package message) sends.
func (c *Conn) SendControl(ctx context.Context, msg []byte) error {
	return c.SendMessage(ctx, msg, PriorityControl)
}

func (c *Conn) SendMessage(ctx context.Context, msg []byte, prio Priority) error {
	s, err := c.OpenMessage(ctx, prio)
	if err != nil {
		return err
	}
	if len(msg) == 0 {
		return s.CloseWrite()
	}
	if _, err := s.writeFin(ctx, msg, true); err != nil {
		s.Reset(1)
		return err
	}
	return nil
}

// AcceptMessage waits for the next incoming reliable message and returns a
// stream to read it from (to EOF). Messages are accepted in the order the
// peer opened them (a later message's frames open the earlier ones), but
// each is read independently: a large message does not hold up the bytes
// of a small one.
func (c *Conn) AcceptMessage(ctx context.Context) (*Stream, error) {
	return c.acceptStream(ctx, true)
}

// ErrMessageTooLarge is returned by ReceiveMessage for a message over its
// limit; the message is discarded.
var ErrMessageTooLarge = errors.New("sudp: message larger than the receive limit")

// ReceiveMessage waits for the next reliable message and reads it whole,
// refusing one larger than limit bytes.
func (c *Conn) ReceiveMessage(ctx context.Context, limit int) ([]byte, error) {
	s, err := c.AcceptMessage(ctx)
	if err != nil {
		return nil, err
	}
	buf, err := io.ReadAll(io.LimitReader(ctxReader{ctx, s}, int64(limit)+1))
	if err != nil {
		s.StopReading(1)
		return nil, err
	}
	if len(buf) > limit {
		s.StopReading(1)
		return nil, ErrMessageTooLarge
	}
	return buf, nil
}

type ctxReader struct {
	ctx context.Context
	s   *Stream
}

func (r ctxReader) Read(p []byte) (int, error) { return r.s.readCtx(r.ctx, p) }

// SendDatagram queues a best-effort message (fragmented if large, never
// retransmitted, delivered whole or not at all).
func (c *Conn) SendDatagram(msg []byte, prio Priority) error {
	c.mu.Lock()
	err := c.cc.SendDatagram(msg, prio)
	c.mu.Unlock()
	c.wake()
	return err
}

// ReceiveDatagram waits for the next best-effort message.
func (c *Conn) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	var msg []byte
	err := c.wait(ctx, time.Time{}, func() (bool, error) {
		var ok bool
		if msg, ok = c.cc.RecvDatagram(); ok {
			return true, nil
		}
		return false, c.cc.Err()
	})
	return msg, err
}

// errTimeout is a net.Error timeout, as net.Conn deadlines require.
var errTimeout error = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string   { return "sudp: i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

var _ net.Error = timeoutError{}

// logClose reports a connection we closed because its peer crossed the
// receive budget: a peer holding a session may be hostile, and the operator
// should see which one (the metric says how often).
func (c *Conn) logClose(err error) {
	var ce *core.CloseError
	if errors.As(err, &ce) && !ce.Remote && ce.Code == core.CodeRecvBudget {
		c.ep.log.Warn("sudp: closing connection: peer exceeded the receive budget",
			"peer", c.RemoteAddr(), "peer_id", c.Session().PeerID, "reason", ce.Reason)
	}
}
