package simvm

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func TestVMWorkloadPauseShutdown(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{ID: "vm1", Name: "vm1", Memory: 32 << 20, VCPUs: 1, Socket: sock,
			Workload: hypervisor.Workload{CPU: 0.5, Dirty: 8e6, Net: 1e6}})
	}()
	call := func(req Request) Response {
		t.Helper()
		var resp Response
		var err error
		for i := 0; i < 50; i++ {
			if resp, err = Call(ctx, sock, req); err == nil {
				return resp
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s: %v", req.Op, err)
		return resp
	}
	call(Request{Op: "status"})
	time.Sleep(time.Second)
	st := call(Request{Op: "status"})
	if st.VM.State != hypervisor.StateRunning || st.VM.Memory != 32<<20 {
		t.Fatalf("vm: %+v", st.VM)
	}
	// Rates are measured, not echoed: allow for a loaded machine.
	if d := st.Stats.Dirty; d < 6e6 || d > 10e6 {
		t.Fatalf("dirty rate %.0f B/s, want ≈ 8e6", d)
	}
	if n := st.Stats.NetTx; n < 0.7e6 || n > 1.3e6 {
		t.Fatalf("net rate %.0f B/s, want ≈ 1e6", n)
	}
	if c := st.Stats.CPU; c < 0.15 || c > 1 {
		t.Fatalf("cpu %.2f, want ≈ 0.5", c)
	}
	if st.Stats.MemUsed == 0 || st.Stats.MemUsed > st.Stats.MemTotal {
		t.Fatalf("memory in use %d of %d", st.Stats.MemUsed, st.Stats.MemTotal)
	}

	call(Request{Op: "pause"})
	// Rates are measured between status calls at least 200 ms apart: let
	// this one close a window that began after the pause.
	time.Sleep(300 * time.Millisecond)
	call(Request{Op: "status"})
	time.Sleep(500 * time.Millisecond)
	if st := call(Request{Op: "status"}); st.VM.State != hypervisor.StatePaused || st.Stats.Dirty != 0 {
		t.Fatalf("paused: state %s dirty %.0f", st.VM.State, st.Stats.Dirty)
	}
	call(Request{Op: "resume"})
	w := hypervisor.Workload{Dirty: 2e6}
	if st := call(Request{Op: "set-workload", Workload: &w}); st.Spec.Workload != w {
		t.Fatalf("workload not set: %+v", st.Spec.Workload)
	}
	if _, err := Call(ctx, sock, Request{Op: "explode"}); err == nil {
		t.Fatal("unknown op accepted")
	}
	bad := hypervisor.Workload{CPU: 2}
	if _, err := Call(ctx, sock, Request{Op: "set-workload", Workload: &bad}); err == nil {
		t.Fatal("invalid workload accepted")
	}
	call(Request{Op: "shutdown"})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not stop the VM")
	}
}
