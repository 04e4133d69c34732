package core

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// resetSim is a handshaken simulation whose client has learned the
// server's reset token, and a fresh server endpoint with the same static
// key (the server after a restart).
func resetSim(t testing.TB, seed uint64) (*sim, *Endpoint) {
	t.Helper()
	s := handshakeSim(t, seed, link{delay: 5 * time.Millisecond}, Config{})
	runFor(s, 500*time.Millisecond)
	for side, c := range s.conn {
		if _, ok := c.PeerResetToken(); !ok {
			t.Fatalf("side %d has no reset token from its peer", side)
		}
		s.ep[side].LearnResetToken(c, c.peerResetToken)
	}
	restarted, err := NewEndpoint(s.ep[1].cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, restarted
}

func TestStatelessResetClosesAtOnce(t *testing.T) {
	s, restarted := resetSim(t, 41)
	cli := s.conn[0]
	pkt := s.sealFromClient(wire.AppendPing(nil))
	if c, _ := restarted.Route(pkt); c != nil {
		t.Fatal("the restarted endpoint knows the connection")
	}
	reset := restarted.StatelessReset(s.now, s.addr[0], pkt)
	if reset == nil || len(reset) >= len(pkt) || len(reset) < wire.MinResetSize {
		t.Fatalf("reset of %d bytes to a %d-byte packet", len(reset), len(pkt))
	}
	if _, err := wire.ParseHeader(reset); err != nil {
		t.Fatalf("a reset does not parse as a data packet: %v", err)
	}
	c, _ := s.ep[0].Route(reset)
	if c != cli {
		t.Fatal("the reset did not find the client's connection")
	}
	c.HandleDatagram(s.now, s.addr[1], reset)
	if !cli.IsClosed() || !errors.Is(cli.Err(), ErrStatelessReset) || cli.Stats().StatelessResets != 1 {
		t.Fatalf("after the reset: closed %v, err %v", cli.IsClosed(), cli.Err())
	}
	if _, _, ok := cli.PollTransmit(s.now, s.buf); ok {
		t.Fatal("a reset connection still sends")
	}
	s.ep[0].Remove(cli)
	if len(s.ep[0].resetTokens) != 0 {
		t.Fatal("the token outlived its connection")
	}
}

// Only the endpoint's static key yields the token: a reset from another
// key, a flipped bit, or random bytes of any size end nothing.
func TestStatelessResetUnforgeable(t *testing.T) {
	s, restarted := resetSim(t, 42)
	cli := s.conn[0]
	pkt := s.sealFromClient(wire.AppendPing(nil))
	cfg := s.ep[1].cfg
	cfg.Static = seededKey(t, rand.NewChaCha8([32]byte{'i', 'm', 'p'}))
	impostor, err := NewEndpoint(cfg)
	if err != nil {
		t.Fatal(err)
	}
	forged := impostor.StatelessReset(s.now, s.addr[0], pkt)
	genuine := restarted.StatelessReset(s.now, s.addr[0], pkt)
	flipped := append([]byte(nil), genuine...)
	flipped[len(flipped)-1] ^= 1
	rng := rand.New(rand.NewPCG(42, 42))
	for _, b := range [][]byte{forged, flipped} {
		if c, _ := s.ep[0].Route(b); c != nil {
			c.HandleDatagram(s.now, s.addr[1], b)
		}
		cli.HandleDatagram(s.now, s.addr[1], b) // even handed straight to it
	}
	for i := 0; i < 1000; i++ {
		b := make([]byte, wire.MinResetSize+rng.IntN(100))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		b[0], b[1] = wire.TypeData, 0
		cli.HandleDatagram(s.now, s.addr[1], b)
	}
	if err := cli.Err(); err != nil {
		t.Fatalf("a forged reset ended the connection: %v", err)
	}
	// The token depends on the connection id.
	other := append([]byte(nil), pkt...)
	other[9] ^= 1
	if bytes.Equal(genuine[len(genuine)-16:], restarted.StatelessReset(s.now.Add(time.Second), s.addr[0], other)[len(genuine)-16:]) {
		t.Fatal("two connection ids share a token")
	}
}

// Two endpoints that both lost their state answer each other's resets
// with ever smaller ones, until one is too small to answer: no loop.
// Nothing shorter than MinResetSize+1 gets an answer, and floods are
// rate-limited.
func TestStatelessResetNoLoopNoFlood(t *testing.T) {
	s, a := resetSim(t, 43)
	b, err := NewEndpoint(s.ep[0].cfg) // the client, restarted too
	if err != nil {
		t.Fatal(err)
	}
	pkt := s.sealFromClient(append(wire.AppendPing(nil), make([]byte, 1200)...))
	eps := [2]*Endpoint{a, b}
	rounds := 0
	for cur := pkt; cur != nil; rounds++ {
		if rounds > 100 {
			t.Fatal("resets answered each other 100 times")
		}
		ep := eps[rounds%2]
		next := ep.StatelessReset(s.now, s.addr[rounds%2], cur)
		if next != nil && len(next) >= len(cur) {
			t.Fatalf("round %d: a %d-byte reset answers %d bytes", rounds, len(next), len(cur))
		}
		cur = next
	}
	t.Logf("a %d-byte packet caused %d resets", len(pkt), rounds-1)
	if a.StatelessReset(s.now, s.addr[0], pkt[:wire.MinResetSize]) != nil {
		t.Fatal("a packet of MinResetSize bytes was answered")
	}
	flood, err := NewEndpoint(s.ep[1].cfg)
	if err != nil {
		t.Fatal(err)
	}
	sent := 0
	for i := 0; i < 10000; i++ {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)
		if flood.StatelessReset(s.now, from, pkt) != nil {
			sent++
		}
	}
	if sent > resetBurstTotal || flood.Stats().ResetsLimited.Load() != uint64(10000-sent) {
		t.Fatalf("%d resets for a burst of 10000 junk packets from many sources (burst %d)", sent, resetBurstTotal)
	}
}

// FuzzStatelessReset feeds arbitrary datagrams to the reset paths: the
// client's routing and reset check (it holds the server's token) and a
// restarted server's answer. Nothing panics, an answer is always a
// well-formed data-shaped packet smaller than its trigger, and only the
// exact token ends the connection.
func FuzzStatelessReset(f *testing.F) {
	s, restarted := resetSim(f, 44)
	f.Add(s.sealFromClient(wire.AppendPing(nil)))
	f.Add(restarted.StatelessReset(s.now, s.addr[0], s.sealFromClient(wire.AppendPing(nil))))
	f.Add([]byte{wire.TypeData})
	f.Add(make([]byte, wire.MinResetSize))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if s.conn[0].IsClosed() {
			s, restarted = resetSim(t, 44)
		}
		cli := s.conn[0]
		tok, isToken := wire.ResetToken(pkt)
		if isToken && (len(pkt) < wire.MinResetSize || pkt[0] != wire.TypeData) {
			t.Fatalf("a %d-byte datagram of type %d passed as a reset", len(pkt), pkt[0])
		}
		if out := restarted.StatelessReset(s.now, s.addr[0], pkt); out != nil {
			if len(out) >= len(pkt) || len(out) < wire.MinResetSize {
				t.Fatalf("a %d-byte reset answers %d bytes", len(out), len(pkt))
			}
			if _, err := wire.ParseHeader(out); err != nil {
				t.Fatalf("reset does not parse: %v", err)
			}
		}
		in := append([]byte(nil), pkt...)
		if c, _ := s.ep[0].Route(in); c != nil {
			c.HandleDatagram(s.now, s.addr[1], in)
		}
		if errors.Is(cli.Err(), ErrStatelessReset) && (!isToken || tok != cli.peerResetToken) {
			t.Fatal("a datagram without the token reset the connection")
		}
	})
}
