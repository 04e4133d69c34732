// Package perf is `ferry perf`: an iperf3-like link test over SUDP that an
// operator runs between two hosts before trusting a path with a migration.
//
// The client opens one bulk stream, sends an 8-byte length then that many
// bytes; the server reads and counts every byte and answers with the count,
// so the client's clock stops only when the receiver has everything.
package perf

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/core"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// ClusterID binds perf handshakes, so a perf client can never complete a
// handshake with a production endpoint and vice versa.
const ClusterID = "ferry-perf"

// OpenPSK is the psk of a perf server without a shared secret. Noise needs
// some psk; a published constant keeps the handshake's shape while making no
// secrecy claim (the server's static key still authenticates the server).
var OpenPSK = sha256.Sum256([]byte("ferry perf: no shared secret"))

func pskOrOpen(k [32]byte) [32]byte {
	if k == ([32]byte{}) {
		return OpenPSK
	}
	return k
}

// ServerConfig configures a perf server.
type ServerConfig struct {
	Listen string
	Static noise.DHKey
	PSK    [32]byte // shared secret clients must prove; zero = open server
	Logger *slog.Logger
}

// Server accepts perf clients.
type Server struct {
	ep  *sudp.Endpoint
	log *slog.Logger
}

// NewServer opens the server's endpoint. Any client key is accepted (as an
// iperf3 server would); the psk, if set, restricts it to those who know it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	psk := pskOrOpen(cfg.PSK)
	ep, err := sudp.Listen(sudp.Config{
		Listen:    cfg.Listen,
		Static:    cfg.Static,
		ClusterID: ClusterID,
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			return handshake.Peer{ID: handshake.EncodeKey(peer), PSK: psk, Allowed: true}, nil
		},
		Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &Server{ep: ep, log: cfg.Logger}, nil
}

// Endpoint exposes the server's endpoint (address, key, stats).
func (s *Server) Endpoint() *sudp.Endpoint { return s.ep }

// Serve accepts and serves clients until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	defer s.ep.Close()
	for {
		c, err := s.ep.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go s.serveConn(ctx, c)
	}
}

func (s *Server) serveConn(ctx context.Context, c *sudp.Conn) {
	defer c.Close()
	for {
		st, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			n, err := sink(st)
			if err != nil {
				s.log.Warn("perf: transfer failed", "peer", c.RemoteAddr(), "err", err)
				st.Reset(1)
				return
			}
			s.log.Info("perf: transfer done", "peer", c.RemoteAddr(), "bytes", n)
		}()
	}
}

// sink reads the length header and that many bytes, then replies with the
// count it received.
func sink(st *sudp.Stream) (uint64, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(st, hdr[:]); err != nil {
		return 0, err
	}
	want := binary.BigEndian.Uint64(hdr[:])
	buf := make([]byte, 256<<10)
	var got uint64
	for got < want {
		n, err := st.Read(buf[:min(uint64(len(buf)), want-got)])
		got += uint64(n)
		if err != nil {
			return got, err
		}
	}
	binary.BigEndian.PutUint64(hdr[:], got)
	if _, err := st.Write(hdr[:]); err != nil {
		return got, err
	}
	return got, st.Close()
}

// ClientConfig configures one perf run.
type ClientConfig struct {
	Server    string
	ServerKey [32]byte
	PSK       [32]byte
	Bytes     uint64
	MaxRate   float64 // bytes/s, 0 = uncapped
	// LongHeaders sends with the 18-byte long data header (what the
	// short one gains, measured in one run).
	LongHeaders bool
	Timeout     time.Duration
	Logger      *slog.Logger
}

// Result is what a perf run measured. The JSON names are part of the CLI
// contract that acceptance checks rely on.
type Result struct {
	Bytes           uint64  `json:"bytes"`
	Seconds         float64 `json:"seconds"`
	GoodputBps      float64 `json:"goodput_bps"`
	WireBytes       uint64  `json:"wire_bytes"`
	RetransmitRatio float64 `json:"retransmit_ratio"`
	RTTms           float64 `json:"rtt_ms"`
	MinRTTms        float64 `json:"min_rtt_ms"`
	PacketsSent     uint64  `json:"packets_sent"`
	PacketsLost     uint64  `json:"packets_lost"`
	HandshakeMs     float64 `json:"handshake_ms"`
	// The rate controller's view at the end of the transfer.
	PacingRateBps float64 `json:"pacing_rate_bps"`
	CwndBytes     int     `json:"cwnd_bytes"`
}

// Run performs one transfer.
func Run(ctx context.Context, cfg ClientConfig) (*Result, error) {
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	static, err := handshake.GenerateKeypair(rand.Reader)
	if err != nil {
		return nil, err
	}
	ep, err := sudp.Listen(sudp.Config{Listen: listenFor(cfg.Server), Static: static, ClusterID: ClusterID, Logger: cfg.Logger,
		Conn: core.Config{LongHeaders: cfg.LongHeaders}})
	if err != nil {
		return nil, err
	}
	defer ep.Close()
	t0 := time.Now()
	c, err := ep.Dial(ctx, cfg.Server, cfg.ServerKey, pskOrOpen(cfg.PSK))
	if err != nil {
		return nil, fmt.Errorf("perf: connect %s: %w", cfg.Server, err)
	}
	defer c.Close()
	hs := time.Since(t0)
	if cfg.MaxRate > 0 {
		c.SetMaxRate(cfg.MaxRate)
	}
	st, err := c.OpenStreamPriority(ctx, sudp.PriorityBulk)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	stopTrace := traceStats(ctx, cfg.Logger, c)
	defer stopTrace()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], cfg.Bytes)
	if _, err := st.Write(hdr[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, 256<<10)
	if _, err := rand.Read(buf); err != nil {
		return nil, err
	}
	for left := cfg.Bytes; left > 0; {
		n := min(uint64(len(buf)), left)
		if _, err := st.Write(buf[:n]); err != nil {
			return nil, fmt.Errorf("perf: send: %w", err)
		}
		left -= n
	}
	done := make(chan error, 1)
	go func() {
		var ack [8]byte
		_, err := io.ReadFull(st, ack[:])
		if err == nil && binary.BigEndian.Uint64(ack[:]) != cfg.Bytes {
			err = fmt.Errorf("perf: server received %d bytes, sent %d", binary.BigEndian.Uint64(ack[:]), cfg.Bytes)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("perf: waiting for the server's count: %w", ctx.Err())
	}
	secs := time.Since(start).Seconds()
	stats := c.Stats()
	r := &Result{
		Bytes:       cfg.Bytes,
		Seconds:     secs,
		GoodputBps:  float64(cfg.Bytes) * 8 / secs,
		WireBytes:   stats.BytesSent,
		RTTms:       float64(stats.SmoothedRTT) / float64(time.Millisecond),
		MinRTTms:    float64(stats.MinRTT) / float64(time.Millisecond),
		PacketsSent: stats.PacketsSent,
		PacketsLost: stats.PacketsLost,
		HandshakeMs: float64(hs) / float64(time.Millisecond),

		PacingRateBps: stats.PacingRate * 8,
		CwndBytes:     stats.CongestionWindow,
	}
	if stats.StreamBytesSent > 0 {
		r.RetransmitRatio = float64(stats.RetransmittedBytes) / float64(stats.StreamBytesSent)
	}
	_ = st.Close()
	return r, nil
}

// traceStats logs the connection's rate-control view every 250 ms at debug
// level, for tuning on the WAN lab; it returns the function that stops it.
func traceStats(ctx context.Context, log *slog.Logger, c *sudp.Conn) (stop func()) {
	if log == nil || !log.Enabled(ctx, slog.LevelDebug) {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		prev := c.Stats()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			s := c.Stats()
			log.Debug("perf: trace",
				"send_mbit", float64(s.BytesSent-prev.BytesSent)*8/0.25/1e6,
				"new_mbit", float64(s.StreamBytesSent-prev.StreamBytesSent)*8/0.25/1e6,
				"lost", s.PacketsLost-prev.PacketsLost,
				"pacing_mbit", s.PacingRate*8/1e6,
				"cwnd", s.CongestionWindow, "inflight", s.BytesInFlight,
				"srtt", s.SmoothedRTT, "min_rtt", s.MinRTT)
			prev = s
		}
	}()
	return func() { cancel(); <-done }
}

func listenFor(server string) string {
	// An IPv6 server needs an IPv6 socket.
	for i := len(server) - 1; i >= 0; i-- {
		if server[i] == ']' {
			return "[::]:0"
		}
	}
	return "0.0.0.0:0"
}

// ErrNoKey means the server key is missing.
var ErrNoKey = errors.New("perf: --server-key is required")
