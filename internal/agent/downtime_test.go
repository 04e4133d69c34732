package agent

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
)

func TestQueueAwareLimit(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		budget, srtt, minRTT, want time.Duration
	}{
		{budget: 150 * ms, srtt: 50 * ms, minRTT: 50 * ms, want: 150 * ms}, // empty link
		{budget: 150 * ms, srtt: 90 * ms, minRTT: 50 * ms, want: 110 * ms}, // 40 ms queued ahead
		{budget: 150 * ms, srtt: 250 * ms, minRTT: 50 * ms, want: 50 * ms}, // never below a third
		{budget: 150 * ms, srtt: 0, minRTT: 0, want: 150 * ms},             // no RTT yet
		{budget: 0, srtt: 90 * ms, minRTT: 50 * ms, want: 0},               // the driver's default
		{budget: 150 * ms, srtt: 40 * ms, minRTT: 50 * ms, want: 150 * ms}, // a smoothed RTT below the minimum
	} {
		if got := queueAwareLimit(c.budget, c.srtt, c.minRTT); got != c.want {
			t.Errorf("queueAwareLimit(%v, %v, %v) = %v, want %v", c.budget, c.srtt, c.minRTT, got, c.want)
		}
	}
}

// limitRecorder is a Migrator that records SetDowntimeLimit calls.
type limitRecorder struct {
	hypervisor.Migrator
	set []time.Duration
}

func (r *limitRecorder) SetDowntimeLimit(_ context.Context, _ string, d time.Duration) error {
	r.set = append(r.set, d)
	return nil
}

// The agent tells the hypervisor only when the queue-aware limit moved by
// limitStep or more, and keeps the limit in force otherwise.
func TestTuneDowntimeLimit(t *testing.T) {
	a := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	rec := &limitRecorder{}
	ms := time.Millisecond
	j := &job{mig: rec, order: migration.Order{ID: "m1", VM: "vm1", Params: hypervisor.MigrationParams{DowntimeLimit: 150 * ms}}}
	cur := j.order.Params.DowntimeLimit
	for _, step := range []struct {
		srtt time.Duration
		want time.Duration
	}{
		{50 * ms, 150 * ms}, // no queue: unchanged, not sent
		{55 * ms, 150 * ms}, // 5 ms: below the step
		{80 * ms, 120 * ms}, // 30 ms queued: sent
		{85 * ms, 120 * ms}, // moved 5 ms: kept
		{52 * ms, 148 * ms}, // drained: sent back up
	} {
		cur = a.tuneDowntimeLimit(context.Background(), j, step.srtt, 50*ms, cur)
		if cur != step.want {
			t.Fatalf("srtt %v: limit %v, want %v", step.srtt, cur, step.want)
		}
	}
	if want := []time.Duration{120 * ms, 148 * ms}; len(rec.set) != 2 || rec.set[0] != want[0] || rec.set[1] != want[1] {
		t.Fatalf("driver told %v, want %v", rec.set, want)
	}
	// A driver that cannot change the limit is left alone.
	j.mig = struct{ hypervisor.Migrator }{}
	if got := a.tuneDowntimeLimit(context.Background(), j, 90*ms, 50*ms, 150*ms); got != 150*ms {
		t.Fatalf("without DowntimeSetter: %v", got)
	}
}
