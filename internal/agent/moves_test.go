package agent_test

import (
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/agent"
	"github.com/prometheus/client_golang/prometheus"
)

// TestLeaderMovesWithoutBackoff: an agent that was online when the
// leadership moved goes straight to the new leader however often that
// happens. Two members each say, on the agent's standby session, that
// they lead: the agent moves back and forth, one login per move, and
// never pauses. Counted as redirects, the fourth move onwards waited the
// reconnection backoff (0.5–1.5 s, doubling to 5–15 s), which is what a
// cluster that failed over a few times within a minute saw: agents back
// after 12–18 s. The pauses are counted
// (ferry_agent_mmc_reconnect_waits_total), so the check does not depend
// on how fast a loaded machine runs the moves.
func TestLeaderMovesWithoutBackoff(t *testing.T) {
	ag := newEnrolledAgent(t)
	a, b := newFakeMMC(t, ag), newFakeMMC(t, ag)
	am, bm := a.member(), b.member()
	a.standbyLeader.Store(&am)
	b.standbyLeader.Store(&bm)
	stop := ag.run(t, bundleOf(a.ref(), b.ref()), nil)
	defer stop()
	const want, within = 16, 60 * time.Second
	start := time.Now()
	logins := 0
	for logins < want {
		select {
		case <-a.logins:
		case <-b.logins:
		case <-time.After(within - time.Since(start)):
			t.Fatalf("%d logins in %v, want %d", logins, time.Since(start), want)
		}
		logins++
	}
	if n := agentCounter(t, ag.agent, "ferry_agent_mmc_reconnect_waits_total"); n != 0 {
		t.Fatalf("%d pauses before reconnecting in %d leadership moves: the agent waited before following a move", int(n), want)
	}
	t.Logf("%d logins, one per leadership move, in %v", logins, time.Since(start))
}

// TestNoStandby: an agent told to keep no standby session (a load
// generator's) opens none, so a member that says it leads is never
// heard: the agent stays where it logged in.
func TestNoStandby(t *testing.T) {
	ag := newEnrolledAgent(t)
	ag.noStandby = true
	a, b := newFakeMMC(t, ag), newFakeMMC(t, ag)
	am, bm := a.member(), b.member()
	a.standbyLeader.Store(&am)
	b.standbyLeader.Store(&bm)
	stop := ag.run(t, bundleOf(a.ref(), b.ref()), nil)
	defer stop()
	select {
	case <-a.logins:
	case <-b.logins:
	case <-time.After(10 * time.Second):
		t.Fatal("no login")
	}
	select {
	case <-a.logins:
		t.Fatal("the agent moved: it kept a standby session")
	case <-b.logins:
		t.Fatal("the agent moved: it kept a standby session")
	case <-time.After(2 * time.Second):
	}
	if n := agentCounter(t, ag.agent, "ferry_agent_mmc_leader_moves_total"); n != 0 {
		t.Fatalf("%v leadership moves", n)
	}
}

// agentCounter reads the agent's counter name.
func agentCounter(t *testing.T, a *agent.Agent, name string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
