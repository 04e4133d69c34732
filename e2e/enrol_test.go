package e2e

import (
	"testing"
	"time"
)

// TestPendingEnrolmentExpires: across real processes, a pending agent's
// enrolment session ends after --enrol-wait and the agent asks again
// with its backoff; a pending record nobody decides on expires after
// --pending-ttl (audited, counted); the agent, still running, enrols
// afresh, and that enrolment can be approved.
func TestPendingEnrolmentExpires(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "--pending-ttl", "4s", "--enrol-wait", "1s")
	start := time.Now()
	c.startAgent("host1")
	var pending []agentView
	c.waitFor("a pending enrolment", func() bool {
		if err := c.ctl(&pending, "agents", "pending"); err != nil {
			t.Fatal(err)
		}
		return len(pending) == 1
	})
	id := pending[0].ID
	c.waitFor("the pending enrolment to expire", func() bool { return c.countAudit("agent.expire", "ok") >= 1 })
	t.Logf("expired %v after the agent started", time.Since(start).Round(100*time.Millisecond))
	if v := c.metric("ferry_mmc_pending_expired_total"); v < 1 {
		t.Fatalf("ferry_mmc_pending_expired_total = %v", v)
	}
	if v := c.metricSum("ferry_mmc_handshakes_refused_total"); v < 1 {
		t.Fatalf("no refusal counted (pending-wait): %v", v)
	}
	// The agent comes back on its own and enrols again (same key, new
	// record), which an administrator can approve.
	c.waitFor("a second enrolment request", func() bool { return c.countAudit("enrol.request", "ok") >= 2 })
	c.waitFor("the new pending record", func() bool {
		a, ok := c.agent("host1")
		return ok && a.State == "pending" && a.ID == id
	})
	if err := c.ctl(nil, "agents", "approve", id); err != nil {
		t.Fatal(err)
	}
	c.waitFor("agent online", func() bool { a, _ := c.agent("host1"); return a.Online })
}
