package sudp

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-vm/ferry/internal/sudp/core"
)

// totals accumulates the counters of connections, so that an endpoint's
// metrics stay monotonic when connections end.
type totals struct {
	packetsSent, packetsRecv, bytesSent, bytesRecv uint64
	streamSent, streamRecv, retransmitted, lost    uint64
	dropReplay, dropAuth, dropMalformed            uint64
	datagramsSent, datagramsRecv, datagramsDropped uint64
	keyUpdates, pathChanges                        uint64
	pathProbes, pathProbesFailed                   uint64
	statelessResets                                uint64
	recvBudgetRanges, recvBudgetMemory             uint64
	rekeyDone, rekeyStarted, rekeyReplay           uint64
	rekeyRejected, rekeyCollision, rekeyLimited    uint64
	keyExpiredWaits                                uint64
}

func (t *totals) add(s *core.ConnStats) {
	t.packetsSent += s.PacketsSent
	t.packetsRecv += s.PacketsReceived
	t.bytesSent += s.BytesSent
	t.bytesRecv += s.BytesReceived
	t.streamSent += s.StreamBytesSent
	t.streamRecv += s.StreamBytesRecv
	t.retransmitted += s.RetransmittedBytes
	t.lost += s.PacketsLost
	t.dropReplay += s.DroppedReplay
	t.dropAuth += s.DroppedAuth
	t.dropMalformed += s.DroppedMalformed
	t.datagramsSent += s.DatagramsSent
	t.datagramsRecv += s.DatagramsRecv
	t.datagramsDropped += s.DatagramsDropped
	t.keyUpdates += s.KeyUpdates
	t.pathChanges += s.PathChanges
	t.pathProbes += s.PathProbes
	t.pathProbesFailed += s.PathProbesFailed
	t.statelessResets += s.StatelessResets
	t.recvBudgetRanges += s.RecvBudgetRanges
	t.recvBudgetMemory += s.RecvBudgetMemory
	t.rekeyDone += s.Rehandshakes
	t.rekeyStarted += s.RehandshakesStarted
	t.rekeyReplay += s.RehandshakeReplays
	t.rekeyRejected += s.RehandshakeRejected
	t.rekeyCollision += s.RehandshakeCollisions
	t.rekeyLimited += s.RehandshakeLimited
	t.keyExpiredWaits += s.KeyExpiredWaits
}

// Totals returns the endpoint's connection counters summed over live and
// ended connections.
func (e *Endpoint) totals() (totals, int) {
	e.mu.Lock()
	t := e.ended
	conns := make([]*Conn, 0, len(e.conns))
	for _, c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for _, c := range conns {
		s := c.Stats()
		t.add(&s)
	}
	return t, len(conns)
}

// Collector exposes an endpoint's counters as Prometheus metrics. Every
// dropped datagram is counted under a reason: malformed, unknown connection
// id, failed authentication, replay, and each handshake rejection.
type Collector struct {
	ep *Endpoint

	conns, packets, bytes, streamBytes, retransmitted, lost                           *prometheus.Desc
	dropped, handshakes, datagrams, keyUpdates, pathChanges                           *prometheus.Desc
	recvBudget, handshakeState, pathValidation, resets, rehandshakes, keyExpiredWaits *prometheus.Desc
}

// NewCollector returns a collector for ep; constLabels (e.g. the role)
// are added to every metric.
func NewCollector(ep *Endpoint, constLabels prometheus.Labels) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("ferry_sudp_"+name, help, labels, constLabels)
	}
	return &Collector{
		ep:            ep,
		conns:         d("connections", "Open SUDP connections."),
		packets:       d("packets_total", "SUDP packets, by direction.", "direction"),
		bytes:         d("bytes_total", "UDP payload bytes on the wire, by direction.", "direction"),
		streamBytes:   d("stream_bytes_total", "Application stream bytes sent once or delivered, by direction.", "direction"),
		retransmitted: d("retransmitted_bytes_total", "Stream bytes sent again after loss."),
		lost:          d("packets_lost_total", "Packets declared lost by loss detection."),
		dropped:       d("dropped_total", "Datagrams dropped before or during processing, by reason.", "reason"),
		handshakes:    d("handshakes_total", "Handshake initiations handled by the responder, by result.", "result"),
		datagrams:     d("datagrams_total", "Best-effort messages, by event.", "event"),
		keyUpdates:    d("key_updates_total", "Traffic key generations moved to (both directions)."),
		pathChanges:   d("path_changes_total", "Peer address changes (NAT rebinding), each proven by a PATH_RESPONSE."),
		pathValidation: d("path_validations_total", "New peer addresses challenged, by result: started, or failed (no answer in time, "+
			"or the validated path kept delivering newer packets: a copy raced from elsewhere).", "result"),
		resets: d("stateless_resets_total", "Stateless resets: sent (data for an unknown connection id), rate_limited (withheld), "+
			"received (a connection ended because its peer lost it).", "event"),
		recvBudget: d("receive_budget_closes_total", "Connections closed because the peer crossed the receive budget (close code 6), by bound: "+
			"ranges (too many holes in its streams) or memory (too much received data held).", "bound"),
		handshakeState: d("handshake_state_dropped_total", "Handshake state dropped to stay bounded, by reason: unconfirmed_evicted (MaxUnconfirmed reached), "+
			"unconfirmed_expired (the peer never proved its keys), replay_evicted (an unregistered key's replay timestamp forgotten early).", "reason"),
		rehandshakes: d("rehandshakes_total", "Re-handshake (fresh DH rekey) events: completed, started (our initiations), "+
			"replay (message of an epoch already begun), rejected (failed authentication), collision (initiations crossed), "+
			"rate_limited (Noise work refused).", "event"),
		keyExpiredWaits: d("key_expired_waits_total", "Times a send key reached its hard limit and sending waited for a re-handshake (an outage)."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.packets, c.bytes, c.streamBytes, c.retransmitted, c.lost,
		c.dropped, c.handshakes, c.datagrams, c.keyUpdates, c.pathChanges, c.recvBudget, c.handshakeState, c.pathValidation, c.resets, c.rehandshakes, c.keyExpiredWaits} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	t, n := c.ep.totals()
	es := c.ep.Stats()
	hs := es.Handshake
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(n))
	counter(c.packets, t.packetsSent, "sent")
	counter(c.packets, t.packetsRecv, "received")
	counter(c.bytes, t.bytesSent, "sent")
	counter(c.bytes, t.bytesRecv, "received")
	counter(c.streamBytes, t.streamSent, "sent")
	counter(c.streamBytes, t.streamRecv, "received")
	counter(c.retransmitted, t.retransmitted)
	counter(c.lost, t.lost)
	counter(c.dropped, t.dropReplay, "replay")
	counter(c.dropped, t.dropAuth, "auth")
	counter(c.dropped, t.dropMalformed+es.Malformed, "malformed")
	counter(c.dropped, es.UnknownCID, "unknown_cid")
	counter(c.dropped, es.Foreign, "foreign")
	counter(c.dropped, c.ep.recvLimited.Load(), "receive_rate")
	counter(c.handshakes, hs.Sessions, "accepted")
	counter(c.handshakes, es.DuplicateInitiations, "duplicate")
	counter(c.handshakes, hs.CookieReplies, "cookie_required")
	counter(c.handshakes, hs.RateLimited, "rate_limited")
	counter(c.handshakes, hs.BadMAC1, "bad_mac1")
	counter(c.handshakes, hs.DecryptFailed, "decrypt_failed")
	counter(c.handshakes, hs.UnknownPeer, "unknown_peer")
	counter(c.handshakes, hs.PeerNotAllowed, "peer_not_allowed")
	counter(c.handshakes, hs.Replays, "replay")
	counter(c.handshakes, hs.Malformed+hs.BadVersion+hs.BadPayload, "malformed")
	counter(c.handshakes, hs.Internal, "internal_error")
	counter(c.datagrams, t.datagramsSent, "sent")
	counter(c.datagrams, t.datagramsRecv, "received")
	counter(c.datagrams, t.datagramsDropped, "dropped")
	counter(c.keyUpdates, t.keyUpdates)
	counter(c.pathChanges, t.pathChanges)
	counter(c.pathValidation, t.pathProbes, "started")
	counter(c.pathValidation, t.pathProbesFailed, "failed")
	counter(c.resets, es.ResetsSent, "sent")
	counter(c.resets, es.ResetsLimited, "rate_limited")
	counter(c.resets, t.statelessResets, "received")
	counter(c.recvBudget, t.recvBudgetRanges, "ranges")
	counter(c.recvBudget, t.recvBudgetMemory, "memory")
	counter(c.handshakeState, es.UnconfirmedEvicted, "unconfirmed_evicted")
	counter(c.handshakeState, es.UnconfirmedExpired, "unconfirmed_expired")
	counter(c.handshakeState, hs.ReplayEvicted, "replay_evicted")
	counter(c.rehandshakes, t.rekeyDone, "completed")
	counter(c.rehandshakes, t.rekeyStarted, "started")
	counter(c.rehandshakes, t.rekeyReplay, "replay")
	counter(c.rehandshakes, t.rekeyRejected, "rejected")
	counter(c.rehandshakes, t.rekeyCollision, "collision")
	counter(c.rehandshakes, t.rekeyLimited, "rate_limited")
	counter(c.keyExpiredWaits, t.keyExpiredWaits)
}

var _ prometheus.Collector = (*Collector)(nil)
