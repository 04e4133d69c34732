package e2e

import (
	"testing"
	"time"
)

// TestEvacuationLeaderLoss: the MMC leader is killed while an evacuation
// runs (one VM moved, the second transferring, the third queued). The new
// leader picks the group up from its replicated record: the VM in flight
// reaches an outcome, the queued one is moved by the new leader, no VM
// is migrated twice, and each runs once.
func TestEvacuationLeaderLoss(t *testing.T) {
	c := newHACluster(t)
	c.startTwoHosts(t)
	// Sizes set the order (smallest first): e1, e2, e3.
	for name, mem := range map[string]string{"e1": "16MiB", "e2": "24MiB", "e3": "32MiB"} {
		if err := c.ctl(0, nil, "vms", "create", name, "--host", "h1", "--memory", mem, "--workload", "fill=1,cpu=0.02"); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor(30*time.Second, "the VMs running on h1", func() bool {
		for _, v := range []string{"e1", "e2", "e3"} {
			if n, on := c.runningCopies(v); n != 1 || on[0] != "h1" {
				return false
			}
		}
		return true
	})
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(0, &created, "hosts", "evacuate", "h1", "--to", "h2", "--max-bandwidth", "30mbit"); err != nil {
		t.Fatal(err)
	}
	var g evacuationView
	c.waitFor(60*time.Second, "e1 moved and e2 on its way", func() bool {
		if c.ctlAny(&g, "evacuations", "get", created.ID) != nil {
			return false
		}
		return g.Completed == 1 && g.Running == 1 && g.Queued == 1
	})
	lost := c.leader(0)
	if lost < 0 {
		lost = c.leader(1)
	}
	if lost < 0 {
		t.Fatal("no leader")
	}
	c.kill(lost)
	c.waitFor(120*time.Second, "the evacuation's end", func() bool {
		return c.ctlAny(&g, "evacuations", "get", created.ID) == nil && g.State != "running"
	})
	t.Logf("leader mmc%d killed: evacuation %s, %d moved, %d not moved", lost+1, g.State, g.Completed, g.Failed)
	byVM := map[string]string{}
	seen := map[string]bool{}
	for _, it := range g.Items {
		byVM[it.VM] = it.State
		if it.Migration == "" || seen[it.Migration] {
			t.Errorf("item %+v: want its own migration", it)
		}
		seen[it.Migration] = true
	}
	if byVM["e1"] != "completed" || byVM["e3"] != "completed" {
		t.Fatalf("items %v: e1 (moved before) and e3 (queued at the kill, started by the new leader) must be completed", byVM)
	}
	var ms []migrationView
	if err := c.ctlAny(&ms, "migrations", "list"); err != nil || len(ms) != 3 {
		t.Fatalf("%d migrations (%v), want 3: none started twice", len(ms), err)
	}
	for _, v := range []string{"e1", "e2", "e3"} {
		home := "h2"
		if byVM[v] != "completed" {
			home = "h1"
		}
		c.waitFor(30*time.Second, v+" running on "+home+" only", func() bool {
			n, on := c.runningCopies(v)
			return n == 1 && on[0] == home
		})
	}
}
