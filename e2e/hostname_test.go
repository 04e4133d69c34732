package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostNameTaken: host names are unique. Agent A enrols as h1 with a
// join token and comes online; agent B (its own key, disk and MAC)
// enrols under the same name with a join token too. B is refused, never
// merged: it is not approved and not online, its log says why, the
// administrator sees why (the refusal on its record in `agents list`, a
// host-name-taken alarm, an audit entry; an approval by hand is refused
// too), `hosts list` still shows one h1, A's, and a VM created on h1
// runs on A.
func TestHostNameTaken(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	c.startAgent("h1", "--token", tok.Token, "--report-interval", "300ms")
	t.Cleanup(func() { c.destroyVMs(t) })
	var aID string
	c.waitFor("A online as h1", func() bool { a, ok := c.agent("h1"); aID = a.ID; return ok && a.Online })

	bDir := filepath.Join(t.TempDir(), "impostor")
	c.agentDirs["impostor"] = bDir // its VMs (there must be none) are removed too
	b := startCmd(t, "agent impostor", ferryIn("", "agent", "--data-dir", bDir, "--bundle", c.bundle, "--name", "h1", "--token", tok.Token,
		"--disk-id", "disk-impostor", "--macs", "02:00:00:00:00:99", "--report-interval", "300ms", "--time-sync-interval", "1s"))
	if !b.exited(30 * time.Second) {
		t.Fatal("agent B, refused its name, kept running")
	}
	if !strings.Contains(b.log(), "h1") || !strings.Contains(b.log(), "is held by another agent, so this agent is not approved") {
		t.Fatalf("agent B's log does not say why it was refused:\n%s", b.log())
	}

	type agent struct {
		ID      string `json:"id"`
		Name    string `json:"name"`
		State   string `json:"state"`
		Online  bool   `json:"online"`
		Refusal string `json:"refusal"`
		Facts   struct {
			DiskID string `json:"disk_id"`
		} `json:"facts"`
	}
	var agents []agent
	if err := c.ctl(&agents, "agents", "list"); err != nil {
		t.Fatal(err)
	}
	var bRec agent
	for _, a := range agents {
		switch {
		case a.ID == aID && (a.State != "approved" || !a.Online || a.Refusal != "" || a.Facts.DiskID != "disk-h1"):
			t.Errorf("A: %+v", a)
		case a.ID != aID:
			bRec = a
		}
	}
	if len(agents) != 2 || bRec.Name != "h1" || bRec.Facts.DiskID != "disk-impostor" {
		t.Fatalf("agents %+v", agents)
	}
	if bRec.State == "approved" || bRec.Online {
		t.Fatalf("B was let in: %+v", bRec)
	}
	if !strings.Contains(bRec.Refusal, `host name "h1" is held by approved agent `+aID) {
		t.Fatalf("B's record does not say why it is refused: %q", bRec.Refusal)
	}

	type event struct {
		Agent, Host, Kind, Message string
		Alarm                      bool
	}
	var alarms []event
	if err := c.ctl(&alarms, "alarms"); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range alarms {
		found = found || (e.Kind == "host-name-taken" && e.Alarm && e.Agent == bRec.ID && e.Host == "h1" && strings.Contains(e.Message, aID))
	}
	if !found {
		t.Fatalf("no host-name-taken alarm about B in %+v", alarms)
	}
	denied := 0
	for _, e := range c.audit() {
		if e.Action == "agent.approve" && e.Target == bRec.ID && e.Outcome == "denied" && strings.Contains(e.Detail, "host name") {
			denied++
		}
	}
	if denied != 1 {
		t.Fatalf("%d denied approvals of B in the audit log, want 1", denied)
	}
	// An administrator cannot approve B either while A holds h1.
	if err := c.ctl(nil, "agents", "approve", bRec.ID); err == nil || !strings.Contains(err.Error(), "host name") {
		t.Fatalf("approving B by hand: %v", err)
	}

	var hosts []struct {
		ID     string `json:"id"`
		Agent  string `json:"agent"`
		Online bool   `json:"online"`
	}
	if err := c.ctl(&hosts, "hosts", "list"); err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 1 || hosts[0].ID != "h1" || hosts[0].Agent != aID || !hosts[0].Online {
		t.Fatalf("hosts %+v, want one h1 held by %s", hosts, aID)
	}

	if err := c.ctl(nil, "vms", "create", "web1", "--host", "h1", "--memory", "16MiB"); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]int{c.agentDirs["h1"]: 1, bDir: 0} {
		d, err := simDriver(filepath.Join(dir, "vms"))
		if err != nil {
			t.Fatal(err)
		}
		vms, err := d.List(context.Background())
		if err != nil || len(vms) != want || (want == 1 && vms[0].ID != "web1") {
			t.Fatalf("VMs in %s: %+v, %v; want %d", dir, vms, err, want)
		}
	}
}
