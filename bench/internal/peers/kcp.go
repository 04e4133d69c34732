package peers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	kcp "github.com/xtaci/kcp-go/v5"
)

func init() { register(kcpPeer{}) }

// KCP "turbo" tuning, as in kcp-go's own tests and kcptun's "fast3"-like
// profiles: nodelay on, 10 ms internal update interval, fast resend after 2
// duplicate ACKs, congestion control off; 4096-segment windows (KCPWindow); 1400-byte
// MTU; stream mode; no write delay; ACKs flushed immediately; 16 MiB socket
// buffers. No FEC (loopback does not lose packets; FEC only costs CPU there).
const (
	kcpMTU     = 1400
	kcpSockBuf = 16 << 20
)

// KCPWindow is the KCP send and receive window in segments (both ends). 4096
// suits long fat links; on a 2-core loopback a smaller window (1024) avoids
// the queueing delay that makes KCP retransmit spuriously. Set by
// `--kcp-window` of serve/send.
var KCPWindow = 4096

func tuneKCP(s *kcp.UDPSession) {
	// Stream mode coalesces small writes into full segments. kcp-go marks the
	// setter deprecated but it is still the only way to turn it on.
	//lint:ignore SA1019 stream mode is part of the specified KCP tuning
	s.SetStreamMode(true)
	s.SetWriteDelay(false)
	s.SetNoDelay(1, 10, 2, 1)
	s.SetWindowSize(KCPWindow, KCPWindow)
	s.SetMtu(kcpMTU)
	s.SetACKNoDelay(true)
}

// kcpPeer is kcp-go with AES-128 packet encryption (kcp.NewAESBlockCrypt:
// AES-CFB with a CRC-32 integrity check, a 16-byte pre-shared key that the
// server announces as its key).
type kcpPeer struct{}

func (kcpPeer) Name() string { return "kcp" }

func kcpBlock(hexKey string) (kcp.BlockCrypt, error) {
	key, err := hex.DecodeString(hexKey)
	if err != nil || len(key) != 16 {
		return nil, fmt.Errorf("bad --server-key %q: want 32 hex digits (AES-128 key)", hexKey)
	}
	return kcp.NewAESBlockCrypt(key)
}

func (kcpPeer) Listen(_ context.Context, addr string) (Server, error) {
	key := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	hexKey := hex.EncodeToString(key)
	block, err := kcpBlock(hexKey)
	if err != nil {
		return nil, err
	}
	ln, err := kcp.ListenWithOptions(addr, block, 0, 0)
	if err != nil {
		return nil, err
	}
	_ = ln.Control(func(pc net.PacketConn) error {
		if eff := forceUDPBuffers(pc, kcpSockBuf); eff < kcpSockBuf {
			log.Printf("kcp: server UDP receive buffer is only %d bytes", eff)
		}
		return nil
	})
	return &kcpServer{ln: ln, key: hexKey}, nil
}

func (kcpPeer) Send(ctx context.Context, addr, key string, n int64) (r Result, err error) {
	r = Result{Proto: "kcp", Cipher: "AES-128-CFB (kcp-go NewAESBlockCrypt) + CRC32",
		WireNote: "UDP payload bytes sent by the sender incl. retransmissions and ACKs (kcp Snmp OutBytes), no UDP/IP headers"}
	block, err := kcpBlock(key)
	if err != nil {
		return r, err
	}
	start := time.Now()
	s, err := kcp.DialWithOptions(addr, block, 0, 0)
	if err != nil {
		return r, err
	}
	defer s.Close()
	tuneKCP(s)
	_ = s.Control(func(pc net.PacketConn) error {
		r.UDPRcvBuf = forceUDPBuffers(pc, kcpSockBuf)
		return nil
	})
	r.HandshakeMs = msSince(start) // kcp has no handshake
	stop := bindContext(ctx, s)
	defer stop()
	// Statistics also when the transfer stops early (time cap).
	defer func() {
		snmp := kcp.DefaultSnmp.Copy()
		r.WireBytes = int64(snmp.OutBytes)
		if snmp.OutSegs > 0 {
			r.RetransmitRatio = float64(snmp.RetransSegs) / float64(snmp.OutSegs)
		}
		r.RTTMs = float64(s.GetSRTT())
	}()
	if err := sendPayload(s, n, &r.BytesSent); err != nil {
		return r, err
	}
	finish(&r, n, start)
	return r, nil
}

type kcpServer struct {
	ln  *kcp.Listener
	key string
}

func (s *kcpServer) Addr() string { return s.ln.Addr().String() }
func (s *kcpServer) Key() string  { return s.key }
func (s *kcpServer) Close() error { return s.ln.Close() }

func (s *kcpServer) Serve(ctx context.Context) error {
	return acceptLoop(ctx, func() (conn, error) {
		c, err := s.ln.AcceptKCP()
		if err != nil {
			if errors.Is(err, io.ErrClosedPipe) {
				return nil, net.ErrClosed
			}
			return nil, err
		}
		tuneKCP(c)
		return c, nil
	}, s.ln.Close, func(f string, a ...any) { log.Printf("kcp: "+f, a...) })
}
