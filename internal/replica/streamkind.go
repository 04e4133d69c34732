package replica

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/sudp"
)

// A member's connection carries two kinds of streams: raft's RPCs and
// admin API requests a follower forwards to the leader (HTTP/1.1). Both
// ride the members' authenticated SUDP connection, so forwarding needs no
// second protocol, no plaintext port and no TLS between members. The
// opener of a stream writes one kind byte first (docs/protocol.md §16.4);
// the serving side reads exactly that byte, then routes the stream.

// streamKind is the first byte of every stream a member opens.
type streamKind byte

const (
	kindRaft  streamKind = 0x01
	kindAdmin streamKind = 0x02
)

// Defaults of StreamLayerConfig.KindTimeout and MaxPendingStreams.
const (
	DefaultKindTimeout       = 5 * time.Second
	DefaultMaxPendingStreams = 16
)

// parseKind decides a stream's kind from its first byte; ok is false for
// a byte that names no kind (the stream is refused).
func parseKind(b byte) (streamKind, bool) {
	switch k := streamKind(b); k {
	case kindRaft, kindAdmin:
		return k, true
	}
	return 0, false
}

// Why a stream was refused (logged; every one is counted in
// RefusedStreams).
const (
	refuseNoKind      = "no kind byte before the deadline"
	refuseUnknownKind = "unknown stream kind"
	refuseNoAdmin     = "admin streams are not served"
)

// AdminListener is the net.Listener of the admin streams members open
// (an http.Server serves it). The first call creates it; later calls
// return the same listener. Until it exists, and once it is closed,
// admin streams are refused (RefusedStreams); raft streams are not
// affected. Closing the layer closes it.
func (l *StreamLayer) AdminListener() net.Listener {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.admin == nil {
		l.admin = &adminListener{
			addr:     raftAddr(l.cfg.Advertise),
			incoming: make(chan net.Conn),
			done:     make(chan struct{}),
		}
		if l.ctx.Err() != nil {
			l.admin.Close()
		}
	}
	return l.admin
}

// DialAdmin opens an admin stream to the member at addr, on the
// connection raft's streams to it use (dialed first if there is none),
// with its kind byte written. As an http.Transport's DialContext, the
// caller maps the request's host to the member's raft address.
func (l *StreamLayer) DialAdmin(ctx context.Context, addr raft.ServerAddress) (net.Conn, error) {
	// The dial ends with the caller's context or the layer, whichever
	// ends first.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(l.ctx, cancel)
	defer stop()
	s, err := l.openKind(ctx, addr, kindAdmin)
	if err != nil {
		return nil, err // not a nil *sudp.Stream in a non-nil net.Conn
	}
	return s, nil
}

// openKind opens a stream of kind to the member at address.
func (l *StreamLayer) openKind(ctx context.Context, address raft.ServerAddress, kind streamKind) (*sudp.Stream, error) {
	c, err := l.conn(ctx, address)
	if err != nil {
		return nil, err
	}
	s, err := c.OpenStream(ctx)
	if err != nil {
		// A connection that ended (the peer restarted, timed out) is
		// dropped so that the next dial handshakes again; one that is
		// alive (the wait for a stream slot timed out) carries other
		// streams and stays.
		if c.Err() != nil {
			l.forget(address, c)
		}
		if l.ctx.Err() != nil {
			err = ErrLayerClosed
		}
		return nil, fmt.Errorf("replica: open stream to %s: %w", address, err)
	}
	// A fresh stream's send buffer is empty: the byte is buffered at
	// once, and leaves with the stream's first packet.
	if _, err := s.Write([]byte{byte(kind)}); err != nil {
		s.Close()
		return nil, fmt.Errorf("replica: open stream to %s: %w", address, err)
	}
	return s, nil
}

// classify reads s's kind byte, waiting at most the kind timeout, and
// releases its slot among the connection's pending streams (pending) as
// soon as the kind is known or the wait failed. It returns the kind, or
// why the stream is refused.
func (l *StreamLayer) classify(s *sudp.Stream, pending <-chan struct{}) (streamKind, string) {
	defer func() { <-pending }()
	s.SetReadDeadline(time.Now().Add(l.cfg.KindTimeout))
	// Exactly one byte: whatever follows it is the stream's content and
	// stays in the stream for its reader.
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return 0, refuseNoKind
	}
	s.SetReadDeadline(time.Time{})
	kind, ok := parseKind(b[0])
	if !ok {
		return 0, refuseUnknownKind
	}
	return kind, ""
}

// route hands a classified stream to its reader: raft's Accept or the
// admin listener. It blocks until one takes it, the admin listener
// closes, or the layer closes.
func (l *StreamLayer) route(s *sudp.Stream, kind streamKind) {
	switch kind {
	case kindRaft:
		select {
		case l.incoming <- s:
		case <-l.ctx.Done():
			s.Close()
		}
	case kindAdmin:
		l.mu.Lock()
		a := l.admin
		l.mu.Unlock()
		if a == nil {
			l.refuse(s, refuseNoAdmin)
			return
		}
		select {
		case a.incoming <- s:
		case <-a.done:
			l.refuse(s, refuseNoAdmin)
		case <-l.ctx.Done():
			s.Close()
		}
	}
}

// refuse closes s and counts it.
func (l *StreamLayer) refuse(s *sudp.Stream, why string) {
	l.refusedStreams.Add(1)
	l.log.Warn("replica: refused a member's stream", "reason", why, "from", s.RemoteAddr())
	s.Close()
}

// RefusedStreams counts streams from members that were closed unread: no
// kind byte before the deadline, an unknown kind, or an admin stream
// while no admin listener is open.
func (l *StreamLayer) RefusedStreams() uint64 { return l.refusedStreams.Load() }

// adminListener hands admin streams to an http.Server.
type adminListener struct {
	addr     net.Addr
	incoming chan net.Conn
	done     chan struct{}
	once     sync.Once
}

// Accept implements net.Listener: the next admin stream a member opened.
func (a *adminListener) Accept() (net.Conn, error) {
	select {
	case s := <-a.incoming:
		return s, nil
	case <-a.done:
		return nil, fmt.Errorf("replica: admin listener: %w", net.ErrClosed)
	}
}

// Close implements net.Listener: admin streams are refused from now on.
func (a *adminListener) Close() error {
	a.once.Do(func() { close(a.done) })
	return nil
}

// Addr implements net.Listener: the member's raft address.
func (a *adminListener) Addr() net.Addr { return a.addr }

var _ net.Listener = (*adminListener)(nil)
