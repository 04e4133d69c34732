package sudp

import (
	"crypto/sha256"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// forwarder stands for a relay: what arrives on a from the first sender
// goes out of b to bPeer, and what arrives on b goes out of a to that
// first sender. It counts what it carried.
type forwarder struct {
	a, b    *net.UDPConn
	bPeer   netip.AddrPort
	aPeer   atomic.Pointer[netip.AddrPort]
	carried atomic.Int64
	wg      sync.WaitGroup
}

func newForwarder(t *testing.T, bPeer netip.AddrPort) *forwarder {
	t.Helper()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	f := &forwarder{a: listen(), b: listen(), bPeer: bPeer}
	pump := func(in, out *net.UDPConn, to func(netip.AddrPort) (netip.AddrPort, bool)) {
		defer f.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := in.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if dst, ok := to(from); ok {
				f.carried.Add(1)
				_, _ = out.WriteToUDPAddrPort(buf[:n], dst)
			}
		}
	}
	f.wg.Add(2)
	go pump(f.a, f.b, func(from netip.AddrPort) (netip.AddrPort, bool) {
		f.aPeer.CompareAndSwap(nil, &from)
		return f.bPeer, true
	})
	go pump(f.b, f.a, func(netip.AddrPort) (netip.AddrPort, bool) {
		p := f.aPeer.Load()
		if p == nil {
			return netip.AddrPort{}, false
		}
		return *p, true
	})
	t.Cleanup(func() { f.a.Close(); f.b.Close(); f.wg.Wait() })
	return f
}

func (f *forwarder) addrA() netip.AddrPort { return f.a.LocalAddr().(*net.UDPAddr).AddrPort() }

// A connection set up through a relay moves to the direct path in the
// middle of a bulk transfer (ProbePath): the transfer completes intact —
// every byte once, in order — and, after the move, the relay carries
// nothing more.
func TestRelayedToDirectMidStream(t *testing.T) {
	p := &testPair{cliKey: genKey(t), srvKey: genKey(t), psk: [32]byte{4, 4}}
	p.srv = newServer(t, Config{Static: p.srvKey}, p.psk, p.cliKey)
	p.cli = newClientEndpoint(t, p.cliKey)
	relay := newForwarder(t, p.srv.LocalAddr())
	ctx := ctxT(t)
	var err error
	if p.cliConn, err = p.cli.Dial(ctx, relay.addrA().String(), pub(p.srvKey), p.psk); err != nil {
		t.Fatal(err)
	}
	if p.srvConn, err = p.srv.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	if p.srvConn.RemoteAddr().Port() == p.cli.LocalAddr().Port() {
		t.Fatal("the server sees the client directly: the relay is not in the path")
	}

	const size = 48 << 20
	sent := make(chan [32]byte, 1)
	go func() {
		s, err := p.cliConn.OpenStreamPriority(ctx, PriorityBulk)
		if err != nil {
			t.Error(err)
			return
		}
		h := sha256.New()
		gen := mrand.NewChaCha8([32]byte{5})
		buf := make([]byte, 256<<10)
		for left := size; left > 0; left -= len(buf) {
			gen.Read(buf)
			h.Write(buf)
			if _, err := s.Write(buf); err != nil {
				t.Error(err)
				return
			}
		}
		if err := s.CloseWrite(); err != nil {
			t.Error(err)
		}
		sent <- [32]byte(h.Sum(nil))
	}()
	s, err := p.srvConn.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, s, size/4); err != nil {
		t.Fatal(err)
	}
	// A quarter through the relay: the direct path opens.
	viaRelay := relay.carried.Load()
	if err := p.cliConn.ProbePath(p.srv.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(h, s)
	if err != nil {
		t.Fatal(err)
	}
	if n != size-size/4 {
		t.Fatalf("received %d bytes after the move, want %d", n, size-size/4)
	}
	if want := <-sent; [32]byte(h.Sum(nil)) != want {
		t.Fatal("the stream's bytes differ from what was sent")
	}
	if p.cliConn.RemoteAddr() != p.srv.LocalAddr() || p.srvConn.RemoteAddr().Port() != p.cli.LocalAddr().Port() {
		t.Fatalf("paths after the move: client → %v, server → %v", p.cliConn.RemoteAddr(), p.srvConn.RemoteAddr())
	}
	// After both moved, the relay goes quiet.
	before := relay.carried.Load()
	time.Sleep(300 * time.Millisecond)
	if after := relay.carried.Load(); after != before {
		t.Fatalf("the relay still carries packets after the move: %d more", after-before)
	}
	t.Logf("through the relay before the move: %d packets; in all: %d", viaRelay, before)
}
