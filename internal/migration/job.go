package migration

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// The migration agent's decisions, as pure functions of what its
// hypervisor reports. The agent (internal/agent) carries the bytes,
// polls the hypervisor and runs the verbs these functions choose; which
// copy is authoritative it never decides (that is the MMC's record).

// JobPhase is the phase a job moves to on a hypervisor status st, and why
// if it failed: phase is where the job is, role its part, streamErr the
// error that ended its stream (nil while the stream runs or if it ended
// cleanly). A destination is complete only with a verified image (the
// MMC commits on that phase); a job past completed never fails (its copy
// is paused for good or resumed, and only an order moves it).
func JobPhase(role Role, phase Phase, st hypervisor.MigrationStatus, streamErr error) (Phase, string) {
	switch st.State {
	case hypervisor.MigCompleted:
		if (phase == PhasePreparing || phase == PhaseTransferring) && (role == Source || st.Verified) {
			return PhaseCompleted, ""
		}
	case hypervisor.MigFailed:
		if !phase.Final() && phase != PhaseCompleted {
			return PhaseFailed, st.Error
		}
	case hypervisor.MigCancelled:
		if !phase.Final() {
			return PhaseCancelled, ""
		}
	}
	if phase == PhasePreparing && streamErr != nil {
		// The stream never reached the hypervisor's side.
		return PhaseFailed, streamErr.Error()
	}
	return phase, ""
}

// ResumeOnVerify: an armed destination job that has just completed
// (verified) resumes its copy without waiting for the commit.
func ResumeOnVerify(role Role, from, to Phase, armed bool) bool {
	return role == Destination && armed && to == PhaseCompleted && from != to
}

// SourceVerb is what a rollback does to the source copy.
type SourceVerb int

// Source verbs.
const (
	KeepRunning    SourceVerb = iota // nothing to undo: the copy runs (or the transfer already ended and resumed it)
	CancelTransfer                   // the transfer is still going: cancel it (the copy runs on)
	ResumeCopy                       // the copy paused after a complete transfer: resume it
)

// ErrPostcopySwitched refuses to roll back a source that switched to
// post-copy: the destination is the VM, this copy cannot run again.
var ErrPostcopySwitched = errors.New("migration: switched to post-copy: the destination is the VM, this copy cannot run again")

// RollbackVerb chooses how a rollback makes the source copy the running
// VM again.
func RollbackVerb(st hypervisor.MigrationStatus) (SourceVerb, error) {
	if st.Postcopy == hypervisor.PostcopyActive {
		return KeepRunning, ErrPostcopySwitched
	}
	switch st.State {
	case hypervisor.MigActive:
		return CancelTransfer, nil
	case hypervisor.MigCompleted:
		return ResumeCopy, nil
	}
	return KeepRunning, nil
}

// PostcopyCommitWait bounds how long a post-copy commit waits for the
// destination's hypervisor to take the device state the source sent as
// it switched (under the MMC's action timeout).
const PostcopyCommitWait = 20 * time.Second

// CommitCheck says whether a destination copy may be resumed on a commit
// (postcopy: the order says the migration switched): a verified image
// (pulling false: nothing left to pull), or a post-copy destination that
// switched (pulling true: it pulls the rest as it runs). wait: a
// post-copy destination that has not switched yet (its status is
// still active pre-copy) is to be asked again.
func CommitCheck(st hypervisor.MigrationStatus, postcopy bool) (pulling, wait bool, err error) {
	switch {
	case st.State == hypervisor.MigCompleted && st.Verified:
		return false, false, nil
	case postcopy && st.Postcopy == hypervisor.PostcopyActive && st.State == hypervisor.MigActive:
		return true, false, nil
	case postcopy && st.State == hypervisor.MigActive:
		return false, true, nil
	}
	return false, false, fmt.Errorf("migration: not a verified incoming copy (state %s)", st.State)
}

// FinishCheck allows destroying the source copy after the commit only if
// its transfer completed (the copy is paused for good).
func FinishCheck(st hypervisor.MigrationStatus) error {
	if st.State != hypervisor.MigCompleted {
		return fmt.Errorf("migration: refusing to destroy the source: its migration is %s, not completed", st.State)
	}
	return nil
}

// AbortCheck allows destroying a destination copy after a rollback only
// if it does not run (a running one was committed).
func AbortCheck(state hypervisor.State) error {
	if state == hypervisor.StateRunning {
		return errors.New("migration: refusing to destroy the destination copy: it is running (committed?)")
	}
	return nil
}
