package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

var loopback = netip.MustParseAddr("127.0.0.1")

func newRelay(t testing.TB, cfg Config) *Relay {
	t.Helper()
	cfg.ListenIP = loopback
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func randKey(t testing.TB) [KeySize]byte {
	var k [KeySize]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

// agents are two SUDP endpoints, as two agents' sockets: B accepts A.
type agents struct {
	a, b             *sudp.Endpoint
	ca, cb           *Client
	staticA, staticB noise.DHKey
	psk              [32]byte
}

func newAgents(t testing.TB) *agents {
	t.Helper()
	g := &agents{psk: [32]byte{3, 1, 4}}
	var err error
	for _, k := range []*noise.DHKey{&g.staticA, &g.staticB} {
		if *k, err = handshake.GenerateKeypair(rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	pubA := [32]byte(g.staticA.Public)
	// The endpoints exist before their clients: their Foreign handlers
	// find the client when a datagram comes.
	var ca, cb atomic.Pointer[Client]
	foreign := func(c *atomic.Pointer[Client]) func(netip.AddrPort, []byte) {
		return func(from netip.AddrPort, b []byte) {
			if cl := c.Load(); cl != nil && len(b) > 0 && b[0] == Magic {
				cl.Handle(from, b)
			}
		}
	}
	g.b, err = sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: g.staticB, ClusterID: "relay-test", Foreign: foreign(&cb),
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			if peer != pubA {
				return handshake.Peer{}, errors.New("not introduced")
			}
			return handshake.Peer{ID: "agent-a", PSK: g.psk, Allowed: true, LoginState: 1}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.b.Close() })
	g.a, err = sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: g.staticA, ClusterID: "relay-test", Foreign: foreign(&ca)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.a.Close() })
	g.ca, g.cb = NewClient(g.a, nil), NewClient(g.b, nil)
	ca.Store(g.ca)
	cb.Store(g.cb)
	return g
}

// link allocates on r, binds both agents and connects A to B through the
// relay: A dials relay:Pa with B's static key.
func (g *agents) link(t testing.TB, r *Relay) (Allocation, *sudp.Conn, *sudp.Conn) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	kA, kB := randKey(t), randKey(t)
	al, err := r.Allocate(ctx, kA, kB)
	if err != nil {
		t.Fatal(err)
	}
	ac, bc := g.connect(t, r, al, kA, kB)
	return al, ac, bc
}

// connect binds both agents to al and connects A to B through it.
func (g *agents) connect(t testing.TB, r *Relay, al Allocation, kA, kB [KeySize]byte) (*sudp.Conn, *sudp.Conn) {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	if err := g.ca.Bind(ctx, al.AddrA, al.ID, kA); err != nil {
		t.Fatal(err)
	}
	if err := g.cb.Bind(ctx, al.AddrB, al.ID, kB); err != nil {
		t.Fatal(err)
	}
	if r.Bound(al.ID, SideA) != g.a.LocalAddr() || r.Bound(al.ID, SideB) != g.b.LocalAddr() {
		t.Fatalf("bound %v %v, want %v %v", r.Bound(al.ID, SideA), r.Bound(al.ID, SideB), g.a.LocalAddr(), g.b.LocalAddr())
	}
	ac, err := g.a.Dial(ctx, al.AddrA.String(), [32]byte(g.staticB.Public), g.psk)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := g.b.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ac.RemoteAddr() != al.AddrA || bc.RemoteAddr() != al.AddrB {
		t.Fatalf("A talks to %v, B to %v: not through the relay (%v, %v)", ac.RemoteAddr(), bc.RemoteAddr(), al.AddrA, al.AddrB)
	}
	return ac, bc
}

var marker = []byte("FERRY-RELAY-PLAINTEXT-MARKER")

// payload is n pseudo-random bytes with the marker every 4 KiB.
func payload(n int) []byte {
	p := make([]byte, n)
	rng := mrand.NewChaCha8([32]byte{42})
	_, _ = rng.Read(p)
	for off := 0; off+len(marker) <= n; off += 4096 {
		copy(p[off:], marker)
	}
	return p
}

// transfer sends p from A to B on a new stream and returns what B read.
func transfer(t testing.TB, ac, bc *sudp.Conn, p []byte) []byte {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	errc := make(chan error, 1)
	go func() {
		s, err := ac.OpenStream(ctx)
		if err != nil {
			errc <- err
			return
		}
		if _, err := s.Write(p); err != nil {
			errc <- err
			return
		}
		errc <- s.CloseWrite()
	}()
	s, err := bc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(60 * time.Second))
	var buf bytes.Buffer
	buf.Grow(len(p) + 1) // no regrowth: the benchmark measures the link, not ReadAll
	if _, err := buf.ReadFrom(s); err != nil {
		t.Fatal(err)
	}
	got := buf.Bytes()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return got
}

func sameBytes(t testing.TB, got, want []byte) {
	t.Helper()
	if len(got) != len(want) || sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("received %d bytes (sha256 %x), sent %d (%x)", len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

// TestRelayedStream: two agents connect through the relay and move 8 MiB,
// intact; everything went through the relay.
func TestRelayedStream(t *testing.T) {
	r := newRelay(t, Config{})
	g := newAgents(t)
	_, ac, bc := g.link(t, r)
	p := payload(8 << 20)
	sameBytes(t, transfer(t, ac, bc, p), p)
	s := r.Stats()
	if s.ForwardedBytes < uint64(len(p)) || s.BindsAccepted != 2 || s.Allocations != 1 {
		t.Fatalf("relay stats %+v", s)
	}
	if cs := g.ca.Stats(); cs.Acks != 1 || cs.Refused != 0 {
		t.Fatalf("client stats %+v", cs)
	}
}

// hostile is a relay that flips bits, drops, reorders and replays the
// datagrams it forwards, and remembers everything it received.
type hostile struct {
	mu        sync.Mutex
	rng       *mrand.Rand
	held      [2][]byte   // one datagram held back per side (reorder)
	old       [2][][]byte // past datagrams per side (replay later)
	seen      bytes.Buffer
	flipped   int
	dropped   int
	replayed  int
	reordered int
}

func (h *hostile) install(r *Relay) {
	h.rng = mrand.New(mrand.NewPCG(1, 2))
	r.tap = func(_ Side, _ netip.AddrPort, b []byte) {
		h.mu.Lock()
		h.seen.Write(b)
		h.mu.Unlock()
	}
	r.tamper = func(side Side, b []byte, emit func([]byte)) {
		h.mu.Lock()
		defer h.mu.Unlock()
		c := bytes.Clone(b)
		if len(h.old[side]) < 256 {
			h.old[side] = append(h.old[side], c)
		} else {
			h.old[side][h.rng.IntN(256)] = c
		}
		switch x := h.rng.IntN(100); {
		case x < 3: // flip a bit
			f := bytes.Clone(b)
			f[h.rng.IntN(len(f))] ^= 1 << h.rng.IntN(8)
			emit(f)
			h.flipped++
		case x < 6: // drop
			h.dropped++
		case x < 9: // replay now and an old one
			emit(b)
			emit(b)
			emit(h.old[side][h.rng.IntN(len(h.old[side]))])
			h.replayed++
		case x < 12: // hold back, send after the next one
			if h.held[side] == nil {
				h.held[side] = c
				h.reordered++
				return
			}
			emit(b)
		default:
			emit(b)
		}
		if h.held[side] != nil && h.rng.IntN(2) == 0 {
			emit(h.held[side])
			h.held[side] = nil
		}
	}
}

// TestHostileRelay: a relay that tampers with the traffic cannot break
// integrity (the data arrives exactly once, intact: SUDP's AEAD drops the
// forgeries, its replay window the copies, and the stream recovers what
// was lost) and learns nothing (the plaintext marker never crossed it).
func TestHostileRelay(t *testing.T) {
	r := newRelay(t, Config{})
	h := &hostile{}
	h.install(r)
	g := newAgents(t)
	_, ac, bc := g.link(t, r)
	p := payload(4 << 20)
	if !bytes.Contains(p, marker) {
		t.Fatal("payload has no marker")
	}
	sameBytes(t, transfer(t, ac, bc, p), p)

	h.mu.Lock()
	defer h.mu.Unlock()
	if h.flipped == 0 || h.dropped == 0 || h.replayed == 0 || h.reordered == 0 {
		t.Fatalf("hostile relay did not do everything: flipped %d dropped %d replayed %d reordered %d", h.flipped, h.dropped, h.replayed, h.reordered)
	}
	if h.seen.Len() < len(p) {
		t.Fatalf("relay saw %d bytes, less than the %d sent", h.seen.Len(), len(p))
	}
	if bytes.Contains(h.seen.Bytes(), marker) {
		t.Fatal("the relay saw plaintext")
	}
	sa, sb := ac.Stats(), bc.Stats()
	if sb.DroppedAuth+sa.DroppedAuth == 0 || sb.DroppedReplay+sa.DroppedReplay == 0 {
		t.Fatalf("forgeries or replays not dropped by SUDP: auth %d+%d replay %d+%d", sa.DroppedAuth, sb.DroppedAuth, sa.DroppedReplay, sb.DroppedReplay)
	}
	t.Logf("flipped %d dropped %d replayed %d reordered %d; B dropped auth %d replay %d", h.flipped, h.dropped, h.replayed, h.reordered, sb.DroppedAuth, sb.DroppedReplay)
}

// TestThirdParty: someone who knows the allocation id but not a bind key
// cannot bind, cannot inject, and cannot move a binding by replaying a
// captured bind from its own address.
func TestThirdParty(t *testing.T) {
	r := newRelay(t, Config{})
	var capMu sync.Mutex
	var captured [][]byte // A's binds, as a wire tap sees them
	r.tap = func(side Side, _ netip.AddrPort, b []byte) {
		if side == SideA && len(b) > 0 && b[0] == Magic {
			capMu.Lock()
			captured = append(captured, bytes.Clone(b))
			capMu.Unlock()
		}
	}
	g := newAgents(t)
	al, ac, bc := g.link(t, r)
	// A's last bind, taken before the attacker's datagrams reach the tap.
	// (The tap runs before the relay acks, so link has seen it recorded.)
	capMu.Lock()
	if len(captured) == 0 {
		capMu.Unlock()
		t.Fatal("no bind captured")
	}
	replay := captured[len(captured)-1]
	capMu.Unlock()
	evil, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Close()
	send := func(to netip.AddrPort, b []byte) {
		t.Helper()
		if _, err := evil.WriteToUDPAddrPort(b, to); err != nil {
			t.Fatal(err)
		}
	}
	before := r.Stats()
	unknownB := g.b.Stats().UnknownCID

	// A bind under a guessed key, on either port.
	kX := randKey(t)
	send(al.AddrA, AppendMsg(nil, Msg{Kind: KindBind, ID: al.ID, Counter: 1 << 62}, &kX))
	send(al.AddrB, AppendMsg(nil, Msg{Kind: KindBind, ID: al.ID, Counter: 1 << 62}, &kX))
	// Data shaped like SUDP, to both ports.
	forged := append([]byte{0x04, 0}, bytes.Repeat([]byte{0x5a}, 60)...)
	send(al.AddrA, forged)
	send(al.AddrB, forged)
	// A's captured bind, replayed from the attacker's address.
	send(al.AddrA, replay)

	refused := func() [numReasons]uint64 {
		s := r.Stats()
		var d [numReasons]uint64
		for i := range d {
			d[i] = s.Dropped[i] - before.Dropped[i]
		}
		return d
	}
	want := [numReasons]uint64{DropBindBadMAC: 2, DropUnbound: 2, DropBindReplay: 1}
	deadline := time.Now().Add(10 * time.Second)
	for refused() != want {
		if time.Now().After(deadline) {
			t.Fatalf("refused %v, want %v", refused(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r.Bound(al.ID, SideA) != g.a.LocalAddr() || r.Bound(al.ID, SideB) != g.b.LocalAddr() {
		t.Fatalf("binding moved: %v %v", r.Bound(al.ID, SideA), r.Bound(al.ID, SideB))
	}
	if s := r.Stats(); s.BindsAccepted != before.BindsAccepted {
		t.Fatalf("a bind was accepted: %+v", s)
	}
	// Nothing of it reached B, and the link still works.
	p := payload(256 << 10)
	sameBytes(t, transfer(t, ac, bc, p), p)
	if u := g.b.Stats().UnknownCID; u != unknownB {
		t.Fatalf("forged datagrams reached B (unknown cid %d → %d)", unknownB, u)
	}
	// The attacker heard nothing back: no ack for any of it.
	_ = evil.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, from, err := evil.ReadFromUDPAddrPort(make([]byte, 100)); err == nil {
		t.Fatalf("attacker got %d bytes from %v", n, from)
	}
}

// rawAgent is a plain UDP socket speaking the bind protocol by hand.
type rawAgent struct {
	t    *testing.T
	conn *net.UDPConn
}

func newRaw(t *testing.T) *rawAgent {
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawAgent{t: t, conn: c}
}

func (a *rawAgent) addr() netip.AddrPort { return a.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (a *rawAgent) send(to netip.AddrPort, b []byte) {
	if _, err := a.conn.WriteToUDPAddrPort(b, to); err != nil {
		a.t.Fatal(err)
	}
}

// bind sends one bind and reports whether an ack for it came back.
func (a *rawAgent) bind(to netip.AddrPort, id AllocID, key [KeySize]byte, counter uint64) bool {
	a.send(to, AppendMsg(nil, Msg{Kind: KindBind, ID: id, Counter: counter}, &key))
	buf := make([]byte, 100)
	_ = a.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, from, err := a.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return false
	}
	m, err := ParseMsg(buf[:n])
	return err == nil && from == to && m.Kind == KindAck && m.Counter == counter && VerifyMsg(buf[:n], &key)
}

// count reads datagrams for d and returns how many arrived.
func (a *rawAgent) count(d time.Duration) int {
	n := 0
	buf := make([]byte, 2048)
	_ = a.conn.SetReadDeadline(time.Now().Add(d))
	for {
		if _, _, err := a.conn.ReadFromUDPAddrPort(buf); err != nil {
			return n
		}
		n++
	}
}

func TestRelayRebindAndRate(t *testing.T) {
	r := newRelay(t, Config{Limits: Limits{AllocPackets: 50, Burst: 100 * time.Millisecond}})
	kA, kB := randKey(t), randKey(t)
	al, err := r.Allocate(ctxT(t, 5*time.Second), kA, kB)
	if err != nil {
		t.Fatal(err)
	}
	a, a2, b := newRaw(t), newRaw(t), newRaw(t)
	if !a.bind(al.AddrA, al.ID, kA, 1) || !b.bind(al.AddrB, al.ID, kB, 1) {
		t.Fatal("binds not acknowledged")
	}
	data := append([]byte{0x04, 0}, make([]byte, 100)...)
	a.send(al.AddrA, data)
	if n := b.count(100 * time.Millisecond); n != 1 {
		t.Fatalf("B got %d datagrams, want 1", n)
	}
	// A's NAT rebinds: the old counter from the new address is refused,
	// a newer one moves the binding.
	if a2.bind(al.AddrA, al.ID, kA, 1) {
		t.Fatal("replayed counter acknowledged")
	}
	if !a2.bind(al.AddrA, al.ID, kA, 2) {
		t.Fatal("rebind not acknowledged")
	}
	a.send(al.AddrA, data)
	a2.send(al.AddrA, data)
	if n := b.count(100 * time.Millisecond); n != 1 {
		t.Fatalf("B got %d datagrams after the rebind, want 1 (from the new address only)", n)
	}
	b.send(al.AddrB, data)
	if n, na := a2.count(100*time.Millisecond), a.count(10*time.Millisecond); n != 1 || na != 0 {
		t.Fatalf("B's datagram reached the new address %d times, the old %d", n, na)
	}
	// Rate: 50 packets/s with a 5-packet burst; 200 back to back.
	time.Sleep(150 * time.Millisecond) // refill
	before := r.Stats()
	start := time.Now()
	for range 200 {
		a2.send(al.AddrA, data)
	}
	got := b.count(200 * time.Millisecond)
	allowed := 5 + int(time.Since(start).Seconds()*50) + 1
	s := r.Stats()
	dropped := s.Dropped[DropAllocRate] - before.Dropped[DropAllocRate]
	if got < 5 || got > allowed || int(dropped) != 200-got {
		t.Fatalf("B got %d (allowed ≤ %d), rate-dropped %d", got, allowed, dropped)
	}
}

func TestRelayAllocationLimits(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	r := newRelay(t, Config{Limits: Limits{MaxAllocations: 2}})
	k := randKey(t)
	var ids []AllocID
	for range 2 {
		al, err := r.Allocate(ctx, k, k)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, al.ID)
	}
	if _, err := r.Allocate(ctx, k, k); !errors.Is(err, ErrTooManyAllocations) {
		t.Fatalf("third allocation: %v", err)
	}
	if err := r.Release(ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := r.Release(ids[0]); !errors.Is(err, ErrUnknownAlloc) {
		t.Fatalf("second release: %v", err)
	}
	if _, err := r.Allocate(ctx, k, k); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	if s := r.Stats(); s.Allocations != 2 || s.AllocsRefused != 1 || s.AllocsReleased != 1 || s.AllocsCreated != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRelayPortRange(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	// Find four consecutive free ports (a port another process holds is
	// skipped by the relay too, but the count below needs all four).
	var lo uint16
	for p := uint16(41000); p < 42000 && lo == 0; p += 4 {
		free := true
		for i := range uint16(4) {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, p+i)))
			if err != nil {
				free = false
				break
			}
			c.Close()
		}
		if free {
			lo = p
		}
	}
	if lo == 0 {
		t.Fatal("no four free ports")
	}
	r := newRelay(t, Config{PortLo: lo, PortHi: lo + 3})
	k := randKey(t)
	seen := map[uint16]bool{}
	var first Allocation
	for i := range 2 {
		al, err := r.Allocate(ctx, k, k)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = al
		}
		for _, a := range []netip.AddrPort{al.AddrA, al.AddrB} {
			if a.Port() < lo || a.Port() > lo+3 || seen[a.Port()] {
				t.Fatalf("port %d outside %d-%d or reused", a.Port(), lo, lo+3)
			}
			seen[a.Port()] = true
		}
	}
	if _, err := r.Allocate(ctx, k, k); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("fifth and sixth port: %v", err)
	}
	if err := r.Release(first.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Allocate(ctx, k, k); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	if s := r.Stats(); s.AllocsNoPorts != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRelayIdleExpiry(t *testing.T) {
	r := newRelay(t, Config{Limits: Limits{IdleTimeout: 300 * time.Millisecond}})
	kA, kB := randKey(t), randKey(t)
	al, err := r.Allocate(ctxT(t, 5*time.Second), kA, kB)
	if err != nil {
		t.Fatal(err)
	}
	a := newRaw(t)
	if !a.bind(al.AddrA, al.ID, kA, 1) {
		t.Fatal("bind not acknowledged")
	}
	waitFor(t, "expiry", func() bool { return r.Stats().AllocsExpired == 1 })
	if s := r.Stats(); s.Allocations != 0 {
		t.Fatalf("stats %+v", s)
	}
	if err := r.Release(al.ID); !errors.Is(err, ErrUnknownAlloc) {
		t.Fatalf("release after expiry: %v", err)
	}
	if a.bind(al.AddrA, al.ID, kA, 2) {
		t.Fatal("expired allocation still answers")
	}
}

// TestClientRefusesForgedAck: an ack that is not MAC'd with the bind key
// (or comes from elsewhere) does not complete a bind.
func TestClientRefusesForgedAck(t *testing.T) {
	g := newAgents(t)
	fake := newRaw(t)
	wrong := randKey(t)
	key := randKey(t)
	other := newRaw(t)
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := fake.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			m, err := ParseMsg(buf[:n])
			if err != nil {
				continue
			}
			ack := Msg{Kind: KindAck, ID: m.ID, Counter: m.Counter}
			_, _ = fake.conn.WriteToUDPAddrPort(AppendMsg(nil, ack, &wrong), from)
			// The right MAC, but from another port than the bind went to.
			_, _ = other.conn.WriteToUDPAddrPort(AppendMsg(nil, ack, &key), from)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if err := g.ca.Bind(ctx, fake.addr(), 7, key); !errors.Is(err, ErrBindTimeout) {
		t.Fatalf("bind: %v", err)
	}
	if s := g.ca.Stats(); s.Acks != 0 || s.Refused < 2 {
		t.Fatalf("client stats %+v", s)
	}
}

func TestClientKeepalive(t *testing.T) {
	r := newRelay(t, Config{})
	g := newAgents(t)
	kA, kB := randKey(t), randKey(t)
	al, err := r.Allocate(ctxT(t, 5*time.Second), kA, kB)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.ca.Keepalive(ctx, al.AddrA, al.ID, kA, 30*time.Millisecond) }()
	waitFor(t, "three re-binds", func() bool { return r.Stats().BindsAccepted >= 3 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("keepalive returned %v", err)
	}
	if s := r.Stats(); s.BindsMoved != 1 || r.Bound(al.ID, SideA) != g.a.LocalAddr() {
		t.Fatalf("stats %+v", s)
	}
}
