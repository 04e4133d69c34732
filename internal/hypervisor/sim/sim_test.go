package sim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

var ferryBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-sim-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ferryBin = filepath.Join(dir, "ferry")
	build := exec.Command("go", "build", "-o", ferryBin, "github.com/ferry-vm/ferry/cmd/ferry")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "sim: building ferry:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestDriverLifecycle runs real `ferry simvm` processes: create, stats that
// follow the scripted workload, pause/resume, re-adoption by a new driver
// instance (an agent restart), a VM whose process died shows as stopped,
// and destroy leaves nothing behind.
func TestDriverLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, err := New(dir, ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vms, _ := d.List(ctx)
		for _, vm := range vms {
			d.Destroy(ctx, vm.ID)
		}
	})
	vm, err := d.Create(ctx, hypervisor.Spec{Name: "web1", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{CPU: 0.3, Dirty: 4e6}})
	if err != nil {
		t.Fatal(err)
	}
	if vm.ID != "web1" || vm.State != hypervisor.StateRunning || vm.PID <= 0 {
		t.Fatalf("created %+v", vm)
	}
	if _, err := d.Create(ctx, hypervisor.Spec{Name: "web1", Memory: 64 << 20}); err == nil {
		t.Fatal("duplicate name accepted")
	}
	if _, err := d.Create(ctx, hypervisor.Spec{Name: "../x", Memory: 64 << 20}); err == nil {
		t.Fatal("path-like name accepted")
	}
	d.Stats(ctx, "web1")
	time.Sleep(time.Second)
	st, err := d.Stats(ctx, "web1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Dirty < 3e6 || st.Dirty > 5e6 || st.MemTotal != 64<<20 {
		t.Fatalf("stats %+v, want dirty ≈ 4e6", st)
	}
	if err := d.SetWorkload(ctx, "web1", hypervisor.Workload{Dirty: 1e6}); err != nil {
		t.Fatal(err)
	}
	if err := d.Pause(ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	vms, _ := d.List(ctx)
	if len(vms) != 1 || vms[0].State != hypervisor.StatePaused {
		t.Fatalf("after pause: %+v", vms)
	}
	// A listing cut short is an error, not a list of stopped VMs (the
	// agent would raise false alarms).
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if vms, err := d.List(cancelled); err == nil {
		t.Fatalf("a cancelled listing returned %+v", vms)
	}

	// The agent restarts: a new driver on the same directory finds the VM
	// still running, with its state.
	d2, _ := New(dir, ferryBin)
	vms, err = d2.List(ctx)
	if err != nil || len(vms) != 1 || vms[0].PID != vm.PID || vms[0].State != hypervisor.StatePaused {
		t.Fatalf("re-adopted: %+v %v", vms, err)
	}
	if err := d2.Resume(ctx, "web1"); err != nil {
		t.Fatal(err)
	}

	// A VM whose process died is listed as stopped; destroy cleans up.
	vm2, err := d2.Create(ctx, hypervisor.Spec{Name: "db1", Memory: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(vm2.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	vms, _ = d2.List(ctx)
	states := map[string]hypervisor.State{}
	for _, v := range vms {
		states[v.ID] = v.State
	}
	if states["db1"] != hypervisor.StateStopped || states["web1"] != hypervisor.StateRunning {
		t.Fatalf("states %v", states)
	}
	for _, id := range []string{"db1", "web1"} {
		if err := d2.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(vm.PID, 0); err == nil {
		t.Fatal("destroyed VM's process still exists")
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("files left behind: %v", left)
	}
	if _, err := d2.Stats(ctx, "web1"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("stats of a destroyed VM: %v", err)
	}
}
