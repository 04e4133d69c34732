package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flynn/noise"
	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// Every byte value: only 0x01 (raft) and 0x02 (admin) name a kind.
func TestParseKind(t *testing.T) {
	for b := range 256 {
		k, ok := parseKind(byte(b))
		switch b {
		case 0x01:
			if !ok || k != kindRaft {
				t.Fatalf("0x01: %v %v", k, ok)
			}
		case 0x02:
			if !ok || k != kindAdmin {
				t.Fatalf("0x02: %v %v", k, ok)
			}
		default:
			if ok {
				t.Fatalf("byte %#x accepted as kind %v", b, k)
			}
		}
	}
}

// layerMember is a member's endpoint and stream layer without raft's
// transport, so that a test reads the layer's Accept itself.
type layerMember struct {
	key   noise.DHKey
	ep    *sudp.Endpoint
	addr  raft.ServerAddress
	layer *StreamLayer
}

func listenLayer(t *testing.T, members *Members, psk [32]byte, tune func(*StreamLayerConfig)) *layerMember {
	t.Helper()
	m := &layerMember{key: genKey(t)}
	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: m.key, ClusterID: "test", Lookup: members.Lookup(psk)})
	if err != nil {
		t.Fatal(err)
	}
	m.ep = ep
	m.addr = raft.ServerAddress(ep.LocalAddr().String())
	cfg := StreamLayerConfig{Endpoint: ep, Advertise: m.addr, Members: members, PSK: psk}
	if tune != nil {
		tune(&cfg)
	}
	m.layer = NewStreamLayer(cfg)
	members.Set(m.addr, pubKey(m.key))
	m.layer.AcceptFrom(ep)
	t.Cleanup(func() {
		m.layer.Close()
		ep.Close()
	})
	return m
}

// rawConn is a member's own SUDP connection to another member, outside
// any layer, to open streams with arbitrary first bytes.
func (m *layerMember) rawConn(t *testing.T, ctx context.Context, to *layerMember, psk [32]byte) *sudp.Conn {
	t.Helper()
	c, err := m.ep.Dial(ctx, string(to.addr), pubKey(to.key), psk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// adminClient is an http.Client whose connections are admin streams from
// layer to the member a request's host names (hosts maps it to the raft
// address, as the MMC maps a leader's id).
func adminClient(layer *StreamLayer, hosts map[string]raft.ServerAddress) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, hostport string) (net.Conn, error) {
				host, _, err := net.SplitHostPort(hostport)
				if err != nil {
					return nil, err
				}
				addr, ok := hosts[host]
				if !ok {
					return nil, fmt.Errorf("no member %q", host)
				}
				return layer.DialAdmin(ctx, addr)
			},
		},
	}
}

// serveAdmin serves an echo handler on l's admin listener.
func serveAdmin(t *testing.T, l *StreamLayer) *http.Server {
	t.Helper()
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, body)
		}),
	}
	ln := l.AdminListener()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return srv
}

type acceptResult struct {
	c   net.Conn
	err error
}

// acceptOrTimeout is ln.Accept, or a timeout error after d (the Accept
// then ends when the test's cleanup closes ln).
func acceptOrTimeout(ln net.Listener, d time.Duration) acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := ln.Accept()
		ch <- acceptResult{c, err}
	}()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		return acceptResult{err: fmt.Errorf("nothing accepted in %v", d)}
	}
}

// acceptWithin is ln.Accept, failing the test after d.
func acceptWithin(t *testing.T, ln net.Listener, d time.Duration) net.Conn {
	t.Helper()
	r := acceptOrTimeout(ln, d)
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.c
}

// acceptErr is ln.Accept's error, which a test expects (a timeout error
// after d).
func acceptErr(ln net.Listener, d time.Duration) error {
	r := acceptOrTimeout(ln, d)
	if r.c != nil {
		r.c.Close()
		return errors.New("a stream was accepted")
	}
	return r.err
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// A follower's admin requests reach the leader's HTTP server over the
// members' SUDP connection: an http.Client on B whose DialContext is
// DialAdmin, an http.Server on A's AdminListener. Raft streams share the
// connection and arrive without their kind byte; closing the admin
// listener refuses admin streams (counted) and leaves raft alone;
// closing the layer closes the admin listener.
func TestAdminRequestsOverMemberStreams(t *testing.T) {
	ctx := ctxT(t)
	psk := testPSK(t)
	dir := NewMembers()
	a := listenLayer(t, dir, psk, nil)
	b := listenLayer(t, dir, psk, nil)
	serveAdmin(t, a.layer)
	client := adminClient(b.layer, map[string]raft.ServerAddress{"mmc-a": a.addr})

	for i := range 5 {
		got, err := get(client, fmt.Sprintf("http://mmc-a/v1/agents/%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("GET /v1/agents/%d ", i); got != want {
			t.Fatalf("answer %q, want %q", got, want)
		}
	}
	resp, err := client.Post("http://mmc-a/v1/policy", "application/json", strings.NewReader(`{"version":3}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != `POST /v1/policy {"version":3}` {
		t.Fatalf("answer %q", body)
	}

	// A raft stream on the same connection: raft's Accept gets it, first
	// byte after the kind byte first.
	rs, err := b.layer.Dial(a.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if _, err := rs.Write([]byte("raft rpc")); err != nil {
		t.Fatal(err)
	}
	acc := acceptWithin(t, a.layer, 5*time.Second)
	defer acc.Close()
	buf := make([]byte, len("raft rpc"))
	if _, err := io.ReadFull(acc, buf); err != nil || string(buf) != "raft rpc" {
		t.Fatalf("raft stream read %q %v", buf, err)
	}
	b.layer.mu.Lock()
	nconns := len(b.layer.conns)
	b.layer.mu.Unlock()
	if nconns != 1 {
		t.Fatalf("B holds %d connections to A, want one shared by raft and admin", nconns)
	}
	if n := a.layer.RefusedStreams(); n != 0 {
		t.Fatalf("%d streams refused", n)
	}

	// Admin listener closed: admin requests fail and are counted, a raft
	// stream still arrives.
	a.layer.AdminListener().Close()
	client.CloseIdleConnections()
	if _, err := get(client, "http://mmc-a/v1/agents"); err == nil {
		t.Fatal("an admin request was answered after the admin listener closed")
	}
	waitFor(t, "the refused admin stream counted", 5*time.Second, func() bool { return a.layer.RefusedStreams() >= 1 })
	rs2, err := b.layer.Dial(a.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rs2.Close()
	rs2.Write([]byte{7})
	acceptWithin(t, a.layer, 5*time.Second).Close()

	// DialAdmin to an address that is not a member's fails.
	if _, err := b.layer.DialAdmin(ctx, "127.0.0.1:1"); err == nil {
		t.Fatal("DialAdmin reached a non-member address")
	}

	// The layer's Close closes its admin listener.
	b.layer.AdminListener()
	b.layer.Close()
	if err := acceptErr(b.layer.AdminListener(), 5*time.Second); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed layer's admin listener: %v", err)
	}
	if _, err := b.layer.DialAdmin(ctx, a.addr); err == nil {
		t.Fatal("DialAdmin on a closed layer")
	}
}

// A stream whose first byte names no kind is closed and counted; the
// connection lives on, and the next stream (kind and content in one
// write) reaches its reader with every byte after the kind byte.
func TestUnknownStreamKindRefused(t *testing.T) {
	ctx := ctxT(t)
	psk := testPSK(t)
	dir := NewMembers()
	a := listenLayer(t, dir, psk, nil)
	b := listenLayer(t, dir, psk, nil)
	ln := a.layer.AdminListener()
	c := b.rawConn(t, ctx, a, psk)

	for i, first := range []byte{0x00, 0x03, 0x7f, 0xff} {
		s, err := c.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte{first, 'x', 'y'})
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := s.Read(make([]byte, 8)); !errors.Is(err, io.EOF) {
			t.Fatalf("kind %#x: read %d, %v; want the stream closed", first, n, err)
		}
		s.Close()
		if got := a.layer.RefusedStreams(); got != uint64(i+1) {
			t.Fatalf("kind %#x: refused streams %d, want %d", first, got, i+1)
		}
	}
	if c.Err() != nil {
		t.Fatalf("the connection ended: %v", c.Err())
	}

	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write(append([]byte{byte(kindAdmin)}, "GET / HTTP/1.1\r\n"...)); err != nil {
		t.Fatal(err)
	}
	as := acceptWithin(t, ln, 5*time.Second)
	defer as.Close()
	buf := make([]byte, len("GET / HTTP/1.1\r\n"))
	as.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(as, buf); err != nil || string(buf) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("admin stream read %q %v", buf, err)
	}
}

// A stream that never sends its kind byte is closed once KindTimeout
// passes and counted; at most MaxPendingStreams streams of a connection
// wait for their kind byte at once, so a third stream is read only after
// the two silent ones were refused.
func TestStreamWithoutKindClosedAfterDeadline(t *testing.T) {
	ctx := ctxT(t)
	psk := testPSK(t)
	dir := NewMembers()
	const timeout = 400 * time.Millisecond
	a := listenLayer(t, dir, psk, func(c *StreamLayerConfig) {
		c.KindTimeout = timeout
		c.MaxPendingStreams = 2
	})
	b := listenLayer(t, dir, psk, nil)
	ln := a.layer.AdminListener()
	c := b.rawConn(t, ctx, a, psk)

	// Streams open on the peer with the first frame of a higher one (as
	// in QUIC): s1 and s2 reach A when s3's bytes do, and stay silent.
	s1, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s3, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := s3.Write([]byte{byte(kindAdmin), 'o', 'k'}); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan time.Duration, 1)
	go func() {
		as, err := ln.Accept()
		if err != nil {
			return
		}
		accepted <- time.Since(start)
		buf := make([]byte, 2)
		as.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(as, buf); err != nil || string(buf) != "ok" {
			t.Errorf("admin stream read %q %v", buf, err)
		}
		as.Close()
	}()

	for _, s := range []*sudp.Stream{s1, s2} {
		s.SetReadDeadline(time.Now().Add(10 * timeout))
		_, err := s.Read(make([]byte, 1))
		if !errors.Is(err, io.EOF) {
			t.Fatalf("a silent stream: %v after %v; want it closed after %v", err, time.Since(start), timeout)
		}
		if d := time.Since(start); d < timeout {
			t.Fatalf("a silent stream closed after %v, before the %v deadline", d, timeout)
		}
		s.Close()
	}
	select {
	case d := <-accepted:
		if d < timeout {
			t.Fatalf("the third stream was read after %v, while two silent streams held the pending slots for %v", d, timeout)
		}
	case <-time.After(10 * timeout):
		t.Fatal("the third stream was never accepted")
	}
	if n := a.layer.RefusedStreams(); n != 2 {
		t.Fatalf("refused streams %d, want 2", n)
	}
}

// A non-member's connection carries no admin stream either: on a shared
// endpoint that accepts any key (as the MMC's accepts agents), its
// connection is refused before any stream is read, and nothing reaches
// the admin listener.
func TestNonMemberCannotOpenAdminStreams(t *testing.T) {
	psk := testPSK(t)
	dir := NewMembers()
	shared := genKey(t)
	sep, err := sudp.Listen(sudp.Config{
		Listen: "127.0.0.1:0", Static: shared, ClusterID: "test",
		Lookup: func([32]byte) (handshake.Peer, error) {
			return handshake.Peer{ID: "agent", PSK: psk, Allowed: true}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sep.Close()
	layer := NewStreamLayer(StreamLayerConfig{Endpoint: sep, Advertise: raft.ServerAddress(sep.LocalAddr().String()), Members: dir, PSK: psk})
	defer layer.Close()
	layer.AcceptFrom(sep)
	ln := layer.AdminListener()
	got := make(chan net.Conn, 1)
	go func() {
		if s, err := ln.Accept(); err == nil {
			got <- s
		}
	}()

	oep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: genKey(t), ClusterID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer oep.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := oep.Dial(ctx, sep.LocalAddr().String(), pubKey(shared), psk)
	switch {
	case err != nil && strings.Contains(err.Error(), "not a cluster member"):
		// The refusal can overtake the handshake's last step: the dial
		// itself reports it, and no stream was ever possible.
	case err != nil:
		t.Fatal(err)
	default:
		defer c.Close()
		if s, err := c.OpenStream(ctx); err == nil {
			s.Write(append([]byte{byte(kindAdmin)}, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"...))
		}
		select {
		case <-c.Done():
		case <-ctx.Done():
			t.Fatal("the non-member's connection stayed open")
		}
	}
	if layer.RefusedConns() != 1 {
		t.Fatalf("refused connections: %d", layer.RefusedConns())
	}
	select {
	case <-got:
		t.Fatal("a non-member's admin stream reached the admin listener")
	case <-time.After(200 * time.Millisecond):
	}
}
