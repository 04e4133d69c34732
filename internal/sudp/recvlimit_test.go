package sudp

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

func TestRecvLimitBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := recvLimit{rate: 1000, burst: 3000, tokens: 3000, last: t0}
	steps := []struct {
		at   time.Duration
		n    int
		want bool
	}{
		{0, 1200, true},                       // from the burst
		{0, 1200, true},                       // 600 left
		{0, 1200, false},                      // over
		{500 * time.Millisecond, 1200, false}, // 1,100 left
		{600 * time.Millisecond, 1200, true},  // 1,200: exactly enough
		{time.Hour, 3000, true},               // refilled to the burst, not beyond
		{time.Hour, 1, false},
		{time.Hour - time.Second, 1, false}, // time going back adds nothing
	}
	for i, s := range steps {
		if got := l.allow(t0.Add(s.at), s.n); got != s.want {
			t.Fatalf("step %d (%v, %d bytes): allowed %v, want %v", i, s.at, s.n, got, s.want)
		}
	}
	if l.dropped != 4 {
		t.Errorf("%d dropped counted, want 4", l.dropped)
	}
	// Tiny packets are charged minPacketCharge each: a byte cap is not
	// many times the packet rate for them.
	tiny := newRecvLimit(t0, 1000, 10*minPacketCharge)
	passed := 0
	for tiny.allow(t0, 40) {
		passed++
	}
	if passed != 10 {
		t.Errorf("%d 40-byte packets passed a bucket of 10 × minPacketCharge, want 10", passed)
	}
	none := recvLimit{}
	if !none.allow(t0, 1<<20) || none.dropped != 0 {
		t.Error("no rate set, yet a packet was refused")
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
