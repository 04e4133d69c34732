package agent

import "github.com/prometheus/client_golang/prometheus"

// outboxCollector reports the event outbox (read at scrape time).
type outboxCollector struct {
	o                *outbox
	pending, dropped *prometheus.Desc
}

func newOutboxCollector(o *outbox) *outboxCollector {
	return &outboxCollector{o: o,
		pending: prometheus.NewDesc("ferry_agent_events_pending", "Logs and alarms not yet acknowledged by the MMC.", nil, nil),
		dropped: prometheus.NewDesc("ferry_agent_events_dropped_total", "Logs and alarms dropped because the outbox was full or a stored record was damaged.", nil, nil),
	}
}

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.pending; ch <- c.dropped }

func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	c.o.mu.Lock()
	n, d := len(c.o.pending), c.o.dropped
	c.o.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(d))
}

type metrics struct {
	online  prometheus.Gauge
	reauths prometheus.Counter
	offset  prometheus.Gauge
	delay   prometheus.Gauge
	alarm   prometheus.Gauge
	// peerWithdrawn counts direct links closed because the MMC revoked
	// the peer.
	peerWithdrawn prometheus.Counter
	// fenced counts orders refused for a term below the highest obeyed
	// (package fence); term the highest obeyed.
	fenced prometheus.Counter
	term   prometheus.Gauge
	// redirects counts MMC members that sent this agent to another;
	// memberUpdates member lists received and kept.
	redirects   prometheus.Counter
	leaderMoves prometheus.Counter
	// reconnectWaits counts pauses (the backoff) before reconnecting.
	reconnectWaits prometheus.Counter
	memberUpdates  prometheus.Counter
	// punchesSent counts punch datagrams this agent sent as a listener;
	// punchesReceived those it received, by outcome (punch.go).
	punchesSent     prometheus.Counter
	punchesReceived *prometheus.CounterVec
	// framesRefused counts framed migration streams (zstream) that
	// brought a malformed frame: each failed its migration.
	framesRefused prometheus.Counter
}

func newMetrics() *metrics {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_agent_" + name, Help: help})
	}
	return &metrics{
		online:  g("online", "1 while the agent has an authenticated session with the MMC."),
		reauths: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_reauth_answers_total", Help: "Re-authentication challenges answered."}),
		offset:  g("clock_offset_seconds", "Estimated MMC clock minus local clock (best of recent probes)."),
		delay:   g("clock_probe_delay_seconds", "Round-trip delay of the probe behind the offset estimate (twice its error bound)."),
		alarm:   g("clock_alarm", "1 while the clock offset exceeds the alarm threshold."),
		peerWithdrawn: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_peer_links_withdrawn_total",
			Help: "Direct agent-to-agent links closed because the MMC revoked the peer."}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_orders_fenced_total",
			Help: "MMC orders refused because their leader term is below the highest this agent has obeyed."}),
		term: g("mmc_term", "Highest MMC leader term this agent has obeyed."),
		redirects: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_mmc_redirects_total",
			Help: "Logins an MMC member answered with a redirect to another member."}),
		leaderMoves: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_mmc_leader_moves_total",
			Help: "Sessions moved to a new MMC leader because a standby session named it."}),
		reconnectWaits: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_mmc_reconnect_waits_total",
			Help: "Pauses (the jittered, doubling backoff) before connecting to an MMC member again."}),
		memberUpdates: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_mmc_member_updates_total",
			Help: "MMC member lists received and kept."}),
		punchesSent: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_punches_sent_total",
			Help: "Hole-punching datagrams sent to an introduced peer."}),
		punchesReceived: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_agent_punches_received_total",
			Help: "Hole-punching datagrams received, by outcome: matched (an introduction's), unmatched, malformed."}, []string{"outcome"}),
		framesRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_migration_frames_refused_total",
			Help: "Framed migration streams that brought a malformed frame (bad flags, length or zstd payload); each failed its migration."}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.online, m.reauths, m.offset, m.delay, m.alarm, m.peerWithdrawn, m.fenced, m.term, m.redirects, m.leaderMoves, m.reconnectWaits, m.memberUpdates, m.punchesSent, m.punchesReceived, m.framesRefused}
}
