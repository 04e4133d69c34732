package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type hostView struct {
	ID     string  `json:"id"`
	Site   string  `json:"site"`
	Online bool    `json:"online"`
	CPU    float64 `json:"cpu"`
	Mem    float64 `json:"mem"`
	Net    float64 `json:"net"`
	VMs    int     `json:"vms"`
}

type vmView struct {
	ID     string  `json:"id"`
	Host   string  `json:"host"`
	State  string  `json:"state"`
	CPU    float64 `json:"cpu"`
	Mem    float64 `json:"mem"`
	Net    float64 `json:"net"`
	Dirty  float64 `json:"dirty"`
	Memory uint64  `json:"memory"`
}

// TestHostsAndVMs: two agents with the simulated driver report their
// hosts' load; a VM started through `ferry ctl vms create` runs as its own
// process on the named host and shows up with its scripted load; bad
// requests get clear errors; delete removes it.
func TestHostsAndVMs(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	// h1 reports this machine's measured load (--sim-host real); h2, a
	// simulated host by default, only its own VMs' (none yet: zero).
	c.startAgent("h1", "--token", tok.Token, "--site", "site-h1", "--report-interval", "300ms", "--sim-host", "real")
	c.startAgent("h2", "--token", tok.Token, "--site", "site-h2", "--report-interval", "300ms")
	t.Cleanup(func() { c.destroyVMs(t) })
	var hosts []hostView
	c.waitFor("both hosts reporting", func() bool {
		if err := c.ctl(&hosts, "hosts", "list"); err != nil {
			t.Fatal(err)
		}
		return len(hosts) == 2 && hosts[0].Online && hosts[1].Online && hosts[0].Mem > 0
	})
	for _, h := range hosts {
		if h.CPU < 0 || h.CPU > 1 || h.Mem < 0 || h.Mem > 1 || h.Site != "site-"+h.ID {
			t.Fatalf("host %+v", h)
		}
		if h.ID == "h2" && (h.CPU != 0 || h.Mem != 0) {
			t.Fatalf("h2 without VMs reports %+v: the machine's load, not its own VMs'", h)
		}
	}
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&created, "vms", "create", "web1", "--host", "h1", "--memory", "32MiB", "--workload", "cpu=0.2,dirty=2MB/s,net=1MB/s"); err != nil {
		t.Fatal(err)
	}
	if created.ID != "web1" {
		t.Fatalf("created %+v", created)
	}
	var vms []vmView
	c.waitFor("web1 reporting its load", func() bool {
		if err := c.ctl(&vms, "vms", "list"); err != nil {
			t.Fatal(err)
		}
		return len(vms) == 1 && vms[0].Dirty > 1e6
	})
	v := vms[0]
	if v.ID != "web1" || v.Host != "h1" || v.State != "running" || v.Memory != 32<<20 || v.Net < 0.5e6 || v.Mem <= 0 {
		t.Fatalf("vm %+v", v)
	}
	// The same load in Prometheus's terms.
	if n := c.metric(`ferry_mmc_host_online{host="h2",site="site-h2"}`); n != 1 {
		t.Errorf("ferry_mmc_host_online for h2: %v", n)
	}
	if d := c.metric(`ferry_mmc_vm_dirty_bytes_per_second{host="h1",vm="web1"}`); d < 1e6 {
		t.Errorf("ferry_mmc_vm_dirty_bytes_per_second for web1: %v, want ≈ 2e6", d)
	}
	for _, bad := range [][]string{
		{"vms", "create", "web1", "--host", "h2"},                     // name taken
		{"vms", "create", "x", "--host", "nowhere"},                   // unknown host
		{"vms", "create", "../x", "--host", "h1"},                     // bad name
		{"vms", "create", "y", "--host", "h1", "--workload", "cpu=3"}, // bad workload
		{"vms", "delete", "ghost"},
	} {
		if err := c.ctl(nil, bad...); err == nil {
			t.Errorf("ferry ctl %s succeeded", strings.Join(bad, " "))
		}
	}
	if err := c.ctl(nil, "vms", "delete", "web1"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("web1 gone", func() bool {
		if err := c.ctl(&vms, "vms", "list"); err != nil {
			t.Fatal(err)
		}
		return len(vms) == 0
	})
}

// destroyVMs removes every simulated VM the cluster's agents left (they are
// detached processes and would outlive the test).
func (c *cluster) destroyVMs(t testing.TB) {
	for _, dir := range c.agentDirs {
		d, err := simDriver(filepath.Join(dir, "vms"))
		if err != nil {
			continue
		}
		vms, _ := d.List(context.Background())
		for _, vm := range vms {
			d.Destroy(context.Background(), vm.ID)
		}
	}
}

// TestPolicyDryRun: a versioned policy set through ferry ctl; a VM whose
// network traffic stays above Up for the window gets a recommendation to
// move to the other host, with its reason, and — dry-run — stays put.
func TestPolicyDryRun(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "--policy-interval", "500ms")
	c.startHosts(t, "h1", "h2")
	pf := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(pf, []byte(`{"mode":"dry-run","window":"2s","sla":{"net_up":5e6},"host_cpu_max":1,"host_mem_max":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var pol struct {
		Version uint64 `json:"version"`
		Mode    string `json:"mode"`
	}
	if err := c.ctl(&pol, "policy", "set", pf); err != nil {
		t.Fatal(err)
	}
	if pol.Version != 1 || pol.Mode != "dry-run" {
		t.Fatalf("policy after set: %+v", pol)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"mode":"yolo"}`), 0o600)
	if err := c.ctl(nil, "policy", "set", bad); err == nil {
		t.Fatal("invalid policy accepted")
	}
	if err := c.ctl(nil, "vms", "create", "chatty", "--host", "h1", "--memory", "16MiB", "--workload", "net=20MB/s"); err != nil {
		t.Fatal(err)
	}
	type decision struct {
		VM, From, To, Reason, Mode, Action string
	}
	var ds []decision
	c.waitFor("a recommendation", func() bool {
		if err := c.ctl(&ds, "policy", "decisions"); err != nil {
			t.Fatal(err)
		}
		return len(ds) > 0
	})
	d := ds[0]
	if d.VM != "chatty" || d.From != "h1" || d.To != "h2" || d.Mode != "dry-run" || d.Action != "recommended" || !strings.Contains(d.Reason, "above Up") {
		t.Fatalf("decision %+v", d)
	}
	var vms []vmView
	if err := c.ctl(&vms, "vms", "list"); err != nil || len(vms) != 1 || vms[0].Host != "h1" {
		t.Fatalf("dry-run moved the VM: %+v %v", vms, err)
	}
	if c.countAudit("policy.set", "ok") != 1 || c.countAudit("policy.decision", "ok") < 1 {
		t.Fatal("policy change or decision not audited")
	}
}

// TestAlarmsSurviveMMCOutage: a VM process dies while the MMC is down; the
// agent raises the alarm, keeps it, and delivers it once the MMC is back,
// where `ferry ctl alarms` shows it; the policy version reaches the agent.
func TestAlarmsSurviveMMCOutage(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create"); err != nil {
		t.Fatal(err)
	}
	c.startAgent("h1", "--token", tok.Token, "--report-interval", "300ms")
	t.Cleanup(func() { c.destroyVMs(t) })
	c.waitFor("h1 online", func() bool { a, _ := c.agent("h1"); return a.Online })
	if err := c.ctl(nil, "vms", "create", "doomed", "--host", "h1", "--memory", "16MiB"); err != nil {
		t.Fatal(err)
	}
	d, err := simDriver(filepath.Join(c.agentDirs["h1"], "vms"))
	if err != nil {
		t.Fatal(err)
	}
	vms, _ := d.List(context.Background())
	if len(vms) != 1 || vms[0].PID == 0 {
		t.Fatalf("driver sees %+v", vms)
	}

	c.mmc.stop()
	if err := syscall.Kill(vms[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the agent notices while the MMC is down
	c.startMMC()

	type event struct {
		Host, Kind, Message, Level string
		Alarm                      bool
	}
	var alarms []event
	c.waitFor("the alarm at the MMC", func() bool {
		if err := c.ctl(&alarms, "alarms"); err != nil {
			t.Fatal(err)
		}
		return len(alarms) > 0
	})
	a := alarms[0]
	if a.Host != "h1" || a.Kind != "vm-stopped" || !a.Alarm || !strings.Contains(a.Message, "doomed") {
		t.Fatalf("alarm %+v", a)
	}
	var hosts []struct {
		ID            string `json:"id"`
		PolicyVersion uint64 `json:"policy_version"`
		PolicyLag     bool   `json:"policy_lag"`
	}
	pf := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(pf, []byte(`{"mode":"dry-run"}`), 0o600)
	if err := c.ctl(nil, "policy", "set", pf); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the agent acknowledges policy v1", func() bool {
		c.ctl(&hosts, "hosts", "list")
		return len(hosts) == 1 && hosts[0].PolicyVersion == 1 && !hosts[0].PolicyLag
	})
	// Delivered once, not again on reconnects.
	time.Sleep(time.Second)
	c.ctl(&alarms, "alarms")
	if len(alarms) != 1 {
		t.Fatalf("%d alarms, want 1 (resends must not duplicate)", len(alarms))
	}
}

// startHosts enrols agents with the given names by a join token (reports
// every 300 ms), removes their VMs when the test ends, and waits until
// every one of them is online. Each host is a model of 4 cores and 8 GiB
// whose load is its VMs' use: the policy tests decide on room at the
// destination, and the load of this 2-core machine running the whole
// suite in parallel (often 100 %) must not decide for them.
func (c *cluster) startHosts(t *testing.T, names ...string) {
	t.Helper()
	c.startHostsIn(t, nil, names...)
}

// startHostsIn is startHosts with each host in the site site(name) names
// (nil: the agents' default site).
func (c *cluster) startHostsIn(t testing.TB, site func(string) string, names ...string) {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", fmt.Sprint(len(names))); err != nil {
		t.Fatal(err)
	}
	for _, h := range names {
		args := append([]string{"--token", tok.Token, "--report-interval", "300ms", "--sim-host", "cores=4,memory=8GiB"}, c.agentExtra...)
		if site != nil {
			args = append(args, "--site", site(h))
		}
		c.startAgent(h, args...)
	}
	t.Cleanup(func() { c.destroyVMs(t) })
	c.waitFor("every host online", func() bool {
		var hosts []hostView
		c.ctl(&hosts, "hosts", "list")
		online := 0
		for _, h := range hosts {
			if h.Online {
				online++
			}
		}
		return online == len(names)
	})
}
