package qemu

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// A guest rewriting 16 MiB at 32 MB/s behind an 8 MB/s stream: no pass
// over memory ever ends with less left to send.
var fastDirtier = hypervisor.Spec{Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Dirty: 32 << 20}}

var slowLink = hypervisor.MigrationParams{MaxBandwidth: 8e6, DowntimeLimit: 100 * time.Millisecond, MaxRounds: 3}

// startFastDirtier creates the fast dirtier named name on src, prepares
// its incoming copy on dst, and starts migrating it with p, the stream
// carried between the two; done reports the bytes each way at the end.
func startFastDirtier(t *testing.T, src, dst *Driver, name string, p hypervisor.MigrationParams) (s hypervisor.Spec, done chan [2]int64) {
	t.Helper()
	ctx := context.Background()
	s = fastDirtier
	s.Name = name
	if _, err := src.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	waitPattern(t, src, s)
	_, in, err := dst.PrepareIncoming(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	out, err := src.MigrateOut(ctx, s.Name, p)
	if err != nil {
		t.Fatal(err)
	}
	return s, pump(out, in)
}

// waitStatus polls VM id's migration until ok accepts it.
func waitStatus(t *testing.T, d *Driver, id, what string, ok func(hypervisor.MigrationStatus) bool) hypervisor.MigrationStatus {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := d.MigrationStatus(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: waiting for %s: %+v", id, what, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Post-copy: the pre-copy does not converge, the source says so after
// MaxRounds; switched, the destination runs at once, pulls the rest, and
// ends with exactly the memory the guest had (pattern intact, every
// dirtied page consistent with its counters) and runs on.
func TestPostcopyMigration(t *testing.T) {
	src, dst := newDriver(t), newDriver(t)
	ctx := context.Background()
	p := slowLink
	p.Postcopy = true
	s, done := startFastDirtier(t, src, dst, "pc", p)
	ready := waitStatus(t, src, s.Name, "post-copy ready", func(st hypervisor.MigrationStatus) bool {
		if st.State != hypervisor.MigActive {
			t.Fatalf("source: %+v", st)
		}
		return st.Postcopy == hypervisor.PostcopyReady
	})
	if ready.Round <= p.MaxRounds {
		t.Fatalf("post-copy offered after %d rounds, MaxRounds %d", ready.Round, p.MaxRounds)
	}
	if err := src.StartPostcopy(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	// QEMU itself in post-copy (an active migration reads as switched only
	// when QEMU's state is postcopy-*), then the destination: 16 MiB at
	// 8 MB/s leaves it seconds before it has every page.
	waitStatus(t, src, s.Name, "the source in post-copy", func(st hypervisor.MigrationStatus) bool {
		if st.State != hypervisor.MigActive {
			t.Fatalf("source left the migration before the test saw it switch: %+v", st)
		}
		return st.Postcopy == hypervisor.PostcopyActive
	})
	if err := src.StartPostcopy(ctx, s.Name); err != nil {
		t.Fatalf("StartPostcopy on a switched source: %v", err)
	}
	waitStatus(t, dst, s.Name, "the destination in post-copy", func(st hypervisor.MigrationStatus) bool {
		if st.State == hypervisor.MigCompleted {
			t.Fatalf("the destination completed before the test saw it in post-copy: %+v", st)
		}
		return st.Postcopy == hypervisor.PostcopyActive
	})
	if err := dst.Resume(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	sst := waitMigration(t, src, s.Name, hypervisor.MigCompleted)
	dstSt := waitMigration(t, dst, s.Name, hypervisor.MigCompleted)
	n := <-done
	t.Logf("source %+v; %d bytes out, %d back (page requests)", sst, n[0], n[1])
	if sst.Postcopy != hypervisor.PostcopyActive || sst.PausedAt.IsZero() || !dstSt.Verified {
		t.Fatalf("source %+v, destination %+v", sst, dstSt)
	}
	if err := dst.Pause(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	c := checkDirtied(t, dst, s.Name, s)
	checkPattern(t, dst, s.Name, s)
	if err := dst.Resume(ctx, s.Name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if c2 := counters(t, dst, s.Name); c2.Pages <= c.Pages {
		t.Fatalf("the destination does not run on: %+v → %+v", c, c2)
	}
	// QEMU would run the source again; the driver must not.
	if err := src.Resume(ctx, s.Name); err == nil {
		t.Fatal("the source resumed after handing its guest over")
	}
}

// Without post-copy, a migration that cannot converge is given up after
// MaxRounds: the source runs on, unchanged, and says why.
func TestNoConvergenceAborts(t *testing.T) {
	src, dst := newDriver(t), newDriver(t)
	ctx := context.Background()
	s, done := startFastDirtier(t, src, dst, "stuck", slowLink)
	st := waitStatus(t, src, s.Name, "the migration given up", func(st hypervisor.MigrationStatus) bool {
		if st.Postcopy != "" {
			t.Fatalf("post-copy offered though not allowed: %+v", st)
		}
		return st.State != hypervisor.MigActive
	})
	<-done
	if st.State != hypervisor.MigFailed || !strings.Contains(st.Error, "did not converge") {
		t.Fatalf("source: %+v", st)
	}
	if again, _ := src.MigrationStatus(ctx, s.Name); again.State != hypervisor.MigFailed || again.Error != st.Error {
		t.Fatalf("source status changed: %+v", again)
	}
	waitMigration(t, dst, s.Name, hypervisor.MigFailed)
	c0 := counters(t, src, s.Name)
	time.Sleep(300 * time.Millisecond)
	if c := counters(t, src, s.Name); c.Pages == c0.Pages {
		t.Fatal("the source does not run after giving up")
	}
	checkPattern(t, src, s.Name, s)
}

// TestPostcopyOutcome: which QEMU states mean a migration switched to
// post-copy, and when the driver's request for the switch is void.
func TestPostcopyOutcome(t *testing.T) {
	for _, c := range []struct {
		mig, run         string
		requested        bool
		switched, forget bool
	}{
		{"active", "running", false, false, false},
		{"active", "running", true, false, false}, // asked, QEMU has not switched yet
		{"postcopy-active", "running", true, true, false},
		{"postcopy-active", "inmigrate", false, true, false}, // a destination: never asked itself
		{"postcopy-paused", "paused", true, true, false},
		{"postcopy-recover", "paused", true, true, false},
		{"completed", "postmigrate", true, true, false},
		{"completed", "postmigrate", false, false, false}, // plain pre-copy
		{"failed", "running", true, false, true},          // failed before the switch: the guest runs again here
		{"cancelled", "running", true, false, true},
		{"failed", "postmigrate", true, true, false}, // failed after it: the guest stays stopped
		{"failed", "running", false, false, false},
	} {
		sw, fg := postcopyOutcome(c.mig, c.run, c.requested)
		if sw != c.switched || fg != c.forget {
			t.Errorf("%s/%s requested=%v: switched %v forget %v, want %v %v", c.mig, c.run, c.requested, sw, fg, c.switched, c.forget)
		}
	}
}

func TestExpectedDowntime(t *testing.T) {
	for _, tc := range []struct {
		remaining uint64
		rate      float64
		qemuMS    int64
		want      time.Duration
	}{
		// First pass: QEMU says 3 ms (its dirty rate is ~0); 100 MB
		// remain at 12.5 MB/s.
		{100e6, 12.5e6, 3, 8 * time.Second},
		{1.25e6, 12.5e6, 3, 100 * time.Millisecond},
		{0, 12.5e6, 3, 0},
		// No rate measured yet: QEMU's figure.
		{100e6, 0, 300, 300 * time.Millisecond},
	} {
		if got := expectedDowntime(tc.remaining, tc.rate, tc.qemuMS); got != tc.want {
			t.Errorf("expectedDowntime(%d, %v, %d) = %v, want %v", tc.remaining, tc.rate, tc.qemuMS, got, tc.want)
		}
	}
}
