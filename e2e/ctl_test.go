package e2e

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCtlGetAndCompletion: `get` shows one agent, host, VM or migration
// (JSON: the object; table: every field), a name nobody holds fails with
// status 1 and says so, and the shell completion offers the names the
// MMC holds.
func TestCtlGetAndCompletion(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startSites(t)
	if err := c.ctl(nil, "vms", "create", "web", "--host", "h1", "--memory", "16MiB"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("web running", func() bool { return c.vmState("h1", "web") == "running" })
	var created struct{ ID string }
	if err := c.ctl(&created, "migrate", "web", "--to", "h2"); err != nil {
		t.Fatal(err)
	}
	if m, err := c.watch(created.ID); err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}

	var agent struct{ ID, Name, State string }
	if err := c.ctl(&agent, "agents", "get", "h1"); err != nil || agent.Name != "h1" || agent.State != "approved" || agent.ID == "" {
		t.Fatalf("agents get h1: %+v %v", agent, err)
	}
	var byID struct{ Name string }
	if err := c.ctl(&byID, "agents", "get", agent.ID); err != nil || byID.Name != "h1" {
		t.Fatalf("agents get %s: %+v %v", agent.ID, byID, err)
	}
	var host struct {
		ID, Site string
		Online   bool
	}
	if err := c.ctl(&host, "hosts", "get", "h2"); err != nil || host.ID != "h2" || host.Site != "west" || !host.Online {
		t.Fatalf("hosts get h2: %+v %v", host, err)
	}
	var vm struct{ ID, Host, State string }
	if err := c.ctl(&vm, "vms", "get", "web"); err != nil || vm.Host != "h2" || vm.State != "running" {
		t.Fatalf("vms get web: %+v %v", vm, err)
	}
	var mig migrationView
	if err := c.ctl(&mig, "migrations", "get", created.ID); err != nil || mig.State != "completed" || mig.VM != "web" {
		t.Fatalf("migrations get: %+v %v", mig, err)
	}
	var out strings.Builder
	if err := c.ctlText(&out, "migrations", "get", created.ID); err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"state", "completed", "paused_at", "resumed_at", "total_ms", "downtime_ms"} {
		if !strings.Contains(out.String(), field) {
			t.Errorf("migrations get (table) lacks %q:\n%s", field, out.String())
		}
	}
	// The report names preparation beside transfer and switch-over.
	var timed struct {
		PrepareMS int64 `json:"prepare_ms"`
		TotalMS   int64 `json:"total_ms"`
	}
	if err := c.ctl(&timed, "migrations", "get", created.ID); err != nil || timed.PrepareMS <= 0 || timed.TotalMS <= 0 {
		t.Fatalf("prepare_ms %d, total_ms %d: %v", timed.PrepareMS, timed.TotalMS, err)
	}
	out.Reset()
	if err := c.ctlText(&out, "migrations", "watch", created.ID); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"preparation:", "transfer:", "switch-over:", "with preparation"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("migrations watch's report lacks %q:\n%s", line, out.String())
		}
	}
	if err := c.ctl(nil, "vms", "get", "nope"); err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(err.Error(), `no vm named "nope"`) {
		t.Fatalf("vms get nope: %v", err)
	}

	complete := func(args ...string) []string {
		t.Helper()
		full := append([]string{"__complete", "ctl", "--admin", "http://" + c.admin, "--token-file", filepath.Join(c.dir, "admin.token")}, args...)
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(ferryBin, full...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("completing %v: %v: %s", args, err, stderr.String())
		}
		var names []string
		for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
			// The last line is cobra's directive; a required flag (--to)
			// is offered beside the names.
			if !strings.HasPrefix(l, ":") && !strings.HasPrefix(l, "-") {
				names = append(names, l)
			}
		}
		return names
	}
	if got := complete("migrate", ""); !slices.Equal(got, []string{"web"}) {
		t.Errorf("completing migrate VM: %q", got)
	}
	if got := complete("migrate", "web", "--to", ""); !slices.Equal(got, []string{"h1", "h2"}) {
		t.Errorf("completing --to: %q", got)
	}
	if got := complete("migrations", "get", ""); !slices.Equal(got, []string{created.ID}) {
		t.Errorf("completing a migration id: %q", got)
	}
	if got := complete("agents", "get", ""); len(got) != 2 || !slices.Contains(got, agent.ID) {
		t.Errorf("completing an agent id: %q", got)
	}
	if got := complete("hosts", "get", "h"); len(got) != 2 {
		t.Errorf("completing a host: %q", got)
	}
}
