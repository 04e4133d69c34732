package mmc

import (
	"github.com/ferry-vm/ferry/internal/policy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-vm/ferry/internal/replica"
)

// metrics are the MMC's own counters (the SUDP endpoint's are exported by
// sudp.Collector). Every refused or malformed input is counted here.
type metrics struct {
	online          prometheus.Gauge
	logins          prometheus.Counter
	enrolments      prometheus.Counter
	reauths         prometheus.Counter
	reauthFailures  prometheus.Counter
	tokenFailures   prometheus.Counter
	throttled       prometheus.Counter
	factAlarms      prometheus.Counter
	auditDropped    prometheus.Counter
	auditSuppressed prometheus.Counter
	auditThrottled  prometheus.Counter
	auditPruned     prometheus.Counter
	boardPosts      prometheus.Counter
	boardDropped    prometheus.Counter
	reports         prometheus.Counter
	eventsDropped   prometheus.Counter
	pendingExpired  prometheus.Counter
	peerWithdrawals prometheus.Counter
	ordersFenced    prometheus.Counter
	forwarded       prometheus.Counter
	standby         prometheus.Gauge
	refused         *prometheus.CounterVec
	vmAlarms        *prometheus.CounterVec
	badMessages     *prometheus.CounterVec
	links           *prometheus.CounterVec
	// Migrations and evacuations this member ran as the leader.
	migStarted  *prometheus.CounterVec
	migEnded    *prometheus.CounterVec
	migDuration prometheus.Histogram
	migDowntime prometheus.Histogram
	migBytes    prometheus.Counter
	evacStarted prometheus.Counter
	evacEnded   *prometheus.CounterVec
	// The policy engine: decisions by mode and what came of them, and
	// the VMs its latest evaluation held back, by why.
	policyDecisions *prometheus.CounterVec
	policyHeld      *prometheus.GaugeVec
	// alarms counts every alarm stored (agents' and the MMC's), by kind.
	alarms *prometheus.CounterVec
	raft   prometheus.Collector // the replica node's ferry_raft_* (registerRaft); nil until then
}

func newMetrics() *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_mmc_" + name, Help: help})
	}
	m := &metrics{
		online:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_mmc_agents_online", Help: "Agents with a live session."}),
		logins:          c("logins_total", "Successful agent logins."),
		enrolments:      c("enrolment_requests_total", "Enrolment requests recorded."),
		reauths:         c("reauth_ok_total", "Periodic re-authentications answered correctly."),
		reauthFailures:  c("reauth_failures_total", "Sessions ended for a wrong or late re-authentication answer."),
		tokenFailures:   c("token_failures_total", "Enrolments refused for a malformed, unknown, expired, used-up or guessed join token."),
		throttled:       c("token_throttled_total", "Join-token attempts refused by the per-source limit."),
		factAlarms:      c("fact_alarms_total", "Logins whose MAC or disk id differed from enrolment."),
		auditDropped:    c("audit_dropped_total", "Audit entries not recorded: the audit queue was full, or this member was not the leader (the entry is in its own log only)."),
		forwarded:       c("admin_forwarded_total", "Admin API requests this member forwarded to the leader."),
		standby:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_mmc_standby_sessions", Help: "Agents' standby sessions at this member (they learn the leader from it)."}),
		auditSuppressed: c("audit_suppressed_total", "Repeats of one refusal (same key, action and source within 10 s) counted instead of written."),
		auditThrottled:  c("audit_throttled_total", "Refusals of unauthenticated parties (wrong admin token, unknown or refused keys) not written to the audit log because their source, or all sources together, reached the per-minute limit; summed up in audit.suppressed entries."),
		auditPruned:     c("audit_pruned_total", "Audit entries removed by the retention limits (age, count)."),
		boardPosts:      c("board_posts_total", "Blackboard entries recorded from agents."),
		boardDropped:    c("board_posts_dropped_total", "Blackboard entries posted on a topic that had ended or was unknown."),
		reports:         c("reports_total", "Load reports received from agents."),
		eventsDropped:   c("agent_events_dropped_total", "Agents' events (log lines, alarms) not stored: the agent sent more than its rate allows."),
		pendingExpired:  c("pending_expired_total", "Pending enrolments that expired without a decision (agent.expire)."),
		peerWithdrawals: c("peer_withdrawals_total", "Agents told to close their direct links with a revoked agent."),
		ordersFenced:    c("orders_fenced_total", "Orders agents refused because they obey a newer MMC leader (this MMC was deposed)."),
		vmAlarms: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_vm_alarms_total",
			Help: "Inventory alarms raised: a VM reported that the MMC has no record of (vm-unknown), reported by another agent than the one it is placed on (vm-misplaced), or left unmanaged by a revocation (vm-unmanaged)."}, []string{"kind"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_handshakes_refused_total",
			Help: "Handshake initiations refused: by the key's state (rejected, revoked), replay, decrypt (wrong key or psk), other."}, []string{"reason"}),
		badMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_bad_messages_total",
			Help: "Sessions ended for a malformed or unexpected message."}, []string{"kind"}),
		migStarted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_migrations_started_total",
			Help: "Migrations planned, by who asked: admin, policy, evacuation."}, []string{"by"}),
		migEnded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_migrations_ended_total",
			Help: "Migrations that reached an outcome: completed, failed, cancelled."}, []string{"outcome"}),
		migDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_mmc_migration_duration_seconds",
			Help: "Completed migrations' total time, from the plan to the destination running.", Buckets: prometheus.ExponentialBuckets(0.5, 2, 12)}),
		migDowntime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_mmc_migration_downtime_seconds",
			Help: "Completed migrations' downtime, from the source's pause to the destination running.", Buckets: prometheus.ExponentialBuckets(0.025, 2, 10)}),
		migBytes:    c("migration_wire_bytes_total", "Bytes completed migrations put on the wire."),
		evacStarted: c("evacuations_started_total", "Evacuations planned."),
		evacEnded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_evacuations_ended_total",
			Help: "Evacuations that ended: completed (every VM moved), failed (one or more not), cancelled."}, []string{"outcome"}),
		policyDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_policy_decisions_total",
			Help: "Policy engine decisions, by mode (dry-run, auto) and action: recommended (dry-run), planned (a migration started), not-planned (refused)."}, []string{"mode", "action"}),
		policyHeld: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_mmc_policy_held_vms",
			Help: "VMs violating their SLA that the latest evaluation did not move, by why: window (not sustained yet), cooldown, cap (max_concurrent), no-room (no host qualifies)."}, []string{"reason"}),
		alarms: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_alarms_total",
			Help: "Alarms stored (from agents and from the MMC), by kind."}, []string{"kind"}),
		links: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_mmc_links_total",
			Help: "Agent-to-agent links introduced, by outcome: direct (punched), relayed (no direct path; through the relay), failed; and upgraded: relayed links that moved to a direct path."}, []string{"path"}),
	}
	m.initLabels()
	return m
}

// initLabels makes the labelled series whose values are known exist at
// zero from the start, so that a dashboard or an alert sees 0, not "no
// data", before the first event.
func (m *metrics) initLabels() {
	for _, mode := range []string{policy.ModeDryRun, policy.ModeAuto} {
		for _, action := range []string{"recommended", "planned", "not-planned"} {
			m.policyDecisions.WithLabelValues(mode, action)
		}
	}
	for _, k := range policy.HeldKinds {
		m.policyHeld.WithLabelValues(k)
	}
	for _, k := range alarmKinds {
		m.alarms.WithLabelValues(k)
	}
}

// registerRaft exports the raft member's metrics (replica.Collector)
// with the MMC's. New calls it once the node exists, before the admin
// API serves /metrics.
func (m *metrics) registerRaft(n *replica.Node) {
	m.raft = replica.NewCollector(n)
}

// Collectors returns the MMC's collectors for registration.
func (s *Server) Collectors() []prometheus.Collector {
	m := s.metrics
	cs := []prometheus.Collector{m.online, m.logins, m.enrolments, m.reauths, m.reauthFailures, m.tokenFailures,
		m.throttled, m.factAlarms, m.auditDropped, m.auditSuppressed, m.auditThrottled, m.auditPruned, m.boardPosts, m.boardDropped, m.reports, m.eventsDropped, m.pendingExpired, m.peerWithdrawals, m.ordersFenced, m.forwarded, m.standby, m.refused, m.badMessages, m.vmAlarms, m.links,
		m.migStarted, m.migEnded, m.migDuration, m.migDowntime, m.migBytes, m.evacStarted, m.evacEnded,
		m.policyDecisions, m.policyHeld, m.alarms, loadCollector{s},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_mmc_migrations_in_flight", Help: "Migrations not yet at an outcome (as this member's inventory has them)."},
			func() float64 { s.invMu.Lock(); defer s.invMu.Unlock(); return float64(s.inv.OpenMigrations()) })}
	if m.raft != nil {
		cs = append(cs, m.raft)
	}
	return cs
}
