package peers

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"time"

	"github.com/quic-go/quic-go"
)

func init() { register(quicPeer{}) }

const quicALPN = "ferrybench-quic"

// QUIC tuning: flow-control windows large enough that a single stream is
// never window-limited on loopback or on the emulated WAN (default maximums
// are 6 MB per stream / 15 MB per connection). quic-go itself raises the UDP
// socket buffers to 7 MiB and uses UDP GSO/ECN where the kernel has them.
const (
	quicInitialWindow = 16 << 20
	quicMaxWindow     = 32 << 20
)

func quicConfig() *quic.Config {
	return &quic.Config{
		InitialStreamReceiveWindow:     quicInitialWindow,
		MaxStreamReceiveWindow:         quicMaxWindow,
		InitialConnectionReceiveWindow: quicInitialWindow,
		MaxConnectionReceiveWindow:     quicMaxWindow,
		MaxIdleTimeout:                 30 * time.Second,
		HandshakeIdleTimeout:           10 * time.Second,
	}
}

// quicPeer is quic-go: one bidirectional stream, TLS 1.3 (AES-128-GCM on CPUs
// with AES instructions), server authenticated by a pinned self-signed
// certificate.
type quicPeer struct{}

func (quicPeer) Name() string { return "quic" }

func (quicPeer) Listen(_ context.Context, addr string) (Server, error) {
	cert, fp, err := selfSigned()
	if err != nil {
		return nil, err
	}
	ln, err := quic.ListenAddr(addr, serverTLS(cert, quicALPN), quicConfig())
	if err != nil {
		return nil, err
	}
	return &quicServer{ln: ln, key: fp}, nil
}

func (quicPeer) Send(ctx context.Context, addr, key string, n int64) (r Result, err error) {
	r = Result{Proto: "quic", WireNote: "UDP payload bytes sent by the sender incl. retransmissions (quic-go BytesSent), no UDP/IP headers"}
	conf, err := clientTLS(key, quicALPN)
	if err != nil {
		return r, err
	}
	start := time.Now()
	c, err := quic.DialAddr(ctx, addr, conf, quicConfig())
	if err != nil {
		return r, err
	}
	defer func() { _ = c.CloseWithError(0, "done") }()
	st, err := c.OpenStreamSync(ctx)
	if err != nil {
		return r, err
	}
	r.HandshakeMs = msSince(start)
	tlsState := c.ConnectionState().TLS
	r.Cipher = "QUIC " + tls.VersionName(tlsState.Version) + " " + tls.CipherSuiteName(tlsState.CipherSuite)
	stop := bindContext(ctx, st)
	defer stop()
	// Statistics also when the transfer stops early (time cap).
	defer func() {
		s := c.ConnectionStats()
		r.WireBytes = int64(s.BytesSent)
		if s.PacketsSent > 0 {
			r.RetransmitRatio = float64(s.PacketsLost) / float64(s.PacketsSent)
		}
		r.RTTMs = float64(s.SmoothedRTT.Microseconds()) / 1000
	}()
	if err := sendPayload(st, n, &r.BytesSent); err != nil {
		return r, err
	}
	finish(&r, n, start)
	_ = st.Close()
	return r, nil
}

type quicServer struct {
	ln  *quic.Listener
	key string
}

func (s *quicServer) Addr() string { return s.ln.Addr().String() }
func (s *quicServer) Key() string  { return s.key }
func (s *quicServer) Close() error { return s.ln.Close() }

func (s *quicServer) Serve(ctx context.Context) error {
	for {
		c, err := s.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer func() { _ = c.CloseWithError(0, "bye") }()
			st, err := c.AcceptStream(ctx)
			if err != nil {
				log.Printf("quic: accept stream: %v", err)
				return
			}
			if n, err := receivePayload(st); err != nil {
				log.Printf("quic: receive failed after %d bytes: %v", n, err)
				return
			}
			// Closing now could lose the ack: wait for the sender to close.
			select {
			case <-c.Context().Done():
			case <-ctx.Done():
			case <-time.After(lingerTimeout):
			}
		}()
	}
}
