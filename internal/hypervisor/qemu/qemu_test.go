package qemu

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// newDriver returns a driver in a temporary directory that destroys its
// VMs at the end of the test. QEMU is a prerequisite the test command
// installs (scripts/install-test-deps.sh).
func newDriver(t *testing.T) *Driver {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (make test installs it): ", err)
	}
	d, err := New(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vms, _ := d.List(context.Background())
		for _, vm := range vms {
			_ = d.Destroy(context.Background(), vm.ID)
		}
	})
	return d
}

func counters(t *testing.T, d *Driver, id string) GuestCounters {
	t.Helper()
	b, err := d.ReadMemory(context.Background(), id, GuestCountersAddr, 12)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCounters(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitPattern waits until the guest wrote its pattern, then checks it.
func waitPattern(t *testing.T, d *Driver, s hypervisor.Spec) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for counters(t, d, s.Name).Status != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the guest did not write its pattern in 60 s", s.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkPattern(t, d, s.Name, s)
}

// checkPattern reads VM id's pattern region and compares it with what the
// guest of spec s writes.
func checkPattern(t *testing.T, d *Driver, id string, s hypervisor.Spec) {
	t.Helper()
	l := Layout(s)
	got, err := d.ReadMemory(context.Background(), id, l.PatternAddr, l.PatternLen)
	if err != nil {
		t.Fatal(err)
	}
	if want := l.PatternData(); !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: pattern differs at byte %d of %d", id, i, len(got))
	}
}

func checkDirtied(t *testing.T, d *Driver, id string, s hypervisor.Spec) GuestCounters {
	t.Helper()
	l := Layout(s)
	c := counters(t, d, id)
	region, err := d.ReadMemory(context.Background(), id, l.DirtyAddr, l.DirtyLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CheckDirtied(region, c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDriverLifecycle(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	const rate = 2 << 20 // 2 MiB/s: 512 pages/s
	// Half of each pattern page text: the guest's text path checked too.
	s := hypervisor.Spec{Name: "life", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Text: 0.5, Dirty: rate}}
	vm, err := d.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != hypervisor.StateRunning || vm.PID == 0 {
		t.Fatalf("created %+v", vm)
	}
	waitPattern(t, d, s)

	// The dirty rate follows the guest's timer: pages per second of wall time.
	c0, t0 := counters(t, d, s.Name), time.Now()
	if _, err := d.Stats(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	c1, t1 := counters(t, d, s.Name), time.Now()
	got := float64(c1.Pages-c0.Pages) * pageSize / t1.Sub(t0).Seconds()
	t.Logf("dirty rate %.2f MiB/s (asked %.2f)", got/(1<<20), float64(rate)/(1<<20))
	if got < rate*0.5 || got > rate*1.5 {
		t.Fatalf("dirty rate %.0f B/s, asked %d", got, rate)
	}
	st, err := d.Stats(ctx, s.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats %+v", st)
	if st.CPU <= 0 || st.MemUsed == 0 || st.MemTotal != s.Memory {
		t.Fatalf("stats %+v", st)
	}
	// A paced guest halts between its timer ticks: QEMU is mostly idle
	// (a guest that spun would take a whole core from the agents).
	if st.CPU > 0.5 {
		t.Fatalf("the paced guest uses %.0f%% of its vCPU", 100*st.CPU)
	}

	// Paused: the counters stand still and the region matches them.
	if err := d.Pause(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	p0 := checkDirtied(t, d, s.Name, s)
	time.Sleep(300 * time.Millisecond)
	if p1 := counters(t, d, s.Name); p1 != p0 {
		t.Fatalf("paused guest moved: %+v → %+v", p0, p1)
	}
	if vms, _ := d.List(ctx); len(vms) != 1 || vms[0].State != hypervisor.StatePaused {
		t.Fatalf("list while paused: %+v", vms)
	}
	if err := d.Resume(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if p2 := counters(t, d, s.Name); p2.Pages == p0.Pages {
		t.Fatal("resumed guest does not run")
	}

	if err := d.Destroy(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(vm.PID, 0) == nil {
		t.Fatalf("QEMU %d still runs after Destroy", vm.PID)
	}
	if vms, _ := d.List(ctx); len(vms) != 0 {
		t.Fatalf("list after destroy: %+v", vms)
	}
	if _, err := d.Stats(ctx, s.Name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("stats of a destroyed VM: %v", err)
	}
}

// pump carries a migration stream between the two agents' ends, as the
// migration agents do over SUDP, and reports the bytes each way.
func pump(a, b net.Conn) (done chan [2]int64) {
	done = make(chan [2]int64, 1)
	go func() {
		var n [2]int64
		ch := make(chan struct{}, 2)
		cp := func(i int, dst, src net.Conn) {
			n[i], _ = io.Copy(dst, src)
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			ch <- struct{}{}
		}
		go cp(0, b, a)
		go cp(1, a, b)
		<-ch
		<-ch
		a.Close()
		b.Close()
		done <- n
	}()
	return done
}

func waitMigration(t *testing.T, d *Driver, id string, want string) hypervisor.MigrationStatus {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := d.MigrationStatus(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == want {
			return st
		}
		if st.State != hypervisor.MigActive || time.Now().After(deadline) {
			t.Fatalf("%s: migration %+v, waiting for %s", id, st, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Two drivers on this host (two agents' directories), the stream carried
// between their socket pairs: the destination holds the source's memory
// exactly as it was when the source stopped, and runs on from there.
func TestLocalMigration(t *testing.T) {
	src, dst := newDriver(t), newDriver(t)
	ctx := context.Background()
	s := hypervisor.Spec{Name: "mover", Memory: 128 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Dirty: 8 << 20}}
	if _, err := src.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	waitPattern(t, src, s)

	vm, in, err := dst.PrepareIncoming(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != hypervisor.StateMigrating {
		t.Fatalf("incoming VM %+v", vm)
	}
	out, err := src.MigrateOut(ctx, s.Name, hypervisor.MigrationParams{DowntimeLimit: 300 * time.Millisecond, AutoConverge: true})
	if err != nil {
		t.Fatal(err)
	}
	done := pump(out, in)
	sst := waitMigration(t, src, s.Name, hypervisor.MigCompleted)
	dstSt := waitMigration(t, dst, s.Name, hypervisor.MigCompleted)
	n := <-done
	t.Logf("source %+v; %d bytes out, %d back", sst, n[0], n[1])
	if !dstSt.Verified || sst.PausedAt.IsZero() || sst.Finished.Before(sst.PausedAt) || sst.Transferred == 0 {
		t.Fatalf("source %+v, destination %+v", sst, dstSt)
	}

	// Both paused: the same counters, the same dirtied region, the
	// pattern intact.
	cs := checkDirtied(t, src, s.Name, s)
	cd := checkDirtied(t, dst, s.Name, s)
	if cs != cd || cs.Pages == 0 {
		t.Fatalf("source counters %+v, destination %+v", cs, cd)
	}
	checkPattern(t, dst, s.Name, s)

	if err := dst.Resume(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if c := counters(t, dst, s.Name); c.Pages <= cd.Pages {
		t.Fatalf("the destination does not run on: %+v", c)
	}
	if c := counters(t, src, s.Name); c != cs {
		t.Fatalf("the source ran after completing: %+v → %+v", cs, c)
	}
	if err := src.Destroy(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
}

// A cancelled migration leaves the source running and unchanged in
// content; the incoming QEMU exits and its status says failed.
func TestCancelledMigration(t *testing.T) {
	src, dst := newDriver(t), newDriver(t)
	ctx := context.Background()
	s := hypervisor.Spec{Name: "stay", Memory: 128 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 1, Dirty: 1 << 20}}
	if _, err := src.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	waitPattern(t, src, s)
	_, in, err := dst.PrepareIncoming(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	// 4 MB/s: 128 MiB takes half a minute, so the cancel lands mid-copy.
	out, err := src.MigrateOut(ctx, s.Name, hypervisor.MigrationParams{MaxBandwidth: 4e6})
	if err != nil {
		t.Fatal(err)
	}
	done := pump(out, in)
	time.Sleep(time.Second)
	// The downtime limit can be changed mid-migration.
	if err := src.SetDowntimeLimit(ctx, s.Name, 123*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var mp struct {
		DowntimeLimit int64 `json:"downtime-limit"`
	}
	if err := src.QMP(ctx, s.Name, "query-migrate-parameters", nil, &mp); err != nil || mp.DowntimeLimit != 123 {
		t.Fatalf("downtime-limit after SetDowntimeLimit(123ms): %d, %v", mp.DowntimeLimit, err)
	}
	if err := src.CancelMigration(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	<-done
	if st, err := src.MigrationStatus(ctx, s.Name); err != nil || st.State != hypervisor.MigCancelled {
		t.Fatalf("source after cancel: %+v, %v", st, err)
	}
	dstSt := waitMigration(t, dst, s.Name, hypervisor.MigFailed)
	t.Logf("destination after cancel: %+v", dstSt)
	vms, _ := src.List(ctx)
	if len(vms) != 1 || vms[0].State != hypervisor.StateRunning {
		t.Fatalf("source VMs after cancel: %+v", vms)
	}
	c0 := counters(t, src, s.Name)
	time.Sleep(300 * time.Millisecond)
	if c := counters(t, src, s.Name); c.Pages == c0.Pages {
		t.Fatal("the source does not run after the cancel")
	}
	checkPattern(t, src, s.Name, s)
}
