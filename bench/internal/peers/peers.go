// Package peers implements the baseline transports that Ferry's SUDP is
// benchmarked against (plain TCP, TCP+TLS 1.3, QUIC via quic-go and KCP via
// kcp-go), behind one small interface, plus the child-process command line
// (serve / send) that mirrors `ferry perf server` / `ferry perf client`.
//
// Every peer moves data with the same framing so that all protocols do the
// same work: the sender writes an 8-byte big-endian length N, then N payload
// bytes in large writes from a pre-filled random buffer; the receiver reads
// and counts every byte and, once it holds all N, answers with a single ack
// byte. The sender's clock stops when that ack arrives.
package peers

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// ChunkSize is the size of each Write on the sender and of the receiver's
// read buffer.
const ChunkSize = 256 << 10

// ackByte is what the receiver sends once it has counted all N bytes.
const ackByte = 0x06

// Peer is one baseline transport.
type Peer interface {
	// Name is the protocol name used on the command line (tcp, tls, ...).
	Name() string
	// Listen binds listenAddr (host:port, port may be 0) and returns a
	// server ready to accept transfers.
	Listen(ctx context.Context, listenAddr string) (Server, error)
	// Send connects to addr, authenticates the server with key (as announced
	// by its Server.Key; ignored by unauthenticated peers), transfers n
	// payload bytes and waits for the receiver's acknowledgement.
	Send(ctx context.Context, addr, key string, n int64) (Result, error)
}

// Server is a listening receiver.
type Server interface {
	// Addr is the bound address (host:port).
	Addr() string
	// Key is what a client needs to authenticate this server: the hex
	// SHA-256 of the certificate for tls/quic, the hex pre-shared AES key for
	// kcp, empty for tcp.
	Key() string
	// Serve accepts and receives transfers until ctx is done or the server is
	// closed. Each connection is handled concurrently.
	Serve(ctx context.Context) error
	// Close stops listening.
	Close() error
}

// Result is what a sender reports. Field names match the JSON of
// `ferry perf client --json` so that the harness parses both the same way.
type Result struct {
	Proto           string  `json:"proto"`
	Bytes           int64   `json:"bytes"`
	Seconds         float64 `json:"seconds"`
	GoodputBps      float64 `json:"goodput_bps"`
	WireBytes       int64   `json:"wire_bytes"`
	RetransmitRatio float64 `json:"retransmit_ratio"`
	RTTMs           float64 `json:"rtt_ms"`
	HandshakeMs     float64 `json:"handshake_ms"`
	Cipher          string  `json:"cipher,omitempty"`
	// UDPRcvBuf is the sender's effective UDP receive buffer where the
	// benchmark sets it (kcp), as the kernel reports it.
	UDPRcvBuf int `json:"udp_rcvbuf,omitempty"`
	// WireNote says what WireBytes counts for this protocol.
	WireNote string `json:"wire_note,omitempty"`
	// CongestionControl is the Linux TCP congestion control in effect on
	// the sending socket (tcp peers only).
	CongestionControl string `json:"congestion_control,omitempty"`
	// Capped is set when the sender stopped at its --time-cap before the
	// receiver confirmed all bytes; Seconds is then the time until the cap,
	// BytesSent what the sender had written (not necessarily delivered:
	// the receiver's count is authoritative) and the stats are as of the cap.
	Capped    bool  `json:"capped,omitempty"`
	BytesSent int64 `json:"bytes_sent"`
}

var registry = map[string]Peer{}

func register(p Peer) { registry[p.Name()] = p }

// Get returns the peer called name.
func Get(name string) (Peer, error) {
	p, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("unknown peer protocol %q (have %s)", name, strings.Join(Names(), ", "))
	}
	return p, nil
}

// Names lists the registered peers, sorted.
func Names() []string {
	var out []string
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// payload is the pre-filled random buffer every sender writes from.
var payload = func() []byte {
	b := make([]byte, ChunkSize)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}()

// sendPayload writes the length header and n bytes, then waits for the ack.
// It adds the payload bytes written to *sent.
func sendPayload(rw io.ReadWriter, n int64, sent *int64) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := rw.Write(hdr[:]); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	for left := n; left > 0; {
		c := min(int64(len(payload)), left)
		w, err := rw.Write(payload[:c])
		left -= int64(w)
		*sent += int64(w)
		if err != nil {
			return fmt.Errorf("write payload (%d of %d bytes left): %w", left, n, err)
		}
	}
	var ack [1]byte
	if _, err := io.ReadFull(rw, ack[:]); err != nil {
		return fmt.Errorf("wait for receiver ack: %w", err)
	}
	if ack[0] != ackByte {
		return fmt.Errorf("bad ack byte %#x", ack[0])
	}
	return nil
}

// receivePayload reads the header and counts every payload byte, then acks.
func receivePayload(rw io.ReadWriter) (int64, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return 0, fmt.Errorf("read header: %w", err)
	}
	n := int64(binary.BigEndian.Uint64(hdr[:]))
	if n < 0 {
		return 0, fmt.Errorf("bad length %d", n)
	}
	buf := make([]byte, ChunkSize)
	var got int64
	for got < n {
		r, err := rw.Read(buf[:min(int64(len(buf)), n-got)])
		got += int64(r)
		received.Add(int64(r))
		if err != nil && got < n {
			return got, fmt.Errorf("read payload (%d of %d bytes): %w", got, n, err)
		}
	}
	if _, err := rw.Write([]byte{ackByte}); err != nil {
		return got, fmt.Errorf("write ack: %w", err)
	}
	return got, nil
}

// received counts the payload bytes every receiver in this process has read
// (including transfers that never completed). `serve` prints it when it
// stops, so that a capped transfer's delivered bytes are known.
var received atomic.Int64

// Received is the payload bytes received by all servers in this process.
func Received() int64 { return received.Load() }

// finish fills the common fields of a Result.
func finish(r *Result, n int64, start time.Time) {
	r.Bytes = n
	r.Seconds = time.Since(start).Seconds()
	if r.Seconds > 0 {
		r.GoodputBps = float64(n) * 8 / r.Seconds
	}
}

// deadlineConn is the part of net.Conn the helpers need.
type deadlineConn interface {
	SetDeadline(time.Time) error
	Close() error
}

// bindContext applies ctx's deadline to c and closes c when ctx is
// cancelled. Reaching the deadline does not close c (the I/O deadline fails
// the pending call instead), so that a capped sender can still read its
// connection's statistics. The returned stop function must be called when done.
func bindContext(ctx context.Context, c deadlineConn) (stop func() bool) {
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	return context.AfterFunc(ctx, func() {
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			_ = c.Close()
		}
	})
}

// acceptLoop runs accept until it fails, handling each conn in a goroutine.
// A failure after ctx is done or after the listener was closed is not an error.
func acceptLoop(ctx context.Context, accept func() (conn, error), closeListener func() error, logf func(string, ...any)) error {
	stop := context.AfterFunc(ctx, func() { _ = closeListener() })
	defer stop()
	for {
		c, err := accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			n, err := receivePayload(c)
			if err != nil {
				logf("receive failed after %d bytes: %v", n, err)
			}
			// Do not close at once: on some protocols that could drop the
			// ack. The sender closes once it has the ack; wait for that (or
			// a linger timeout, as kcp has no close notification).
			_ = c.SetReadDeadline(time.Now().Add(lingerTimeout))
			var b [1]byte
			_, _ = c.Read(b[:])
			_ = c.Close()
		}()
	}
}

// conn is what a server handles per transfer.
type conn interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
}

// lingerTimeout bounds how long a server keeps a finished transfer's
// connection open waiting for the sender to close it.
const lingerTimeout = 10 * time.Second
