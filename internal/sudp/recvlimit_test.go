package sudp

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// A connection's cap charges each packet at least minPacketCharge, counts
// its own drops, and shares its bucket: a second connection of the same
// peer finds it as the first left it.
func TestRecvLimitBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	shared := ratelimit.NewBucket(t0, 1000, 10*minPacketCharge)
	a, b := recvLimit{bucket: shared}, recvLimit{bucket: shared}
	passed := 0
	for a.allow(t0, 40) {
		passed++
	}
	if passed != 10 || a.dropped != 1 {
		t.Errorf("%d 40-byte packets passed a bucket of 10 × minPacketCharge (want 10), %d dropped (want 1)", passed, a.dropped)
	}
	if b.allow(t0, 1200) || b.dropped != 1 {
		t.Error("a second connection of the peer got a fresh burst")
	}
	if !b.allow(t0.Add(2*time.Second), 1200) {
		t.Error("the shared bucket did not refill")
	}
	none := recvLimit{}
	if !none.allow(t0, 1<<20) || none.dropped != 0 {
		t.Error("no cap set, yet a packet was refused")
	}
}

// TestLimitReceiveFlood: a peer with a session (the hand-made hostile peer
// of TestAttackTinyOutOfOrderFrames) floods a connection capped with
// LimitReceive. What its connection processes stays within the burst plus
// the rate, the rest is dropped before decryption — counted, logged once —
// and another connection on the endpoint is unaffected.
func TestLimitReceiveFlood(t *testing.T) {
	logs := &syncBuffer{}
	srvKey, badKey, goodKey := genKey(t), genKey(t), genKey(t)
	psk := [32]byte{3}
	srv := newServer(t, Config{
		Static: srvKey,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, psk, badKey, goodKey)
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

	bad := dialHostile(t, srv, pub(srvKey), psk, badKey.Private)
	bad.send(wire.AppendPing(nil))
	badSrv, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const rate, burst = 10 << 10, 20 << 10
	badSrv.LimitReceive(rate, burst)
	start := time.Now()
	const packets = 400
	pkt := wire.AppendPadding(wire.AppendPing(nil), 1000)
	for i := 0; i < packets; i++ {
		bad.send(pkt)
		if i%20 == 19 {
			time.Sleep(time.Millisecond) // let the socket buffer drain: drops here are the cap's
		}
	}
	waitFor(t, "the flood read", func() bool {
		return metricValue(t, srv, "ferry_sudp_dropped_total", "reason", "receive_rate") > 0 &&
			badSrv.Stats().PacketsReceived+uint64(metricValue(t, srv, "ferry_sudp_dropped_total", "reason", "receive_rate")) >= packets
	})
	elapsed := time.Since(start)
	size := len(pkt) + wire.DataHeaderSize + 16
	processed := badSrv.Stats().PacketsReceived
	allowed := uint64((burst+rate*elapsed.Seconds())/float64(size)) + 2 // +1: the PING before the cap
	t.Logf("%d of %d packets processed in %v (cap allows %d)", processed, packets+1, elapsed, allowed)
	if processed > allowed {
		t.Errorf("%d packets processed, the cap allows %d", processed, allowed)
	}
	if badSrv.Err() != nil {
		t.Errorf("the capped connection was closed: %v", badSrv.Err())
	}
	if n := bytes.Count([]byte(logs.String()), []byte("over its receive rate")); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs.String())
	}

	// The other connection on the endpoint is not capped.
	big := make([]byte, 200<<10)
	if err := goodConn.SendMessage(ctx, big, PriorityNormal); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if m, err := goodSrv.ReceiveMessage(rctx, len(big)); err != nil || len(m) != len(big) {
		t.Fatalf("other connection: %d bytes, %v", len(m), err)
	}
}
