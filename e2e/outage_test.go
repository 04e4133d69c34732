package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestMMCOutageMinute: the MMC is down for a full minute while VMs on
// two hosts die one after another and one agent is itself restarted in
// the middle of the outage. When the MMC is back, every alarm raised in
// that minute is at the MMC exactly once, and nothing the MMC held before
// (approvals, the policy, migration records) was lost.
func TestMMCOutageMinute(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	agents := map[string]*proc{}
	for _, h := range []string{"h1", "h2"} {
		agents[h] = c.startAgent(h, "--token", tok.Token, "--report-interval", "300ms")
	}
	t.Cleanup(func() { c.destroyVMs(t) })
	c.waitFor("both hosts online", func() bool {
		a1, _ := c.agent("h1")
		a2, _ := c.agent("h2")
		return a1.Online && a2.Online
	})
	var vmsWanted []string
	for _, v := range []struct{ name, host string }{{"a1", "h1"}, {"a2", "h1"}, {"a3", "h1"}, {"b1", "h2"}, {"b2", "h2"}, {"keep", "h2"}} {
		if err := c.ctl(nil, "vms", "create", v.name, "--host", v.host, "--memory", "8MiB"); err != nil {
			t.Fatal(err)
		}
		vmsWanted = append(vmsWanted, v.name)
	}
	pf := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(pf, []byte(`{"mode":"dry-run","sla":{"cpu":0.95}}`), 0o600)
	if err := c.ctl(nil, "policy", "set", pf); err != nil {
		t.Fatal(err)
	}
	var mig struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&mig, "migrate", "keep", "--to", "h1"); err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, h := range []string{"h1", "h2"} {
		d, err := simDriver(filepath.Join(c.agentDirs[h], "vms"))
		if err != nil {
			t.Fatal(err)
		}
		vms, _ := d.List(context.Background())
		for _, vm := range vms {
			pids[vm.ID] = vm.PID
		}
	}
	if len(pids) != len(vmsWanted) {
		t.Fatalf("VM processes %v, want %v", pids, vmsWanted)
	}

	// The outage: one minute, with deaths spread over it and h2's agent
	// restarted between its two.
	c.mmc.stop()
	start := time.Now()
	at := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
	kill := func(vm string) {
		if err := syscall.Kill(pids[vm], syscall.SIGKILL); err != nil {
			t.Errorf("kill %s: %v", vm, err)
		}
	}
	at(5 * time.Second)
	kill("a1")
	at(12 * time.Second)
	kill("b1")
	at(20 * time.Second)
	kill("a2")
	at(28 * time.Second) // h2's agent has noticed b1; its alarm is only on disk now
	agents["h2"].stop()
	agents["h2"] = c.startAgent("h2", "--report-interval", "300ms")
	at(40 * time.Second)
	kill("b2")
	at(50 * time.Second)
	kill("a3")
	at(60 * time.Second)
	c.startMMC()

	type event struct {
		Host, Kind, Message string
		Alarm               bool
	}
	want := []string{"h1 a1", "h1 a2", "h1 a3", "h2 b1", "h2 b2"}
	var got []string
	// Agents retry every 5–15 s once their backoff is capped, and a
	// handshake that gets no answer takes 5 s to give up: under a loaded
	// suite an agent can need two attempts after the MMC is back.
	c.waitForUpTo(75*time.Second, "every alarm of the outage at the MMC", func() bool {
		var alarms []event
		if err := c.ctl(&alarms, "alarms"); err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, a := range alarms {
			if a.Kind == "vm-stopped" {
				for _, vm := range vmsWanted {
					if a.Message == "VM "+vm+" stopped unexpectedly" {
						got = append(got, a.Host+" "+vm)
					}
				}
			}
		}
		slices.Sort(got)
		return len(got) >= len(want)
	})
	time.Sleep(2 * time.Second) // late duplicates would show up now
	var alarms []event
	c.ctl(&alarms, "alarms")
	n := 0
	for _, a := range alarms {
		if a.Kind == "vm-stopped" {
			n++
		}
	}
	if !slices.Equal(got, want) || n != len(want) {
		t.Fatalf("alarms after the outage: %v (%d vm-stopped), want exactly %v", got, n, want)
	}

	// Nothing the MMC held was lost.
	for _, h := range []string{"h1", "h2"} {
		a, ok := c.agent(h)
		if !ok || a.State != "approved" {
			t.Errorf("%s after the outage: %+v", h, a)
		}
	}
	var pol struct {
		Version uint64                `json:"version"`
		Mode    string                `json:"mode"`
		SLA     struct{ CPU float64 } `json:"sla"`
	}
	if err := c.ctl(&pol, "policy", "get"); err != nil || pol.Version != 1 || pol.Mode != "dry-run" || pol.SLA.CPU != 0.95 {
		t.Errorf("policy after the outage: %+v %v", pol, err)
	}
	var ms []struct{ ID, VM, From, To string }
	if err := c.ctl(&ms, "migrations", "list"); err != nil || len(ms) != 1 || ms[0].ID != mig.ID || ms[0].VM != "keep" || ms[0].To != "h1" {
		t.Errorf("migrations after the outage: %+v %v", ms, err)
	}
	c.waitFor("both agents back online with policy v1", func() bool {
		var hosts []struct {
			ID            string `json:"id"`
			Online        bool   `json:"online"`
			PolicyVersion uint64 `json:"policy_version"`
		}
		c.ctl(&hosts, "hosts", "list")
		ok := 0
		for _, h := range hosts {
			if h.Online && h.PolicyVersion == 1 {
				ok++
			}
		}
		return ok == 2
	})
}
