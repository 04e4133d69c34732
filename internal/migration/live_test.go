package migration

import (
	"encoding/json"
	"testing"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// A rate so small that the ETA would be infinite leaves the ETA out: the
// live figures must always encode as JSON.
func TestLiveETAFinite(t *testing.T) {
	for _, rate := range []float64{5e-324, 1e-300, 0, 1e6} {
		l := liveOf(&Report{Status: hypervisor.MigrationStatus{Total: 1 << 30, Remaining: 1 << 29, Rate: rate}}, nil)
		if _, err := json.Marshal(l); err != nil {
			t.Fatalf("rate %v: live %+v does not encode: %v", rate, l, err)
		}
	}
	if l := liveOf(&Report{Status: hypervisor.MigrationStatus{Total: 100, Remaining: 50, Rate: 10}}, nil); l.ETASeconds != 5 {
		t.Fatalf("ETA %v, want 5", l.ETASeconds)
	}
}
