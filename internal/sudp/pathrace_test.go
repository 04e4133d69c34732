package sudp

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// racer relays a client to a server, and for every nth data packet an
// attacker who sees the traffic sends a copy from its own address first
// (RFC 9000 §9.3.3's off-path forwarding): the copy arrives before the
// original, from an address that is not the client's.
type racer struct {
	inside, outside, attacker *net.UDPConn
	server                    netip.AddrPort
	client                    atomic.Pointer[netip.AddrPort]
	every                     int
	raced, toAttacker         atomic.Int64
}

func newRacer(t *testing.T, server netip.AddrPort, every int) *racer {
	r := &racer{server: server, every: every}
	for _, s := range []**net.UDPConn{&r.inside, &r.outside, &r.attacker} {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadBuffer(4 << 20)
		t.Cleanup(func() { c.Close() })
		*s = c
	}
	go r.fromClient()
	go r.fromServer()
	go r.attackerSink()
	return r
}

func (r *racer) fromClient() {
	buf := make([]byte, 65536)
	n := 0
	for {
		k, from, err := r.inside.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		r.client.Store(&from)
		if wire.IsData(buf[0]) {
			if n++; n%r.every == 0 {
				r.attacker.WriteToUDPAddrPort(buf[:k], r.server)
				r.raced.Add(1)
			}
		}
		r.outside.WriteToUDPAddrPort(buf[:k], r.server)
	}
}

func (r *racer) fromServer() {
	buf := make([]byte, 65536)
	for {
		k, _, err := r.outside.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if c := r.client.Load(); c != nil {
			r.inside.WriteToUDPAddrPort(buf[:k], *c)
		}
	}
}

// attackerSink drops what the server sends the attacker (it cannot answer
// a PATH_CHALLENGE without the keys).
func (r *racer) attackerSink() {
	buf := make([]byte, 65536)
	for {
		k, _, err := r.attacker.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		r.toAttacker.Add(int64(k))
	}
}

// Copies of the client's packets raced from another address neither move
// nor stall the connection: a bulk transfer both ways completes, the
// server still talks to the client's real address, and the attacker gets
// only small challenges.
func TestAttackRacingCopiesFromAnotherAddress(t *testing.T) {
	p := &testPair{cliKey: genKey(t), srvKey: genKey(t), psk: [32]byte{9}}
	p.srv = newServer(t, Config{Static: p.srvKey}, p.psk, p.cliKey)
	p.cli = newClientEndpoint(t, p.cliKey)
	r := newRacer(t, p.srv.LocalAddr(), 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var err error
	if p.cliConn, err = p.cli.Dial(ctx, r.inside.LocalAddr().String(), pub(p.srvKey), p.psk); err != nil {
		t.Fatal(err)
	}
	if p.srvConn, err = p.srv.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	home := netip.MustParseAddrPort(r.outside.LocalAddr().String())

	const size = 8 << 20
	want := make([]byte, size)
	rand.Read(want)
	go func() {
		s, err := p.srvConn.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(s, s) // echo: data both ways
		s.Close()
	}()
	s, err := p.cliConn.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(want)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	// Generous against a loaded machine, far below what the stalls cost:
	// each raced copy held the old code on the attacker's address for 3 PTO.
	s.SetReadDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil {
		st := p.srvConn.Stats()
		t.Fatalf("echo of %d MiB with raced copies: %v after %v (got %d bytes; server path %v, %d path changes, %d bytes to the attacker)",
			size>>20, err, time.Since(start), len(got), p.srvConn.RemoteAddr(), st.PathChanges, r.toAttacker.Load())
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo mismatch: %d bytes", len(got))
	}
	elapsed := time.Since(start)
	st := p.srvConn.Stats()
	t.Logf("%d MiB echoed in %v with %d copies raced; server: %d candidates challenged, %d abandoned, %d path changes; %d bytes sent to the attacker",
		size>>20, elapsed, r.raced.Load(), st.PathProbes, st.PathProbesFailed, st.PathChanges, r.toAttacker.Load())
	if a := p.srvConn.RemoteAddr(); a != home {
		t.Fatalf("server path moved to %v (client is at %v)", a, home)
	}
	if st.PathChanges != 0 || st.PathProbes == 0 {
		t.Fatalf("path changes %d, candidates %d", st.PathChanges, st.PathProbes)
	}
	if r.raced.Load() < 100 {
		t.Fatalf("only %d copies raced", r.raced.Load())
	}
	// The attacker got at most 3x what it sent of the copies.
	if sent := r.toAttacker.Load(); sent > int64(r.raced.Load())*3*1452 {
		t.Fatalf("%d bytes to the attacker", sent)
	}
}
