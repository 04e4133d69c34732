package replica

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sample is one series of a scrape: a gauge's or counter's value, a
// histogram's sample count and sum.
type sample struct {
	value float64
	count uint64
	sum   float64
}

// scrape collects n's Collector through a pedantic registry (which also
// fails on a metric Collect sends but Describe did not declare) and
// returns its series keyed by name{label="value",…} in label order.
func scrape(t *testing.T, n *Node) map[string]sample {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(n)); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]sample{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := f.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			var s sample
			switch {
			case m.GetHistogram() != nil:
				s.count, s.sum = m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			case m.GetCounter() != nil:
				s.value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.value = m.GetGauge().GetValue()
			}
			out[key] = s
		}
	}
	return out
}

// stateOf is the state label whose ferry_raft_state is 1; every other
// state must be exported as 0.
func stateOf(t *testing.T, s map[string]sample) string {
	t.Helper()
	var on []string
	for _, st := range raftStates {
		v, ok := s[`ferry_raft_state{state="`+stateLabel(st)+`"}`]
		if !ok {
			t.Fatalf("no ferry_raft_state for %s", stateLabel(st))
		}
		switch v.value {
		case 1:
			on = append(on, stateLabel(st))
		case 0:
		default:
			t.Fatalf("ferry_raft_state{%s} = %v", stateLabel(st), v.value)
		}
	}
	if len(on) != 1 {
		t.Fatalf("ferry_raft_state is 1 for %v, want exactly one state", on)
	}
	return on[0]
}

// Raft's observations, counted: a known new leader is a change, the
// leader becoming unknown (an election starting) is not; peers by
// change; failed heartbeats by peer; other kinds are filtered out
// before raft queues them.
func TestRecordObservations(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		data                   any
		want                   bool
		leaders, added, remove float64
		failedB                float64
	}{
		{"new leader", raft.LeaderObservation{LeaderID: "b", LeaderAddr: "b"}, true, 1, 0, 0, 0},
		{"leader unknown", raft.LeaderObservation{}, true, 0, 0, 0, 0},
		{"peer added", raft.PeerObservation{Peer: raft.Server{ID: "b"}}, true, 0, 1, 0, 0},
		{"peer removed", raft.PeerObservation{Removed: true, Peer: raft.Server{ID: "b"}}, true, 0, 0, 1, 0},
		{"failed heartbeat", raft.FailedHeartbeatObservation{PeerID: "b"}, true, 0, 0, 0, 1},
		{"resumed heartbeat", raft.ResumedHeartbeatObservation{PeerID: "b"}, false, 0, 0, 0, 0},
		{"vote request", raft.RequestVoteRequest{}, false, 0, 0, 0, 0},
		{"state", raft.Candidate, false, 0, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := raft.Observation{Data: tc.data}
			if got := observed(&o); got != tc.want {
				t.Fatalf("observed = %v, want %v", got, tc.want)
			}
			m := newNodeMetrics(time.Now())
			m.record(o)
			for _, c := range []struct {
				what      string
				got, want float64
			}{
				{"leader changes", testutil.ToFloat64(m.leaderChanges), tc.leaders},
				{"peers added", testutil.ToFloat64(m.peerChanges.WithLabelValues("added")), tc.added},
				{"peers removed", testutil.ToFloat64(m.peerChanges.WithLabelValues("removed")), tc.remove},
				{"heartbeat failures to b", testutil.ToFloat64(m.heartbeatFailures.WithLabelValues("b")), tc.failedB},
			} {
				if c.got != c.want {
					t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
				}
			}
		})
	}
}

// A resolved proposal is timed; a failed one is counted, not timed.
func TestResolvedProposal(t *testing.T) {
	m := newNodeMetrics(time.Now())
	m.resolved("apply", m.apply, time.Now().Add(-20*time.Millisecond), nil)
	m.resolved("apply", m.apply, time.Now(), raft.ErrLeadershipLost)
	m.resolved("barrier", m.barrier, time.Now(), errors.New("timed out"))
	if got := testutil.ToFloat64(m.commitFailures.WithLabelValues("apply")); got != 1 {
		t.Errorf("apply failures %v", got)
	}
	if got := testutil.ToFloat64(m.commitFailures.WithLabelValues("barrier")); got != 1 {
		t.Errorf("barrier failures %v", got)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.apply, m.barrier)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		h := f.GetMetric()[0].GetHistogram()
		want := map[string]uint64{"ferry_raft_apply_duration_seconds": 1, "ferry_raft_barrier_duration_seconds": 0}[f.GetName()]
		if h.GetSampleCount() != want {
			t.Errorf("%s: %d samples, want %d", f.GetName(), h.GetSampleCount(), want)
		}
		if f.GetName() == "ferry_raft_apply_duration_seconds" && h.GetSampleSum() < 0.02 {
			t.Errorf("apply duration %v s, want ≥ 20 ms", h.GetSampleSum())
		}
	}
}

func TestLastContactAge(t *testing.T) {
	opened := time.Unix(1000, 0)
	now := opened.Add(10 * time.Second)
	for _, tc := range []struct {
		name  string
		state raft.RaftState
		last  time.Time
		want  time.Duration
	}{
		{"leader", raft.Leader, opened.Add(time.Second), 0},
		{"leader that never followed", raft.Leader, time.Time{}, 0},
		{"follower", raft.Follower, now.Add(-300 * time.Millisecond), 300 * time.Millisecond},
		{"candidate", raft.Candidate, now.Add(-4 * time.Second), 4 * time.Second},
		{"never heard from a leader", raft.Follower, time.Time{}, 10 * time.Second},
		{"shut down", raft.Shutdown, now.Add(-time.Second), time.Second},
		{"clock behind", raft.Follower, now.Add(time.Second), 0},
	} {
		if got := lastContactAge(tc.state, tc.last, opened, now); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCountSuffrage(t *testing.T) {
	v, nv := countSuffrage([]raft.Server{{Suffrage: raft.Voter}, {Suffrage: raft.Nonvoter}, {Suffrage: raft.Voter}, {Suffrage: raft.Staging}})
	if v != 2 || nv != 2 {
		t.Fatalf("voters %d, nonvoters %d", v, nv)
	}
}

// The raft metrics of a three-member cluster through a failover: the
// state gauge is 1 on each member's role only; commits are timed on the
// leader; followers hear from the leader often; killing the leader is
// a leader change on the survivors and failed heartbeats on the new
// leader; a member left without a majority shows its last contact
// growing; a closed node still scrapes (as shut down).
func TestRaftMetricsCluster(t *testing.T) {
	ctx := ctxT(t)
	ic := &inmemCluster{trans: map[raft.ServerAddress]*raft.InmemTransport{}}
	ms := newMembers(t, 3)
	for i, m := range ms {
		m.start(ic.transport(raft.ServerAddress(m.id)), i > 0)
	}
	l := leader(t, ms)
	for _, m := range ms[1:] {
		if err := l.node.AddVoter(ctx, m.id, raft.ServerAddress(m.id)); err != nil {
			t.Fatal(err)
		}
	}
	const applies, barriers = 5, 2
	for i := range applies {
		if _, err := l.node.Apply(ctx, policy(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	for range barriers {
		if err := l.node.Barrier(ctx); err != nil {
			t.Fatal(err)
		}
	}
	converge(t, l, ms)

	// raft observes on its own goroutines; the node's counts them on
	// another.
	waitFor(t, "the leader counting its two peers", 5*time.Second, func() bool {
		return scrape(t, l.node)[`ferry_raft_peer_changes_total{change="added"}`].value >= 2
	})
	s := scrape(t, l.node)
	if st := stateOf(t, s); st != "leader" {
		t.Fatalf("the leader's state gauge says %s", st)
	}
	for name, want := range map[string]sample{
		"ferry_raft_apply_duration_seconds":             {count: applies},
		"ferry_raft_barrier_duration_seconds":           {count: barriers},
		`ferry_raft_members{suffrage="voter"}`:          {value: 3},
		`ferry_raft_members{suffrage="nonvoter"}`:       {value: 0},
		"ferry_raft_last_contact_seconds":               {value: 0},
		"ferry_raft_leader_changes_total":               {value: 1}, // itself
		`ferry_raft_peer_changes_total{change="added"}`: {value: 2},
	} {
		if got := s[name]; got.value != want.value || got.count != want.count {
			t.Errorf("leader: %s = %+v, want %+v", name, got, want)
		}
	}
	if h := s["ferry_raft_apply_duration_seconds"]; h.count > 0 {
		t.Logf("commit latency on the in-memory transport: mean %v over %d applies", time.Duration(h.sum/float64(h.count)*1e9), h.count)
	}
	if s["ferry_raft_commit_index"].value < applies || s["ferry_raft_applied_index"] != s["ferry_raft_commit_index"] ||
		s["ferry_raft_last_log_index"] != s["ferry_raft_commit_index"] || s["ferry_raft_term"].value < 1 {
		t.Errorf("leader's indexes: %+v", s)
	}

	followers := []*member{}
	for _, m := range ms {
		if m != l {
			followers = append(followers, m)
		}
	}
	before := map[raft.ServerID]float64{}
	for _, f := range followers {
		s := scrape(t, f.node)
		if st := stateOf(t, s); st != "follower" {
			t.Fatalf("%s's state gauge says %s", f.id, st)
		}
		if got := s["ferry_raft_apply_duration_seconds"].count; got != 0 {
			t.Errorf("%s timed %d applies it did not propose", f.id, got)
		}
		// The leader heartbeats every tenth of the heartbeat timeout: a
		// follower past the timeout would have started an election.
		if lc := s["ferry_raft_last_contact_seconds"].value; lc <= 0 || lc >= 0.5 {
			t.Errorf("%s: last contact %v s with a live leader", f.id, lc)
		}
		before[f.id] = s["ferry_raft_leader_changes_total"].value
		if before[f.id] < 1 {
			t.Errorf("%s counted no leader", f.id)
		}
	}

	// Kill the leader: each survivor learns of a new leader.
	old := l
	oldNode := old.node
	old.stop()
	ic.trans[raft.ServerAddress(old.id)].DisconnectAll()
	l = leader(t, followers)
	for _, f := range followers {
		waitFor(t, string(f.id)+" counting the new leader", 5*time.Second, func() bool {
			return scrape(t, f.node)["ferry_raft_leader_changes_total"].value > before[f.id]
		})
	}
	// The new leader keeps trying the killed member.
	waitFor(t, "failed heartbeats to the killed leader", 5*time.Second, func() bool {
		return scrape(t, l.node)[`ferry_raft_heartbeat_failures_total{peer="`+string(old.id)+`"}`].value > 0
	})
	var last *member
	for _, f := range followers {
		if f != l {
			last = f
		}
	}
	waitFor(t, "the other survivor following", 5*time.Second, func() bool { return last.node.State() == raft.Follower })
	if st := stateOf(t, scrape(t, l.node)); st != "leader" {
		t.Fatalf("the new leader's state gauge says %s", st)
	}
	if st := stateOf(t, scrape(t, last.node)); st != "follower" {
		t.Fatalf("the survivor's state gauge says %s", st)
	}
	// The killed member's observer goroutine ended with it, and its
	// node still scrapes.
	select {
	case <-oldNode.met.done:
	default:
		t.Fatal("the closed node's observer goroutine still runs")
	}
	if st := stateOf(t, scrape(t, oldNode)); st != "shutdown" {
		t.Fatalf("the closed node's state gauge says %s", st)
	}

	// Kill the new leader too: the last member cannot win an election
	// alone, and its last contact grows past the election timeout.
	first := scrape(t, last.node)["ferry_raft_last_contact_seconds"].value
	if first >= 0.5 {
		t.Fatalf("last contact %v s with a live leader", first)
	}
	l.stop()
	ic.trans[raft.ServerAddress(l.id)].DisconnectAll()
	waitFor(t, "last contact past the election timeout", 10*time.Second, func() bool {
		return scrape(t, last.node)["ferry_raft_last_contact_seconds"].value > 1
	})
	s = scrape(t, last.node)
	if st := stateOf(t, s); st == "leader" {
		t.Fatal("a member without a majority leads")
	}
	if got := s["ferry_raft_last_contact_seconds"].value; got <= first {
		t.Fatalf("last contact went from %v to %v s", first, got)
	}
}
