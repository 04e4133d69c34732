package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/hypervisor/libvirt"
	"github.com/ferry-vm/ferry/internal/hypervisor/libvirt/lvtest"
	"github.com/ferry-vm/ferry/internal/hypervisor/qemu"
)

// Two libvirt hosts on one machine: "east" is the system libvirtd, "west"
// a second libvirtd in its own mount namespace (its own /run/libvirt,
// /var/lib/libvirt, /etc/libvirt with its own host UUID, /run/ferry:
// lvtest.NewHost), its agent started in that namespace. Both agents and
// the MMC are on loopback; every connection of the migration (the
// destination libvirtd's RPC, QEMU's stream, the disks' NBD stream)
// crosses the agents' SUDP link.

type libvirtLab struct {
	c          *cluster
	east, west *libvirt.Driver // the test's own view of each host
	hostWest   *lvtest.Host
	files      string // guest kernels and domain XML (the same path on both hosts)
}

func libvirtSites(t *testing.T) *libvirtLab {
	lvtest.RequireRoot(t)
	lvtest.EnsureSystemDaemon(t)
	hw := lvtest.NewHost(t, "f0000000-0000-4000-8000-0000000000e2")
	// The destination's images are created by libvirt in a pool, as in a
	// standard libvirt install.
	if _, err := lvtest.Virsh(hw.URI(), "pool-create-as", "images", "dir", "--target", "/var/lib/libvirt/images"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	east, err := libvirt.New(ctx, libvirt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	west, err := libvirt.New(ctx, libvirt.Config{URI: hw.URI(), SocketDir: hw.SocketDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { east.Close(); west.Close() })
	files, err := os.MkdirTemp("", "ferry-e2e-lv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(files) })
	if err := os.Chmod(files, 0o755); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"east", "west"} {
		dir := filepath.Join(t.TempDir(), h)
		c.agentDirs[h] = dir
		args := []string{"agent", "--data-dir", dir, "--bundle", c.bundle, "--name", h,
			"--disk-id", "disk-" + h, "--macs", "02:00:00:00:00:" + map[string]string{"east": "e1", "west": "e2"}[h],
			"--time-sync-interval", "1s", "--token", tok.Token, "--site", h, "--driver", "libvirt",
			"--report-interval", "1s", "--log-level", e2eLogLevel()}
		cmd := exec.Command(ferryBin, args...)
		if h == "west" {
			cmd = hw.Command(ferryBin, args...)
		}
		startCmd(t, "agent "+h, cmd)
	}
	c.waitFor("both hosts online", func() bool {
		var hosts []hostView
		_ = c.ctl(&hosts, "hosts", "list")
		n := 0
		for _, h := range hosts {
			if h.Online {
				n++
			}
		}
		return n == 2
	})
	return &libvirtLab{c: c, east: east, west: west, hostWest: hw, files: files}
}

// defineOnEast defines a TCG domain on east the way an operator would
// (virsh define of a domain XML; a qcow2 disk holding known data if
// withDisk), booting the test guest of spec, puts it under the MMC's
// management (vms create: east's agent starts it), and waits until the
// guest wrote its pattern and east reports it running.
func (l *libvirtLab) defineOnEast(t *testing.T, spec hypervisor.Spec, withDisk bool) (disk string) {
	t.Helper()
	img, err := qemu.Layout(spec).Image()
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(l.files, spec.Name+".bin")
	if err := os.WriteFile(kernel, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if withDisk {
		disk = "/var/lib/libvirt/images/ferry-e2e-" + spec.Name + ".qcow2"
		_ = os.Remove(disk)
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "32M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4M", "-c", "write -P 0xc3 20M 2M", disk).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
		t.Cleanup(func() { os.Remove(disk) })
	}
	x := filepath.Join(l.files, spec.Name+".xml")
	if err := os.WriteFile(x, []byte(lvtest.DomainXML(spec.Name, int(spec.Memory>>20), kernel, disk)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := lvtest.Virsh("qemu:///system", "define", x); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = lvtest.Virsh("qemu:///system", "destroy", spec.Name)
		_, _ = lvtest.Virsh("qemu:///system", "undefine", spec.Name)
	})
	// Under the MMC's management: `vms create` of a defined domain
	// records it and has east's agent start the operator's definition.
	if err := l.c.ctl(nil, "vms", "create", spec.Name, "--host", "east", "--memory", fmt.Sprintf("%dMiB", spec.Memory>>20)); err != nil {
		t.Fatal(err)
	}
	l.c.waitFor(spec.Name+" wrote its pattern", func() bool { return guestCounters(t, l.east, spec.Name).Status == 1 })
	l.c.waitFor(spec.Name+" running on east", func() bool { return l.c.vmState("east", spec.Name) == "running" })
	return disk
}

func (l *libvirtLab) migrate(t *testing.T, vm string, extra ...string) string {
	t.Helper()
	var mig struct {
		ID string `json:"id"`
	}
	if err := l.c.ctl(&mig, append([]string{"migrate", vm, "--to", "west"}, extra...)...); err != nil {
		t.Fatal(err)
	}
	return mig.ID
}

// TestLibvirtMigration: a libvirt domain the agents did not create (TCG,
// a qcow2 disk) migrates east → west through the agents' SUDP link: the
// report says verified; west runs it with the guest's memory intact (its
// pattern, its dirtied pages against its counters) and the disk's
// content; east has neither the domain nor its definition. Then a second
// domain's migration, slowed by a bandwidth cap, is cancelled mid-copy:
// it keeps running on east, and west has no copy.
func TestLibvirtMigration(t *testing.T) {
	l := libvirtSites(t)
	c := l.c
	spec := hypervisor.Spec{Name: "lvguest", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Dirty: 2 << 20}}
	disk := l.defineOnEast(t, spec, true)
	checkGuestPattern(t, lvtest.Memory{URI: "qemu:///system"}, spec.Name, spec)

	m, err := c.watch(l.migrate(t, spec.Name))
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	c.checkCompleted(m, spec.Name, "east", "west")
	t.Logf("libvirt domain east→west: total %d ms, downtime %d ms, %d bytes on the wire, %d rounds",
		m.TotalMS, m.DowntimeMS, m.BytesOnWire, m.Rounds)
	if min := qemu.Layout(spec).PatternLen + 6<<20; m.BytesOnWire < min {
		t.Fatalf("%d bytes on the wire for a guest with %d bytes of pattern and 6 MiB of disk data", m.BytesOnWire, min)
	}
	if out, err := lvtest.Virsh("qemu:///system", "dominfo", spec.Name); err == nil {
		t.Fatalf("east still has the domain after the commit: %s", out)
	}
	cnt := checkGuestMemory(t, lvtest.Memory{URI: l.hostWest.URI()}, spec.Name, spec) // leaves it paused
	if err := l.west.Resume(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest runs on at west", func() bool { return guestCounters(t, l.west, spec.Name).Pages > cnt.Pages })
	westDisk := filepath.Join(l.hostWest.Dir, "lib", "images", filepath.Base(disk))
	if out, err := exec.Command("qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", disk, westDisk).CombinedOutput(); err != nil {
		t.Fatalf("west's disk differs from east's: %v: %s", err, out)
	}
	// The persistent definition moved with it.
	if _, err := lvtest.Virsh(l.hostWest.URI(), "dominfo", spec.Name); err != nil {
		t.Fatal(err)
	}

	// Cancelled mid-copy: one running copy, east's.
	stay := hypervisor.Spec{Name: "lvstay", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Dirty: 2 << 20}}
	l.defineOnEast(t, stay, false)
	id := l.migrate(t, stay.Name, "--max-bandwidth", "8mbit")
	c.waitFor("the transfer under way", func() bool {
		st, err := l.east.MigrationStatus(context.Background(), stay.Name)
		return err == nil && st.State == hypervisor.MigActive && st.Transferred > 2<<20
	})
	cancelAt := time.Now()
	var cancelled migrationView
	if err := c.ctl(&cancelled, "migrations", "cancel", id); err != nil || cancelled.State != "cancelled" {
		t.Fatalf("cancel: %+v, %v", cancelled, err)
	}
	t.Logf("cancel answered in %v", time.Since(cancelAt).Round(time.Millisecond))
	c.waitFor("lvstay running on east only", func() bool {
		return c.vmState("east", stay.Name) == "running" && c.vmState("west", stay.Name) == ""
	})
	vms, err := l.west.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.ID == stay.Name {
			t.Fatalf("west has a copy of %s after the cancel: %+v", stay.Name, vm)
		}
	}
	before := guestCounters(t, l.east, stay.Name).Pages
	c.waitFor("lvstay runs on at east", func() bool { return guestCounters(t, l.east, stay.Name).Pages > before })
	checkGuestPattern(t, lvtest.Memory{URI: "qemu:///system"}, stay.Name, stay)
}
