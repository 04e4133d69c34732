//go:build linux

package mmc

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-vm/ferry/internal/identity"
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
// enrolRecvRate is dropped before decryption, from its first packet
// (docs/BENCHMARKS.md §9: uncapped, such a flood overran the receive loop
// every agent shares).
func TestEnrolmentSessionReceiveCapped(t *testing.T) {
	s := startMMC(t, Config{})
	b := s.Bundle()
	keys, err := b.Keys()
	if err != nil {
		t.Fatal(err)
	}
	h, err := hostileHandshake(net.UDPAddrFromAddrPort(s.Addr()), keys[0], b.ClusterID)
	if err != nil {
		t.Fatal(err)
	}
	defer h.sock.Close()
	floodCapped(t, s, h, enrolRecvRate, enrolRecvBurst)
}

// TestAgentSessionReceiveCapped: an approved agent that turned hostile
// (it holds its key and K) is capped too, at agentRecvRate: no session can
// monopolise the receive loop.
func TestAgentSessionReceiveCapped(t *testing.T) {
	s := startMMC(t, Config{})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	keys, err := a.bundle.Keys()
	if err != nil {
		t.Fatal(err)
	}
	sock, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	psk := identity.DerivePSK(a.code, a.bundle.ClusterID, a.facts)
	h, err := hostileHandshakeAs(sock, a.static, psk, keys[0], a.bundle.ClusterID)
	if err != nil {
		t.Fatal(err)
	}
	floodCapped(t, s, h, agentRecvRate, agentRecvBurst)

	// A new session of the same key brings no fresh burst: the bucket is
	// the key's. Half a burst right away is mostly dropped.
	sock2, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(s.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer sock2.Close()
	h2, err := hostileHandshakeAs(sock2, a.static, psk, keys[0], a.bundle.ClusterID)
	if err != nil {
		t.Fatal(err)
	}
	before := receiveRateDrops(t, s.ep)
	pkt := wire.AppendPadding(wire.AppendPing(nil), 1200)
	size := len(pkt) + wire.DataHeaderSize + 16
	n := agentRecvBurst / 2 / size
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := h2.send(pkt, nil); err != nil {
			t.Fatal(err)
		}
		if i%32 == 31 {
			time.Sleep(time.Millisecond)
		}
	}
	// What the rate refilled since the first flood ended, at most.
	want := float64(n) - float64(agentRecvRate)*(time.Since(start).Seconds()+1)/float64(size)
	deadline := time.Now().Add(5 * time.Second)
	var dropped float64
	for time.Now().Before(deadline) {
		if dropped = receiveRateDrops(t, s.ep) - before; dropped >= want {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if dropped < want {
		t.Fatalf("a new session of the key: %.0f of %d packets dropped, want at least %.0f (a fresh burst?)", dropped, n, want)
	}
}

// floodCapped sends twice a cap's burst of PING packets on h's session
// and checks that the MMC dropped, before decryption, all but the burst
// and the rate over the time it took.
func floodCapped(t *testing.T, s *Server, h *hostileSession, rate, burst int) {
	t.Helper()
	before := receiveRateDrops(t, s.ep)
	pkt := wire.AppendPadding(wire.AppendPing(nil), 1200)
	size := len(pkt) + wire.DataHeaderSize + 16
	// Paced so that the socket buffer keeps them: what is dropped is
	// dropped by the cap.
	n := 2 * burst / size
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
	// The handshake's own packets took a little of the burst too.
	allowed := (float64(burst) + float64(rate)*elapsed.Seconds()) / float64(size)
	want := float64(n) - allowed - 2
	deadline := time.Now().Add(5 * time.Second)
	var dropped float64
	for time.Now().Before(deadline) {
		if dropped = receiveRateDrops(t, s.ep) - before; dropped >= want {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d packets in %v: %.0f dropped by the cap (it lets through ~%.0f)", n, elapsed, dropped, allowed)
	if dropped < want {
		t.Fatalf("%.0f packets dropped by the receive cap, want at least %.0f", dropped, want)
	}
}
