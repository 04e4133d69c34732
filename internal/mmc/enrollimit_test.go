//go:build linux

package mmc

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// receiveRateDrops reads the endpoint's dropped_total{reason="receive_rate"}.
func receiveRateDrops(t *testing.T, ep *sudp.Endpoint) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(sudp.NewCollector(ep, nil)); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ferry_sudp_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == "receive_rate" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestEnrolmentSessionReceiveCapped: anyone with the bundle gets an
// enrolment session; what it sends beyond enrolRecvBurst plus
// enrolRecvRate is dropped before decryption (docs/BENCHMARKS.md §9: uncapped,
// such a flood overran the receive loop every agent shares).
func TestEnrolmentSessionReceiveCapped(t *testing.T) {
	s := startMMC(t, Config{})
	b := s.Bundle()
	keys, err := b.Keys()
	if err != nil {
		t.Fatal(err)
	}
	ua := net.UDPAddrFromAddrPort(s.Addr())
	h, err := hostileHandshake(ua, keys[0], b.ClusterID)
	if err != nil {
		t.Fatal(err)
	}
	defer h.sock.Close()
	// The cap is set when the MMC takes the session (serveConn): until
	// then, a few milliseconds, the session is not capped.
	if err := h.send(wire.AppendPing(nil), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	pkt := wire.AppendPadding(wire.AppendPing(nil), 1200)
	// Twice the burst, paced so that the socket buffer keeps them: what
	// is dropped is dropped by the cap.
	n := 2 * enrolRecvBurst / len(pkt)
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := h.send(pkt, nil); err != nil {
			t.Fatal(err)
		}
		if i%32 == 31 {
			time.Sleep(time.Millisecond)
		}
	}
	elapsed := time.Since(start)
	// The cap lets through its burst and its rate over the time sent; the
	// rest of the 2 × burst must be dropped (once the loop has read them).
	allowed := (enrolRecvBurst + enrolRecvRate*elapsed.Seconds()) / float64(len(pkt)+wire.DataHeaderSize+16)
	want := float64(n) - allowed - 2
	deadline := time.Now().Add(5 * time.Second)
	var dropped float64
	for time.Now().Before(deadline) {
		if dropped = receiveRateDrops(t, s.ep); dropped >= want {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d packets in %v: %.0f dropped by the cap (it lets through ~%.0f)", n, elapsed, dropped, allowed)
	if dropped < want {
		t.Fatalf("%.0f packets dropped by the receive cap, want at least %.0f", dropped, want)
	}
}
