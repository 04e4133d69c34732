package replica

import (
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// raft reports its own metrics to armon/go-metrics' process-wide sink;
// Ferry keeps no global mutable state, so a Node measures itself: the
// counters and histograms below are updated by the node (raft's
// observations, Apply, Barrier) and the gauges are read from raft when
// Prometheus scrapes (Collector).

// observationBuffer is how many observations may wait for the node's
// observer goroutine. raft never blocks on it (the observer is
// non-blocking): an observation arriving when it is full is dropped and
// counted (ferry_raft_observations_dropped_total). Leader changes and
// failed heartbeats come at most a few per heartbeat interval, so a
// full buffer means the goroutine is starved, not a normal burst.
const observationBuffer = 64

// commitBuckets spans a loopback commit (bbolt's fsync, under a
// millisecond on an SSD) to a slow cross-site one (several 50–100 ms
// round trips) and raft's timeouts: 0.5 ms to 8 s, doubling.
var commitBuckets = prometheus.ExponentialBuckets(0.0005, 2, 15)

// nodeMetrics is what a Node counts as it runs. Its observer goroutine
// is owned by the Node: started in Open, stopped in Close.
type nodeMetrics struct {
	opened time.Time

	leaderChanges     prometheus.Counter
	peerChanges       *prometheus.CounterVec // change: added, removed
	heartbeatFailures *prometheus.CounterVec // peer
	apply, barrier    prometheus.Histogram
	commitFailures    *prometheus.CounterVec // op: apply, barrier

	obs      *raft.Observer
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func newNodeMetrics(now time.Time) *nodeMetrics {
	return &nodeMetrics{
		opened: now,
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_raft_leader_changes_total",
			Help: "Leaders this member learned of (itself included): one per election it saw won. Several per hour is a flapping cluster."}),
		peerChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_raft_peer_changes_total",
			Help: "Members this member started (added) or stopped (removed) replicating to while leading."}, []string{"change"}),
		heartbeatFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_raft_heartbeat_failures_total",
			Help: "Heartbeats this member, leading, failed to deliver, by peer id."}, []string{"peer"}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_raft_apply_duration_seconds",
			Help: "Writes through the log (Node.Apply) from proposal to the FSM's result on this member (committed by a majority and applied).", Buckets: commitBuckets}),
		barrier: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_raft_barrier_duration_seconds",
			Help: "Barriers (Node.Barrier, consistent reads) from proposal to every earlier entry applied on this member.", Buckets: commitBuckets}),
		commitFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_raft_commit_failures_total",
			Help: "Proposals raft accepted that failed or were abandoned (leadership lost, timeout, shutdown, caller gave up), by operation."}, []string{"op"}),
	}
}

// record counts one observation. It is the observer goroutine's whole
// work, separate so that it can be tested without raft.
func (m *nodeMetrics) record(o raft.Observation) {
	switch d := o.Data.(type) {
	case raft.LeaderObservation:
		// raft also reports the leader becoming unknown (an election
		// starting, a leader stepping down): that is no new leader.
		if d.LeaderID != "" {
			m.leaderChanges.Inc()
		}
	case raft.PeerObservation:
		change := "added"
		if d.Removed {
			change = "removed"
		}
		m.peerChanges.WithLabelValues(change).Inc()
	case raft.FailedHeartbeatObservation:
		m.heartbeatFailures.WithLabelValues(string(d.PeerID)).Inc()
	}
}

// observed reports whether the observer wants o (raft filters before
// queueing, so other kinds never take buffer space).
func observed(o *raft.Observation) bool {
	switch o.Data.(type) {
	case raft.LeaderObservation, raft.PeerObservation, raft.FailedHeartbeatObservation:
		return true
	}
	return false
}

// resolved records a proposal started at start whose future resolved with
// err (nil: committed and applied).
func (m *nodeMetrics) resolved(op string, h prometheus.Histogram, start time.Time, err error) {
	if err != nil {
		m.commitFailures.WithLabelValues(op).Inc()
		return
	}
	h.Observe(time.Since(start).Seconds())
}

// startMetrics registers the node's observer with raft and starts the
// goroutine that counts its observations. Open calls it before the
// member can win an election (an election takes at least a follower
// timeout), so the first leader is counted.
func (n *Node) startMetrics() {
	m := newNodeMetrics(time.Now())
	ch := make(chan raft.Observation, observationBuffer)
	m.obs = raft.NewObserver(ch, false, observed)
	m.stop, m.done = make(chan struct{}), make(chan struct{})
	n.met = m
	n.raft.RegisterObserver(m.obs)
	go func() {
		defer close(m.done)
		for {
			select {
			case o := <-ch:
				m.record(o)
			case <-m.stop:
				return
			}
		}
	}()
}

// stopMetrics deregisters the observer and stops its goroutine (once;
// the metrics stay readable).
func (n *Node) stopMetrics() {
	m := n.met
	m.stopOnce.Do(func() {
		n.raft.DeregisterObserver(m.obs)
		close(m.stop)
		<-m.done
	})
}

// Collector exposes a Node's raft state and counters as Prometheus
// metrics (ferry_raft_*). The gauges are read from raft at scrape time;
// it may be scraped after the node is closed (state "shutdown").
type Collector struct {
	n *Node

	state, term, commitIndex, appliedIndex, lastIndex, lastContact *prometheus.Desc
	members, fsmPending, dropped                                   *prometheus.Desc
}

// raftStates are the state label's values, every one exported (1 for
// the current state, 0 for the others) so that a query for a state
// never finds no series.
var raftStates = []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown}

// NewCollector returns a collector for n.
func NewCollector(n *Node) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("ferry_raft_"+name, help, labels, nil)
	}
	return &Collector{
		n:            n,
		state:        d("state", "This member's raft role: 1 for the current state (follower, candidate, leader, shutdown), 0 for the others.", "state"),
		term:         d("term", "The current raft term (it grows with every election)."),
		commitIndex:  d("commit_index", "The last log index this member knows committed."),
		appliedIndex: d("applied_index", "The last log index applied to this member's store."),
		lastIndex:    d("last_log_index", "The last index in this member's log (or its latest snapshot)."),
		lastContact: d("last_contact_seconds", "Seconds since this member last heard from a leader: 0 on the leader, "+
			"since the node started if it never heard from one. Above the election timeout (1 s) a follower is cut off."),
		members:    d("members", "Members in the latest configuration, by suffrage (voter, nonvoter).", "suffrage"),
		fsmPending: d("fsm_pending", "Committed batches waiting for the FSM to apply them (a slow store shows here)."),
		dropped:    d("observations_dropped_total", "raft observations (leader changes, peer changes, failed heartbeats) not counted because the node's observer lagged."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.term, c.commitIndex, c.appliedIndex, c.lastIndex,
		c.lastContact, c.members, c.fsmPending, c.dropped} {
		ch <- d
	}
	for _, m := range c.n.met.collectors() {
		m.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	r, m := c.n.raft, c.n.met
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	state := r.State()
	for _, s := range raftStates {
		v := 0.0
		if s == state {
			v = 1
		}
		gauge(c.state, v, stateLabel(s))
	}
	gauge(c.term, float64(r.CurrentTerm()))
	gauge(c.commitIndex, float64(r.CommitIndex()))
	gauge(c.appliedIndex, float64(r.AppliedIndex()))
	gauge(c.lastIndex, float64(r.LastIndex()))
	gauge(c.lastContact, lastContactAge(state, r.LastContact(), m.opened, time.Now()).Seconds())
	// GetConfiguration answers from raft's latest configuration without
	// waiting for its main loop, so a scrape never blocks on raft.
	var voters, nonvoters int
	if f := r.GetConfiguration(); f.Error() == nil {
		voters, nonvoters = countSuffrage(f.Configuration().Servers)
	}
	gauge(c.members, float64(voters), "voter")
	gauge(c.members, float64(nonvoters), "nonvoter")
	// raft exposes the FSM queue's length only in Stats.
	if p, err := strconv.ParseUint(r.Stats()["fsm_pending"], 10, 64); err == nil {
		gauge(c.fsmPending, float64(p))
	}
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(m.obs.GetNumDropped()))
	for _, col := range m.collectors() {
		col.Collect(ch)
	}
}

func (m *nodeMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.leaderChanges, m.peerChanges, m.heartbeatFailures, m.apply, m.barrier, m.commitFailures}
}

// stateLabel is a raft state's label value (raft's String is
// capitalised: "Leader").
func stateLabel(s raft.RaftState) string {
	switch s {
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	case raft.Leader:
		return "leader"
	case raft.Shutdown:
		return "shutdown"
	}
	return "unknown"
}

// lastContactAge is how long a member in state has been without its
// leader at now: nothing for the leader itself (raft's LastContact is
// a follower's record, stale on a leader), since opened for a member
// that never heard from one (a member cut off since its start must not
// look healthy).
func lastContactAge(state raft.RaftState, last, opened, now time.Time) time.Duration {
	switch {
	case state == raft.Leader:
		return 0
	case last.IsZero():
		return max(now.Sub(opened), 0)
	default:
		return max(now.Sub(last), 0)
	}
}

// countSuffrage counts a configuration's voters and the others
// (nonvoters; raft's Staging is unused and counted with them: it does
// not vote).
func countSuffrage(servers []raft.Server) (voters, nonvoters int) {
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		} else {
			nonvoters++
		}
	}
	return voters, nonvoters
}
