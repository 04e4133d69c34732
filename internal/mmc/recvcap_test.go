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

// sudpCounter reads one of the endpoint's counters, name{label="value"}.
func sudpCounter(t *testing.T, ep *sudp.Endpoint, name, label, value string) float64 {
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
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// receiveRateDrops reads the endpoint's dropped_total{reason="receive_rate"}.
func receiveRateDrops(t *testing.T, ep *sudp.Endpoint) float64 {
	return sudpCounter(t, ep, "ferry_sudp_dropped_total", "reason", "receive_rate")
}

// processed reads how many packets the endpoint's connections processed.
func processed(t *testing.T, ep *sudp.Endpoint) float64 {
	return sudpCounter(t, ep, "ferry_sudp_packets_total", "direction", "received")
}

// settled waits until the endpoint's receive counters stop moving (the
// loop has read what was sent, or the kernel dropped it), at most 5 s.
func settled(t *testing.T, ep *sudp.Endpoint) {
	t.Helper()
	last := -1.0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n := processed(t, ep) + receiveRateDrops(t, ep)
		if n == last {
			return
		}
		last = n
	}
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
	firstEnd := floodCapped(t, s, h, agentRecvRate, agentRecvBurst)

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
	settled(t, s.ep)
	drops0, done0 := receiveRateDrops(t, s.ep), processed(t, s.ep)
	pkt := wire.AppendPadding(wire.AppendPing(nil), 1200)
	size := len(pkt) + wire.DataHeaderSize + 16
	n := agentRecvBurst / 2 / size
	for i := 0; i < n; i++ {
		if err := h2.send(pkt, nil); err != nil {
			t.Fatal(err)
		}
		if i%32 == 31 {
			time.Sleep(time.Millisecond)
		}
	}
	settled(t, s.ep)
	// What the rate refilled since the first flood ended, at most.
	allowed := float64(agentRecvRate) * time.Since(firstEnd).Seconds() / float64(size)
	dropped, done := receiveRateDrops(t, s.ep)-drops0, processed(t, s.ep)-done0
	t.Logf("a new session of the key: %d packets, %.0f processed (at most ~%.0f), %.0f dropped by the cap", n, done, allowed, dropped)
	if done > allowed+2 || dropped < 1 {
		t.Fatalf("a new session of the key: %.0f of %d packets processed (want at most %.0f), %.0f dropped: a fresh burst?", done, n, allowed, dropped)
	}
}

// floodCapped sends twice a cap's burst of PING packets on h's session
// and checks that the MMC processed no more than the burst and the rate
// over the time it took, and dropped the rest of what it read before
// decryption. (What the kernel dropped, when the loop fell behind — under
// the race detector on a loaded machine — is neither.)
func floodCapped(t *testing.T, s *Server, h *hostileSession, rate, burst int) (lastSent time.Time) {
	t.Helper()
	settled(t, s.ep)
	drops0, done0 := receiveRateDrops(t, s.ep), processed(t, s.ep)
	pkt := wire.AppendPadding(wire.AppendPing(nil), 1200)
	size := len(pkt) + wire.DataHeaderSize + 16
	// Paced, so that the socket buffer keeps most of them.
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
	lastSent = time.Now()
	settled(t, s.ep)
	elapsed := time.Since(start)
	dropped, done := receiveRateDrops(t, s.ep)-drops0, processed(t, s.ep)-done0
	allowed := (float64(burst) + float64(rate)*elapsed.Seconds()) / float64(size)
	t.Logf("%d packets in %v: %.0f processed (the cap lets through ~%.0f), %.0f dropped by the cap", n, elapsed, done, allowed, dropped)
	if done > allowed+2 {
		t.Fatalf("%.0f packets processed, the cap allows %.0f", done, allowed)
	}
	if dropped < 1 {
		t.Fatal("no packet dropped by the cap")
	}
	return lastSent
}
