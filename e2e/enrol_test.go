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

// TestRevokeDuringMigration: revoking the destination's agent in the
// middle of a transfer cancels the migration through the orchestrator
// (audited by the MMC) rather than leaving it to break: it ends
// cancelled, promptly, with the VM running on the source.
func TestRevokeDuringMigration(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startSites(t)
	if err := c.ctl(nil, "vms", "create", "vm", "--host", "h1", "--memory", "64MiB", "--workload", "fill=1,dirty=1MB/s"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("vm running on h1", func() bool { return c.vmState("h1", "vm") == "running" })
	if err := c.ctl(nil, "migrate", "vm", "--to", "h2", "--max-bandwidth", "40mbit"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("a fifth transferred", func() bool {
		var ms []migrationView
		c.ctl(&ms, "migrations", "list")
		return len(ms) == 1 && ms[0].State == "transferring" && ms[0].Progress > 0.2
	})
	h2, _ := c.agent("h2")
	start := time.Now()
	if err := c.ctl(nil, "agents", "revoke", h2.ID); err != nil {
		t.Fatal(err)
	}
	var m migrationView
	c.waitForUpTo(30*time.Second, "the migration's outcome", func() bool {
		var ms []migrationView
		if c.ctl(&ms, "migrations", "list") != nil || len(ms) != 1 {
			return false
		}
		m = ms[0]
		return m.State == "completed" || m.State == "failed" || m.State == "cancelled"
	})
	t.Logf("migration %s %v after the revocation: %s", m.State, time.Since(start).Round(100*time.Millisecond), m.Error)
	if m.State != "cancelled" {
		t.Fatalf("outcome %s (%s), want cancelled", m.State, m.Error)
	}
	c.waitFor("vm running on h1", func() bool { return c.vmState("h1", "vm") == "running" })
	n := 0
	for _, e := range c.audit() {
		if e.Action == "migration.cancel" && e.Actor == "mmc" && e.Outcome == "ok" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d migration.cancel audit entries by the MMC, want 1", n)
	}
}
