package sudp

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
)

// Datagrams of a protocol sharing the port (first byte ≥ ForeignMin) go
// to the Foreign handler, from the socket's own address, beside live
// connections; without a handler they are dropped and counted; SendRaw
// refuses what an SUDP endpoint would parse as its own.
func TestForeignDatagrams(t *testing.T) {
	type got struct {
		from netip.AddrPort
		b    []byte
	}
	ch := make(chan got, 16)
	p := newPair(t, Config{Foreign: func(from netip.AddrPort, b []byte) {
		ch <- got{from, bytes.Clone(b)}
	}})
	raw := []byte{ForeignMin + 0x10, 1, 2, 3}
	if err := p.cli.SendRaw(p.srv.LocalAddr(), raw); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-ch:
		if !bytes.Equal(g.b, raw) || g.from.Port() != p.cli.LocalAddr().Port() {
			t.Fatalf("handler got %x from %v (client socket %v)", g.b, g.from, p.cli.LocalAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the foreign datagram never reached the handler")
	}
	// The connection is untouched.
	if err := p.cliConn.SendDatagram([]byte("still here"), core.PriorityNormal); err != nil {
		t.Fatal(err)
	}
	// No handler: dropped, counted.
	before := p.cli.Stats().Foreign
	if err := p.srv.SendRaw(p.cli.LocalAddr(), raw); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.cli.Stats().Foreign == before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p.cli.Stats().Foreign != before+1 {
		t.Fatalf("foreign drops %d, want %d", p.cli.Stats().Foreign, before+1)
	}
	for _, bad := range [][]byte{nil, {0x01, 0}, {ForeignMin - 1}} {
		if err := p.cli.SendRaw(p.srv.LocalAddr(), bad); err == nil {
			t.Errorf("SendRaw(%x) was sent", bad)
		}
	}
}
