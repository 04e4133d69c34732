package sudp

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// natBox relays a client to a server through an outside socket it can
// replace, as a NAT does when its mapping expires and is recreated.
type natBox struct {
	t       *testing.T
	inside  *net.UDPConn // the client talks to this
	server  netip.AddrPort
	mu      sync.Mutex
	outside *net.UDPConn
	client  netip.AddrPort
}

func newNATBox(t *testing.T, server netip.AddrPort) *natBox {
	in, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	n := &natBox{t: t, inside: in, server: server}
	t.Cleanup(func() { in.Close() })
	n.rebind()
	go n.fromClient()
	return n
}

// rebind replaces the outside socket: the server sees a new source port.
func (n *natBox) rebind() {
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { out.Close() })
	n.mu.Lock()
	old := n.outside
	n.outside = out
	n.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go n.fromServer(out)
}

func (n *natBox) fromClient() {
	buf := make([]byte, 65536)
	for {
		k, from, err := n.inside.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		n.mu.Lock()
		n.client = from
		out := n.outside
		n.mu.Unlock()
		out.WriteToUDPAddrPort(buf[:k], n.server)
	}
}

func (n *natBox) fromServer(out *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		k, _, err := out.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		n.mu.Lock()
		c := n.client
		n.mu.Unlock()
		n.inside.WriteToUDPAddrPort(buf[:k], c)
	}
}

func TestNATRebinding(t *testing.T) {
	p := &testPair{cliKey: genKey(t), srvKey: genKey(t), psk: [32]byte{3}}
	p.srv = newServer(t, Config{Static: p.srvKey}, p.psk, p.cliKey)
	p.cli = newClientEndpoint(t, p.cliKey)
	nat := newNATBox(t, p.srv.LocalAddr())
	ctx := ctxT(t)
	var err error
	if p.cliConn, err = p.cli.Dial(ctx, nat.inside.LocalAddr().String(), pub(p.srvKey), p.psk); err != nil {
		t.Fatal(err)
	}
	if p.srvConn, err = p.srv.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	first := p.srvConn.RemoteAddr()
	stillServing(t, p)

	nat.rebind()
	// The client keeps talking; the server must follow it to the new port.
	for i := 0; i < 3; i++ {
		stillServing(t, p)
		time.Sleep(20 * time.Millisecond)
	}
	second := p.srvConn.RemoteAddr()
	if second == first {
		t.Fatalf("server still sends to the old address %v", first)
	}
	if s := p.srvConn.Stats(); s.PathChanges != 1 {
		t.Fatalf("path changes %d, want 1", s.PathChanges)
	}
	// Server-initiated traffic reaches the client at its new address.
	if err := p.srvConn.SendMessage(ctx, []byte("to new path"), PriorityNormal); err != nil {
		t.Fatal(err)
	}
	m, err := p.cliConn.ReceiveMessage(ctx, 100)
	if err != nil || string(m) != "to new path" {
		t.Fatalf("%q %v", m, err)
	}
}
