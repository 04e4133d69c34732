package sudp

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestIPv6Loopback(t *testing.T) {
	if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
		t.Skipf("no IPv6 loopback on this machine: %v", err)
	} else {
		c.Close()
	}
	cliKey, srvKey := genKey(t), genKey(t)
	psk := [32]byte{6}
	srv := newServer(t, Config{Static: srvKey, Listen: "[::1]:0"}, psk, cliKey)
	cli, err := Listen(Config{Listen: "[::1]:0", Static: cliKey, ClusterID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, srv.LocalAddr().String(), pub(srvKey), psk)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendMessage(ctx, []byte("over v6"), PriorityNormal); err != nil {
		t.Fatal(err)
	}
	sc, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sc.ReceiveMessage(ctx, 100)
	if err != nil || string(m) != "over v6" {
		t.Fatalf("%q %v", m, err)
	}
	if !sc.RemoteAddr().Addr().Is6() {
		t.Fatalf("peer address %v is not IPv6", sc.RemoteAddr())
	}
}
