package sudp

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// recorder is an on-path attacker: a UDP relay between a client and the
// server that records every datagram and can inject its own.
type recorder struct {
	t      *testing.T
	sock   *net.UDPConn
	server netip.AddrPort
	mu     sync.Mutex
	client netip.AddrPort
	toSrv  [][]byte
}

func newRecorder(t *testing.T, server netip.AddrPort) *recorder {
	s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{t: t, sock: s, server: server}
	t.Cleanup(func() { s.Close() })
	go r.run()
	return r
}

func (r *recorder) addr() string { return r.sock.LocalAddr().String() }

func (r *recorder) run() {
	buf := make([]byte, 65536)
	for {
		n, from, err := r.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		pkt := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		if from == r.server {
			c := r.client
			r.mu.Unlock()
			r.sock.WriteToUDPAddrPort(pkt, c)
			continue
		}
		r.client = from
		r.toSrv = append(r.toSrv, pkt)
		r.mu.Unlock()
		r.sock.WriteToUDPAddrPort(pkt, r.server)
	}
}

// recorded returns the client→server datagrams of one type; for
// wire.TypeData, every data packet, long or short.
func (r *recorder) recorded(typ byte) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, p := range r.toSrv {
		if p[0] == typ || (typ == wire.TypeData && wire.IsData(p[0])) {
			out = append(out, p)
		}
	}
	return out
}

func (r *recorder) inject(pkt []byte) {
	if _, err := r.sock.WriteToUDPAddrPort(pkt, r.server); err != nil {
		r.t.Fatal(err)
	}
}

// attackSetup connects a client to the server through the recorder.
func attackSetup(t *testing.T) (p *testPair, rec *recorder) {
	p = &testPair{cliKey: genKey(t), srvKey: genKey(t), psk: [32]byte{4, 2}}
	p.srv = newServer(t, Config{Static: p.srvKey}, p.psk, p.cliKey)
	p.cli = newClientEndpoint(t, p.cliKey)
	rec = newRecorder(t, p.srv.LocalAddr())
	ctx := ctxT(t)
	var err error
	if p.cliConn, err = p.cli.Dial(ctx, rec.addr(), pub(p.srvKey), p.psk); err != nil {
		t.Fatal(err)
	}
	if p.srvConn, err = p.srv.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	// Some traffic to record.
	for i := 0; i < 5; i++ {
		if err := p.cliConn.SendMessage(ctx, []byte("state report"), PriorityNormal); err != nil {
			t.Fatal(err)
		}
		if _, err := p.srvConn.ReceiveMessage(ctx, 100); err != nil {
			t.Fatal(err)
		}
	}
	return p, rec
}

// stillServing checks the legitimate connection works and a new legitimate
// peer can still connect directly.
func stillServing(t *testing.T, p *testPair) {
	t.Helper()
	ctx := ctxT(t)
	if err := p.cliConn.SendMessage(ctx, []byte("after attack"), PriorityControl); err != nil {
		t.Fatal(err)
	}
	m, err := p.srvConn.ReceiveMessage(ctx, 100)
	if err != nil || string(m) != "after attack" {
		t.Fatalf("existing connection broken: %q %v", m, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAttackReplayedHandshake(t *testing.T) {
	p, rec := attackSetup(t)
	inits := rec.recorded(wire.TypeInitiation)
	if len(inits) == 0 {
		t.Fatal("no initiation recorded")
	}
	before := p.srv.Stats()
	for _, pkt := range inits {
		rec.inject(pkt)
	}
	waitFor(t, "replay counted", func() bool {
		return p.srv.Stats().Handshake.Replays >= before.Handshake.Replays+uint64(len(inits))
	})
	if v := metricValue(t, p.srv, "ferry_sudp_handshakes_total", "result", "replay"); v < float64(len(inits)) {
		t.Fatalf("ferry_sudp_handshakes_total{result=replay} = %v", v)
	}
	if s := p.srv.Stats(); s.Handshake.Sessions != before.Handshake.Sessions {
		t.Fatalf("replayed initiation created a session (%d -> %d)", before.Handshake.Sessions, s.Handshake.Sessions)
	}
	stillServing(t, p)
}

func TestAttackReplayedDataPacket(t *testing.T) {
	p, rec := attackSetup(t)
	data := rec.recorded(wire.TypeData)
	if len(data) < 3 {
		t.Fatalf("only %d data packets recorded", len(data))
	}
	before := p.srvConn.Stats()
	for _, pkt := range data {
		rec.inject(pkt)
	}
	waitFor(t, "replays counted", func() bool {
		return p.srvConn.Stats().DroppedReplay >= before.DroppedReplay+uint64(len(data))
	})
	// And exported as a metric.
	if v := metricValue(t, p.srv, "ferry_sudp_dropped_total", "reason", "replay"); v < float64(len(data)) {
		t.Fatalf("ferry_sudp_dropped_total{reason=replay} = %v, want >= %d", v, len(data))
	}
	after := p.srvConn.Stats()
	if after.DroppedAuth != before.DroppedAuth {
		t.Fatalf("replays were not dropped as replays: %+v", after)
	}
	// No replayed message was delivered a second time.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if m, err := p.srvConn.ReceiveMessage(ctx, 100); err == nil {
		t.Fatalf("replayed packet delivered a message again: %q", m)
	}
	stillServing(t, p)
}

func TestAttackBitFlips(t *testing.T) {
	p, rec := attackSetup(t)
	data := rec.recorded(wire.TypeData)
	pkt := data[len(data)-1]
	before := p.srvConn.Stats()
	beforeEP := p.srv.Stats()
	for bit := 0; bit < len(pkt)*8; bit++ {
		c := append([]byte(nil), pkt...)
		c[bit/8] ^= 1 << (bit % 8)
		rec.inject(c)
	}
	n := uint64(len(pkt) * 8)
	dropped := func() uint64 {
		s, e := p.srvConn.Stats(), p.srv.Stats()
		return (s.DroppedAuth - before.DroppedAuth) + (s.DroppedReplay - before.DroppedReplay) +
			(s.DroppedMalformed - before.DroppedMalformed) + (e.UnknownCID - beforeEP.UnknownCID) + (e.Malformed - beforeEP.Malformed) +
			(e.HandshakeDropped - beforeEP.HandshakeDropped) + (e.Foreign - beforeEP.Foreign)
	}
	// Every datagram is either dropped under exactly one counter or
	// accepted; all n flipped copies must show up as drops (loopback drops
	// nothing on its own). A flip of the type byte's 0x40 or 0x80 bit makes
	// a datagram of another protocol (foreign; no handler here: dropped).
	waitFor(t, "all flipped packets counted", func() bool { return dropped() >= n })
	// Handshake messages too: every bit of the recorded initiation.
	init := rec.recorded(wire.TypeInitiation)[0]
	hsBefore := p.srv.Stats().Handshake
	unknownBefore := p.srv.Stats().UnknownCID
	for bit := 0; bit < len(init)*8; bit++ {
		c := append([]byte(nil), init...)
		c[bit/8] ^= 1 << (bit % 8)
		rec.inject(c)
	}
	waitFor(t, "flipped initiations counted", func() bool {
		s := p.srv.Stats()
		// A flip of the type byte to 0x09 makes a short data packet for
		// a connection id nobody has.
		return s.Handshake.Initiations-hsBefore.Initiations+(s.Malformed-beforeEP.Malformed)+(s.UnknownCID-unknownBefore) >= uint64(len(init)*8)
	})
	if s := p.srv.Stats().Handshake; s.Sessions != hsBefore.Sessions {
		t.Fatal("a tampered initiation created a session")
	}
	stillServing(t, p)
}

func TestAttackWrongKeys(t *testing.T) {
	p := newPair(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	// An unknown static key.
	stranger := newClientEndpoint(t, genKey(t))
	if _, err := stranger.Dial(ctx, p.srv.LocalAddr().String(), pub(p.srvKey), p.psk); err == nil {
		t.Fatal("unknown key connected")
	}
	if s := p.srv.Stats().Handshake; s.UnknownPeer == 0 {
		t.Fatalf("unknown peer not counted: %+v", s)
	}
	// The right key pair but the wrong psk: the handshake fails at the
	// initiator and the server never delivers a connection.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel2()
	imposter := newClientEndpoint(t, p.cliKey)
	if _, err := imposter.Dial(ctx2, p.srv.LocalAddr().String(), pub(p.srvKey), [32]byte{6, 6, 6}); err == nil {
		t.Fatal("wrong psk connected")
	}
	// A client that believes the wrong server key (impersonated MMC).
	ctx3, cancel3 := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel3()
	if _, err := imposter.Dial(ctx3, p.srv.LocalAddr().String(), pub(genKey(t)), p.psk); err == nil {
		t.Fatal("connected to a server with another key")
	}
	if s := p.srv.Stats().Handshake; s.BadMAC1 == 0 {
		t.Fatalf("initiation for another server key not counted: %+v", s)
	}
	actx, acancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer acancel()
	if c, err := p.srv.Accept(actx); err == nil {
		t.Fatalf("server accepted a connection from %v", c.RemoteAddr())
	}
	stillServing(t, p)
}

// A flood of initiations from one address is rate-limited and triggers
// cookies; a legitimate peer from another address still connects.
func TestAttackInitiationFlood(t *testing.T) {
	p := newPair(t, Config{LoadThreshold: 200})
	attacker, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	// Valid initiations from an unknown key: they pass mac1, so they cost the
	// server real work unless limited.
	init, err := handshake.NewInitiator(handshake.InitiatorConfig{
		Static: genKey(t), RemoteStatic: pub(p.srvKey), PSK: [32]byte{1}, ClusterID: "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	var pkts [][]byte
	for i := 0; i < 300; i++ {
		pkt, err := init.Initiation(time.Now(), uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		pkts = append(pkts, pkt)
	}
	before := p.srv.Stats().Handshake
	dst := net.UDPAddrFromAddrPort(p.srv.LocalAddr())
	for round := 0; round < 5; round++ {
		for _, pkt := range pkts {
			attacker.WriteToUDP(pkt, dst)
		}
	}
	waitFor(t, "flood processed", func() bool {
		return p.srv.Stats().Handshake.Initiations-before.Initiations >= 1000
	})
	s := p.srv.Stats().Handshake
	limited := s.RateLimited - before.RateLimited
	cookies := s.CookieReplies - before.CookieReplies
	reachedNoise := (s.UnknownPeer - before.UnknownPeer) + (s.DecryptFailed - before.DecryptFailed)
	t.Logf("flood: %d initiations, %d rate-limited, %d cookie replies, %d reached the DH stage", s.Initiations-before.Initiations, limited, cookies, reachedNoise)
	if limited+cookies < 900 {
		t.Fatalf("only %d of the flood rate-limited or challenged", limited+cookies)
	}
	if reachedNoise > 100 {
		t.Fatalf("%d flood initiations reached the expensive DH stage", reachedNoise)
	}
	// A legitimate new peer still gets in (with a cookie round trip if the
	// server is under load).
	cliKey := genKey(t)
	srv2 := newServer(t, Config{Static: p.srvKey, LoadThreshold: 1, RequireCookie: true}, p.psk, cliKey)
	ctx := ctxT(t)
	c, err := newClientEndpoint(t, cliKey).Dial(ctx, srv2.LocalAddr().String(), pub(p.srvKey), p.psk)
	if err != nil {
		t.Fatalf("legitimate peer refused under cookie policy: %v", err)
	}
	if err := c.SendMessage(ctx, []byte("hi"), PriorityControl); err != nil {
		t.Fatal(err)
	}
	if st := srv2.Stats().Handshake; st.CookieReplies == 0 {
		t.Fatal("RequireCookie did not demand a cookie")
	}
	stillServing(t, p)
}
