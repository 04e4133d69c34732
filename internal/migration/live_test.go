package migration

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// A rate so small that the ETA would be infinite leaves the ETA out: the
// live figures must always encode as JSON.
func TestLiveETAFinite(t *testing.T) {
	for _, rate := range []float64{5e-324, 1e-300, 0, 1e6} {
		l := liveOf(&Report{Status: hypervisor.MigrationStatus{Total: 1 << 30, Remaining: 1 << 29, Rate: rate}}, nil, time.Time{})
		if _, err := json.Marshal(l); err != nil {
			t.Fatalf("rate %v: live %+v does not encode: %v", rate, l, err)
		}
	}
	now := time.Date(2026, 12, 7, 21, 0, 0, 0, time.UTC)
	if l := liveOf(&Report{Status: hypervisor.MigrationStatus{Total: 100, Remaining: 50, Rate: 10}}, nil, now); l.ETASeconds != 5 || !l.EndsAt.Equal(now.Add(5*time.Second)) {
		t.Fatalf("ETA %v, ends %v: want 5 s, %v", l.ETASeconds, l.EndsAt, now.Add(5*time.Second))
	}
	// A guest dirtying memory adds rounds: 50 left at 10/s while 2/s
	// are dirtied is 50/8 s.
	if l := liveOf(&Report{Status: hypervisor.MigrationStatus{Total: 100, Remaining: 50, Rate: 10, DirtyRate: 2}}, nil, now); l.ETASeconds != 6.25 {
		t.Fatalf("ETA %v with a dirty rate, want 6.25", l.ETASeconds)
	}
	// An ETA of ages gives no end time (as a duration it would overflow).
	if l := liveOf(&Report{Status: hypervisor.MigrationStatus{Total: 1 << 30, Remaining: 1 << 29, Rate: 1e-300}}, nil, now); !l.EndsAt.IsZero() {
		t.Fatalf("ends %v for a rate of nothing", l.EndsAt)
	}
}
