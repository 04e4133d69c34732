package sudp

import (
	"context"
	"crypto/rand"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// TestReceiveCapNotSpentByForgeries: a peer's receive cap is charged before
// decryption, so a packet that then fails authentication — junk sent by
// anyone who saw one of the peer's connection ids, from any address — must
// not keep the charge: otherwise a few kilobytes a second of junk drain
// the bucket the peer's real packets need (shared by all its sessions, so
// reconnecting does not help).
func TestReceiveCapNotSpentByForgeries(t *testing.T) {
	srvKey, goodKey := genKey(t), genKey(t)
	psk := [32]byte{3}
	srv := newServer(t, Config{Static: srvKey}, psk, goodKey)
	ctx := ctxT(t)
	good := newClientEndpoint(t, goodKey)
	goodConn, err := good.Dial(ctx, srv.LocalAddr().String(), pub(srvKey), psk)
	if err != nil {
		t.Fatal(err)
	}
	goodSrv, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	goodSrv.LimitReceive(10<<10, 20<<10)
	cid := goodSrv.cc.LocalCID()

	sock, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	junk := func(pn uint64) []byte {
		b := wire.AppendHeader(nil, wire.Header{DstCID: cid, PN: pn})
		tail := make([]byte, 64)
		rand.Read(tail)
		return append(b, tail...)
	}
	// Drain the burst, then keep flooding while the peer talks.
	for pn := uint64(1 << 40); pn < 1<<40+200; pn++ {
		sock.Write(junk(pn))
	}
	time.Sleep(50 * time.Millisecond)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for pn := uint64(1 << 41); ; pn++ {
			select {
			case <-stop:
				return
			default:
			}
			sock.Write(junk(pn))
			time.Sleep(200 * time.Microsecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(200 * time.Millisecond)

	msg := []byte("still here")
	if err := goodConn.SendMessage(ctx, msg, PriorityNormal); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	m, err := goodSrv.ReceiveMessage(rctx, 1<<10)
	t.Logf("server dropped %d packets at the cap; received %d", goodSrv.rlim.dropped, goodSrv.Stats().PacketsReceived)
	if err != nil || string(m) != string(msg) {
		t.Fatalf("the peer's message under a junk flood at its connection id: %q, %v (server dropped %d of its packets at the cap)", m, err, goodSrv.rlim.dropped)
	}
}

// A refund gives back what allow took (at least minPacketCharge), never
// beyond the burst.
func TestRecvLimitRefund(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := recvLimit{bucket: ratelimit.NewBucket(t0, 1, 2*minPacketCharge)}
	passed := 0
	for l.allow(t0, 40) {
		passed++
	}
	if passed != 2 {
		t.Fatalf("a bucket of two minimum charges passed %d packets, want 2", passed)
	}
	l.refund(40)
	if !l.allow(t0, 40) || l.allow(t0, 40) {
		t.Fatal("a refund did not give back exactly one minimum charge")
	}
	for range 10 {
		l.refund(1500)
	}
	if !l.allow(t0, 1024) || l.allow(t0, 1) {
		t.Fatal("refunds filled the bucket beyond its burst")
	}
}
