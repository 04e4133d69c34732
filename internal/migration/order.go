package migration

import (
	"errors"
	"math"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Order is the migration part of a migrate.* action: which migration
// (its id is also its blackboard topic and the name of the direct link),
// which VM, and for the destination the VM's spec, for the source the
// hypervisor's parameters.
type Order struct {
	ID     string                     `cbor:"1,keyasint"` // e.g. m7
	Topic  string                     `cbor:"2,keyasint"` // e.g. migration/m7
	VM     string                     `cbor:"3,keyasint"`
	Spec   *hypervisor.Spec           `cbor:"4,keyasint,omitempty"`
	Params hypervisor.MigrationParams `cbor:"5,keyasint"`
}

// Check refuses an order no correct MMC sends (labels are checked by
// the message layer, which knows their limits).
func (o *Order) Check() error {
	if o.ID == "" || o.VM == "" || o.Topic != Topic(o.ID) {
		return errors.New("migration order: id, topic and vm must be set, the topic named after the id")
	}
	if math.IsNaN(o.Params.MaxBandwidth) || math.IsInf(o.Params.MaxBandwidth, 0) {
		return errors.New("migration parameters: the bandwidth cap must be a number")
	}
	if o.Params.MaxBandwidth < 0 || o.Params.DowntimeLimit < 0 || o.Params.MaxRounds < 0 {
		return errors.New("migration parameters must not be negative")
	}
	return nil
}

// Report is an agent's view of one migration, returned by every
// migrate.* op: the job's phase on that agent, the hypervisor's
// progress, and the direct link's wire counters.
type Report struct {
	Phase  Phase                      `cbor:"1,keyasint"`
	Error  string                     `cbor:"2,keyasint,omitempty"`
	Status hypervisor.MigrationStatus `cbor:"3,keyasint"`
	// WireBytes counts UDP payload bytes this agent sent on the link.
	WireBytes uint64 `cbor:"4,keyasint"`
	// At is when the phase was reached (MMC clock, Unix ns): the
	// destination's resume time on migrate.commit.
	At int64 `cbor:"5,keyasint,omitempty"`
	// MayHaveRun: this agent recorded, before resuming it, that the
	// copy may run (kept across agent restarts). A destination without
	// the record never resumed its copy.
	MayHaveRun bool `cbor:"6,keyasint,omitempty"`
	// FirstByteAt is when the migration stream's first byte reached a
	// destination's agent (MMC clock, Unix ns; 0 before).
	FirstByteAt int64 `cbor:"7,keyasint,omitempty"`
}

// Failed reports whether the job or its hypervisor says the migration
// failed on this side.
func (r *Report) Failed() bool {
	return r.Phase == PhaseFailed || r.Status.State == hypervisor.MigFailed
}

// VerifiedImage: a destination holds a complete, verified image.
func (r *Report) VerifiedImage() bool {
	return r.Status.State == hypervisor.MigCompleted && r.Status.Verified
}

// SentAll: a source has sent its last byte and paused its copy for good
// (a completed pre-copy; a post-copy switch is not that).
func (r *Report) SentAll() bool {
	return r.Status.State == hypervisor.MigCompleted && r.Status.Postcopy == ""
}

// AtTime is At as a time (zero if unset).
func (r *Report) AtTime() time.Time {
	if r.At == 0 {
		return time.Time{}
	}
	return time.Unix(0, r.At)
}
