package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// TestInventoryOwnedByMMC: `vms list` is the MMC's inventory, not what
// the agents report. A VM of h1 that h2 also reports (started on h2
// behind the MMC's back) is one vm-misplaced alarm and stays on h1; a VM
// nobody created is one vm-unknown alarm and is not listed. Revoking
// h1's agent leaves its VMs listed as unmanaged, with one vm-unmanaged
// alarm naming h1 and how many; deleting one of them forgets its record.
func TestInventoryOwnedByMMC(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startHosts(t, "h1", "h2")
	for _, vm := range []string{"web1", "web2"} {
		if err := c.ctl(nil, "vms", "create", vm, "--host", "h1", "--memory", "16MiB"); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor("web1 and web2 running on h1", func() bool {
		return c.vmState("h1", "web1") == "running" && c.vmState("h1", "web2") == "running"
	})

	// Behind the MMC's back, h2's hypervisor starts a web1 and a stray.
	d2, err := simDriver(filepath.Join(c.agentDirs["h2"], "vms"))
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []string{"web1", "stray"} {
		if _, err := d2.Create(context.Background(), hypervisor.Spec{Name: vm, Memory: 16 << 20, VCPUs: 1}); err != nil {
			t.Fatal(err)
		}
	}
	count := func(kind string) []alarmView {
		var out []alarmView
		for _, a := range c.alarms() {
			if a.Kind == kind {
				out = append(out, a)
			}
		}
		return out
	}
	c.waitFor("vm-misplaced and vm-unknown", func() bool {
		return len(count("vm-misplaced")) > 0 && len(count("vm-unknown")) > 0
	})
	time.Sleep(2 * time.Second) // several of h2's reports
	mis, unk := count("vm-misplaced"), count("vm-unknown")
	if len(mis) != 1 || mis[0].Host != "h2" || !strings.Contains(mis[0].Message, "web1") || !strings.Contains(mis[0].Message, "host h1") {
		t.Fatalf("vm-misplaced alarms %+v, want one from h2 about web1 on h1", mis)
	}
	if len(unk) != 1 || unk[0].Host != "h2" || !strings.Contains(unk[0].Message, "stray") {
		t.Fatalf("vm-unknown alarms %+v, want one from h2 about stray", unk)
	}
	on := c.vmsOn()
	if len(on["h2"]) != 0 || c.vmState("h1", "web1") != "running" || len(on["h1"]) != 2 {
		t.Fatalf("vms list %+v: web1 and web2 on h1 only, nothing of h2's reports", on)
	}

	h1, _ := c.agent("h1")
	if err := c.ctl(nil, "agents", "revoke", h1.ID); err != nil {
		t.Fatal(err)
	}
	c.waitFor("h1's VMs unmanaged", func() bool {
		return c.vmState("h1", "web1") == "unmanaged" && c.vmState("h1", "web2") == "unmanaged"
	})
	time.Sleep(time.Second)
	um := count("vm-unmanaged")
	if len(um) != 1 || um[0].Host != "h1" || !strings.Contains(um[0].Message, "2 VM(s)") {
		t.Fatalf("vm-unmanaged alarms %+v, want one naming h1 and 2 VMs", um)
	}
	if err := c.ctl(nil, "vms", "delete", "web2"); err != nil {
		t.Fatal(err)
	}
	if on := c.vmsOn(); len(on["h1"]) != 1 || on["h1"][0].ID != "web1" {
		t.Fatalf("after forgetting web2: %+v", on)
	}
}
