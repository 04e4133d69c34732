package peers

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	register(tcpPeer{name: "tcp"})
	register(tcpPeer{name: "tcp-cubic", cc: "cubic"})
	register(tcpPeer{name: "tcp-bbr", cc: "bbr"})
	register(tlsPeer{})
}

// tcpPeer is plain TCP: the unencrypted reference. Tuning: Go defaults
// (TCP_NODELAY on) and the kernel's buffer autotuning, which setting
// SO_SNDBUF/SO_RCVBUF would disable. With cc set (tcp-cubic, tcp-bbr) both
// sockets get that congestion control through setsockopt(TCP_CONGESTION)
// (it matters on the sender; the receiver only acks); without it the
// system default (net.ipv4.tcp_congestion_control) applies.
type tcpPeer struct {
	name string
	cc   string
}

func (p tcpPeer) Name() string { return p.name }

// control sets TCP_CONGESTION on a socket before it connects or listens.
func (p tcpPeer) control(_, _ string, rc syscall.RawConn) error {
	if p.cc == "" {
		return nil
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, p.cc)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt TCP_CONGESTION %q: %w (see /proc/sys/net/ipv4/tcp_available_congestion_control; non-root needs it in tcp_allowed_congestion_control)", p.cc, serr)
	}
	return nil
}

func (p tcpPeer) Listen(ctx context.Context, addr string) (Server, error) {
	lc := net.ListenConfig{Control: p.control}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &streamServer{ln: ln, name: p.name}, nil
}

func (p tcpPeer) Send(ctx context.Context, addr, _ string, n int64) (r Result, err error) {
	r = Result{Proto: p.name, WireNote: "TCP payload bytes sent incl. retransmissions (tcpi_bytes_sent), no headers"}
	start := time.Now()
	d := net.Dialer{Control: p.control}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return r, err
	}
	defer c.Close()
	r.HandshakeMs = msSince(start)
	stop := bindContext(ctx, c)
	defer stop()
	// Statistics also when the transfer stops early (time cap).
	defer tcpStats(c, &r)
	if err := sendPayload(c, n, &r.BytesSent); err != nil {
		return r, err
	}
	finish(&r, n, start)
	return r, nil
}

// tlsPeer is TCP + TLS 1.3 (crypto/tls picks AES-128-GCM on CPUs with AES
// instructions), server authenticated by a pinned self-signed certificate.
type tlsPeer struct{}

func (tlsPeer) Name() string { return "tls" }

func (tlsPeer) Listen(ctx context.Context, addr string) (Server, error) {
	cert, fp, err := selfSigned()
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &streamServer{ln: tls.NewListener(ln, serverTLS(cert, "ferrybench-tls")), key: fp, name: "tls"}, nil
}

func (tlsPeer) Send(ctx context.Context, addr, key string, n int64) (r Result, err error) {
	r = Result{Proto: "tls", WireNote: "TCP payload bytes sent incl. TLS records and retransmissions (tcpi_bytes_sent), no headers"}
	conf, err := clientTLS(key, "ferrybench-tls")
	if err != nil {
		return r, err
	}
	start := time.Now()
	d := tls.Dialer{Config: conf}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return r, err
	}
	c := nc.(*tls.Conn)
	defer c.Close()
	r.HandshakeMs = msSince(start)
	st := c.ConnectionState()
	r.Cipher = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
	stop := bindContext(ctx, c)
	defer stop()
	defer tcpStats(c.NetConn(), &r)
	if err := sendPayload(c, n, &r.BytesSent); err != nil {
		return r, err
	}
	finish(&r, n, start)
	return r, nil
}

// streamServer serves tcp and tls.
type streamServer struct {
	ln   net.Listener
	key  string
	name string
}

func (s *streamServer) Addr() string { return s.ln.Addr().String() }
func (s *streamServer) Key() string  { return s.key }
func (s *streamServer) Close() error { return s.ln.Close() }

func (s *streamServer) Serve(ctx context.Context) error {
	// For tls the handshake runs on the first Read, in the per-connection
	// goroutine.
	return acceptLoop(ctx, func() (conn, error) { return s.ln.Accept() }, s.ln.Close,
		func(f string, a ...any) { log.Printf(s.name+": "+f, a...) })
}

// tcpStats fills RTT, retransmissions and bytes sent from TCP_INFO.
func tcpStats(c net.Conn, r *Result) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	var info *unix.TCPInfo
	_ = raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err != nil || info == nil {
		return
	}
	r.RTTMs = float64(info.Rtt) / 1000
	r.CongestionControl = congestionControl(raw)
	r.WireBytes = int64(info.Bytes_sent)
	if info.Segs_out > 0 {
		r.RetransmitRatio = float64(info.Total_retrans) / float64(info.Segs_out)
	}
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// congestionControl reads TCP_CONGESTION back from a socket.
func congestionControl(raw syscall.RawConn) string {
	var cc string
	_ = raw.Control(func(fd uintptr) {
		v, err := unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
		if err == nil {
			cc = strings.TrimRight(v, "\x00")
		}
	})
	return cc
}
