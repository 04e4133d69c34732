package sim

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func destroyAll(t *testing.T, ds ...*Driver) {
	t.Cleanup(func() {
		ctx := context.Background()
		for _, d := range ds {
			vms, _ := d.List(ctx)
			for _, vm := range vms {
				_ = d.Destroy(ctx, vm.ID)
			}
		}
	})
}

func states(t *testing.T, d *Driver) map[string]hypervisor.State {
	t.Helper()
	vms, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]hypervisor.State{}
	for _, vm := range vms {
		m[vm.ID] = vm.State
	}
	return m
}

func waitMigration(t *testing.T, d *Driver, id string) hypervisor.MigrationStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := d.MigrationStatus(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != hypervisor.MigActive {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: migration still active: %+v", id, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDriverMigrate migrates a real `ferry simvm` process from one driver
// (host) to another, the test carrying the stream between the two conns
// as the two migration agents would.
func TestDriverMigrate(t *testing.T) {
	ctx := context.Background()
	src, err := New(t.TempDir(), ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := New(t.TempDir(), ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	destroyAll(t, src, dst)
	spec := hypervisor.Spec{Name: "mig1", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{CPU: 0.1, Dirty: 4e6}}
	if _, err := src.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if st, err := src.MigrationStatus(ctx, "mig1"); err != nil || st.State != "" {
		t.Fatalf("status before any migration: %+v %v", st, err)
	}
	time.Sleep(time.Second) // let the guest touch some memory

	out, err := src.MigrateOut(ctx, "mig1", hypervisor.MigrationParams{MaxBandwidth: 32e6})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	vm, in, err := dst.PrepareIncoming(ctx, hypervisor.Spec{Name: "mig1", Memory: 64 << 20, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if vm.ID != "mig1" || vm.State != hypervisor.StateMigrating || vm.PID <= 0 {
		t.Fatalf("incoming VM %+v", vm)
	}
	// Nothing is carried yet: the source is stuck in round 1, the
	// destination waits.
	if s := states(t, src)["mig1"]; s != hypervisor.StateMigrating {
		t.Fatalf("source listed %s during the migration", s)
	}
	if s := states(t, dst)["mig1"]; s != hypervisor.StateMigrating {
		t.Fatalf("destination listed %s during the migration", s)
	}
	if err := dst.Resume(ctx, "mig1"); err == nil {
		t.Fatal("incoming VM resumed before its image arrived")
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(in, out)
		_ = in.(*net.UnixConn).CloseWrite()
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(out, in) // the return path (unused by the simulated VM)
	}()
	sst := waitMigration(t, src, "mig1")
	dstSt := waitMigration(t, dst, "mig1")
	wg.Wait()
	t.Logf("source: %d rounds, %d stream bytes, rate %.1f MB/s, downtime %v", sst.Round, sst.StreamBytes, sst.Rate/1e6, sst.Finished.Sub(sst.PausedAt))
	if sst.State != hypervisor.MigCompleted || sst.PausedAt.IsZero() || sst.Transferred == 0 || sst.ZeroPages == 0 {
		t.Fatalf("source: %+v", sst)
	}
	if dstSt.State != hypervisor.MigCompleted || !dstSt.Verified || dstSt.StreamBytes != sst.StreamBytes {
		t.Fatalf("destination: %+v", dstSt)
	}
	// Both copies wait, paused, for the commit or the rollback.
	if s := states(t, src)["mig1"]; s != hypervisor.StateMigrating {
		t.Fatalf("source listed %s in postmigrate", s)
	}
	if s := states(t, dst)["mig1"]; s != hypervisor.StateMigrating {
		t.Fatalf("destination listed %s when verified", s)
	}
	a, err := src.MemoryDigest(ctx, "mig1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := dst.MemoryDigest(ctx, "mig1")
	if err != nil || a != b {
		t.Fatalf("memory digests: source %s, destination %s (%v)", a, b, err)
	}

	// Commit: the destination runs the guest on, the source goes.
	if err := dst.Resume(ctx, "mig1"); err != nil {
		t.Fatal(err)
	}
	if err := src.Destroy(ctx, "mig1"); err != nil {
		t.Fatal(err)
	}
	_, _ = dst.Stats(ctx, "mig1")
	time.Sleep(500 * time.Millisecond)
	st, err := dst.Stats(ctx, "mig1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Dirty < 2e6 || st.Dirty > 6e6 || st.MemUsed == 0 {
		t.Fatalf("destination after commit: %+v, want dirty ≈ 4e6", st)
	}
	if s := states(t, dst)["mig1"]; s != hypervisor.StateRunning {
		t.Fatalf("destination listed %s after resume", s)
	}
	if err := dst.Destroy(ctx, "mig1"); err != nil {
		t.Fatal(err)
	}
}

// TestDriverCancelMigration: CancelMigration stops a migration whose
// stream nobody reads; the source runs on.
func TestDriverCancelMigration(t *testing.T) {
	ctx := context.Background()
	d, err := New(t.TempDir(), ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	destroyAll(t, d)
	if _, err := d.Create(ctx, hypervisor.Spec{Name: "c1", Memory: 32 << 20, Workload: hypervisor.Workload{Dirty: 20e6}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	out, err := d.MigrateOut(ctx, "c1", hypervisor.MigrationParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := d.MigrateOut(ctx, "c1", hypervisor.MigrationParams{}); err == nil {
		t.Fatal("second migration accepted")
	}
	if err := d.CancelMigration(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	st, err := d.MigrationStatus(ctx, "c1")
	if err != nil || st.State != hypervisor.MigCancelled {
		t.Fatalf("after cancel: %+v %v", st, err)
	}
	if s := states(t, d)["c1"]; s != hypervisor.StateRunning {
		t.Fatalf("source listed %s after cancel", s)
	}
	// The VM closed its end: the agent's conn sees the end of the stream.
	_ = out.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, out); err != nil {
		t.Fatalf("reading the cancelled stream to its end: %v", err)
	}
	if _, err := d.MigrationStatus(ctx, "nope"); err == nil {
		t.Fatal("status of an unknown VM")
	}
}
