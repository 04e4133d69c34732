package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// alarmView is an alarm as `ferry ctl alarms -o json` shows it.
type alarmView struct {
	Seq                        uint64
	Host, Kind, Message, Level string
	Alarm                      bool
	AckedBy                    string `json:"acked_by"`
}

// TestRoutineOperationsRaiseNoAlarm: operators page on alarms, so the
// copies that routine operations destroy must not look like crashes. Two
// completed migrations (h1→h2 and back: the VM's name returns to a host
// that destroyed a copy of it), a cancelled one and a `vms delete` leave
// `ferry ctl alarms` empty; then a VM process that really dies (SIGKILL)
// is exactly one vm-stopped alarm — for the VM that came back to h1, so
// what h1 recorded about the copy it destroyed earlier silences nothing.
func TestRoutineOperationsRaiseNoAlarm(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	// Frequent monitor passes: a pass that lands while an agent destroys
	// a copy is what used to raise the false alarm.
	const reportInterval = 50 * time.Millisecond
	c.startSitesEvery(t, reportInterval)
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(nil, "vms", "create", "web", "--host", "h1", "--memory", "32MiB", "--workload", "cpu=0.1,dirty=1MB/s"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("web running on h1", func() bool { return c.vmState("h1", "web") == "running" })
	for _, hop := range [][2]string{{"h1", "h2"}, {"h2", "h1"}} {
		if err := c.ctl(&created, "migrate", "web", "--to", hop[1]); err != nil {
			t.Fatal(err)
		}
		m, err := c.watch(created.ID)
		if err != nil {
			t.Fatalf("watch: %v (%+v)", err, m)
		}
		c.checkCompleted(m, "web", hop[0], hop[1])
	}

	// Cancelled mid-transfer: 64 MiB dirtied at 20 MB/s through a
	// 16 Mbit/s cap cannot finish first. The destination's copy is
	// aborted (destroyed), the source's resumes.
	c.cancelMidTransfer(t, "db", "h1", "h2")
	c.waitFor("db running on h1 only", func() bool { return c.vmState("h1", "db") == "running" && c.vmState("h2", "db") == "" })

	// Deleted by the administrator.
	if err := c.ctl(nil, "vms", "create", "tmp", "--host", "h2", "--memory", "16MiB"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("tmp running on h2", func() bool { return c.vmState("h2", "tmp") == "running" })
	if err := c.ctl(nil, "vms", "delete", "tmp"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("tmp gone", func() bool { return c.vmState("h2", "tmp") == "" })

	// Several monitor passes on both hosts (and the delivery of anything
	// they raised) before the verdict.
	time.Sleep(max(6*reportInterval, 2*time.Second))
	if alarms := c.alarms(); len(alarms) != 0 {
		t.Fatalf("routine operations raised alarms: %+v", alarms)
	}

	// A real crash is still one alarm.
	c.killSimVM("h1", "web")
	c.waitFor("the vm-stopped alarm", func() bool { return len(c.alarms()) > 0 })
	time.Sleep(max(6*reportInterval, 2*time.Second)) // a repeat would show up now
	alarms := c.alarms()
	if len(alarms) != 1 {
		t.Fatalf("after killing web: %+v, want one alarm", alarms)
	}
	if a := alarms[0]; a.Host != "h1" || a.Kind != "vm-stopped" || !a.Alarm || a.Message != "VM web stopped unexpectedly" || a.AckedBy != "" {
		t.Fatalf("alarm %+v", a)
	}
	if n := c.metric(`ferry_mmc_alarms_total{kind="vm-stopped"}`); n != 1 {
		t.Errorf("ferry_mmc_alarms_total{kind=\"vm-stopped\"} = %v, want 1", n)
	}
	// Acknowledged: still listed, marked handled.
	var acked alarmView
	if err := c.ctl(&acked, "alarms", "ack", fmt.Sprint(alarms[0].Seq)); err != nil || acked.AckedBy != "admin" || acked.Seq != alarms[0].Seq {
		t.Fatalf("alarms ack: %+v %v", acked, err)
	}
	if got := c.alarms(); len(got) != 1 || got[0].AckedBy != "admin" {
		t.Fatalf("after the ack: %+v", got)
	}
	if err := c.ctl(nil, "alarms", "ack", fmt.Sprint(alarms[0].Seq+1000)); err == nil {
		t.Fatal("acknowledging an alarm that does not exist succeeded")
	}
}

// alarms lists the MMC's alarms.
func (c *cluster) alarms() []alarmView {
	c.t.Helper()
	var out []alarmView
	if err := c.ctl(&out, "alarms"); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// killSimVM kills a simulated VM's process on host, as a crash would.
func (c *cluster) killSimVM(host, vm string) {
	c.t.Helper()
	d, err := simDriver(filepath.Join(c.agentDirs[host], "vms"))
	if err != nil {
		c.t.Fatal(err)
	}
	vms, err := d.List(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	for _, v := range vms {
		if v.ID == vm && v.PID > 0 {
			if err := syscall.Kill(v.PID, syscall.SIGKILL); err != nil {
				c.t.Fatal(err)
			}
			return
		}
	}
	c.t.Fatalf("no %s process on %s: %+v", vm, host, vms)
}
