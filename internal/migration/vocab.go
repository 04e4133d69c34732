package migration

// State is where a migration is in the orchestrator's persisted state
// machine:
//
//	planned → preparing → transferring ──────────────→ switch-over → completed
//	              │              └──→ postcopy ──────────↗
//	              └──────────┴──────────┴─→ rolling-back → cancelled | failed
//
// Up to and including transferring (and postcopy until the source's
// hypervisor switched) the source copy is authoritative; from
// switch-over on the destination is.
type State string

// Migration states (wire and store values: never change one).
const (
	Planned      State = "planned"
	Preparing    State = "preparing"
	Transferring State = "transferring"
	Postcopy     State = "postcopy"
	SwitchOver   State = "switch-over"
	RollingBack  State = "rolling-back"
	Completed    State = "completed"
	Cancelled    State = "cancelled"
	Failed       State = "failed"
)

// Open reports whether a migration in state s is still in progress.
func (s State) Open() bool {
	switch s {
	case Completed, Cancelled, Failed:
		return false
	}
	return true
}

// Known reports whether s is one of the states above.
func (s State) Known() bool {
	switch s {
	case Planned, Preparing, Transferring, Postcopy, SwitchOver, RollingBack, Completed, Cancelled, Failed:
		return true
	}
	return false
}

// Role is an agent's part in a migration.
type Role string

// Roles.
const (
	Source      Role = "source"
	Destination Role = "destination"
)

// Phase is where a migration agent's job is, as it reports it.
type Phase string

// Job phases (wire values).
const (
	PhaseNone         Phase = "none"         // no job here (e.g. after an agent restart)
	PhasePreparing    Phase = "preparing"    // destination: incoming VM up, waiting for the stream
	PhaseTransferring Phase = "transferring" // bytes flowing
	PhaseCompleted    Phase = "completed"    // source: all sent, VM paused; destination: image verified, VM paused
	PhaseCommitted    Phase = "committed"    // destination resumed: it is the VM now
	PhaseFinished     Phase = "finished"     // source copy destroyed after the commit
	PhaseFailed       Phase = "failed"       // see the error; source: VM running again unless it had completed
	PhaseCancelled    Phase = "cancelled"    // source: cancelled, VM running
	PhaseRolledBack   Phase = "rolled-back"  // source: VM running again
	PhaseAborted      Phase = "aborted"      // destination copy destroyed
)

// Final reports whether a job in phase p has nothing left to do on its
// own (what follows, if anything, comes as an order).
func (p Phase) Final() bool {
	switch p {
	case PhaseFinished, PhaseFailed, PhaseCancelled, PhaseRolledBack, PhaseAborted, PhaseCommitted:
		return true
	}
	return false
}

// Op is an order from the MMC to a migration agent. Every op is
// idempotent: the MMC repeats them after losing a result.
type Op string

// Ops (wire values of message.Action.Op).
const (
	OpPrepare  Op = "migrate.prepare"  // destination: start the incoming VM
	OpStart    Op = "migrate.start"    // source: start sending
	OpStatus   Op = "migrate.status"   // either: report
	OpCancel   Op = "migrate.cancel"   // source: same as rollback
	OpRollback Op = "migrate.rollback" // source: make the source copy the running VM again
	OpPostcopy Op = "migrate.postcopy" // source: switch to post-copy
	OpArm      Op = "migrate.arm"      // destination: resume by yourself once verified
	OpCommit   Op = "migrate.commit"   // destination: resume (the switch-over is on record)
	OpFinish   Op = "migrate.finish"   // source: destroy the paused copy after the commit
	OpAbort    Op = "migrate.abort"    // destination: destroy the copy after a rollback
	// OpSetBandwidth: source, change the running transfer's cap to
	// Params.MaxBandwidth (an operator changed the record's).
	OpSetBandwidth Op = "migrate.set-bandwidth"
)

// Known reports whether o is one of the ops above.
func (o Op) Known() bool {
	switch o {
	case OpPrepare, OpStart, OpStatus, OpCancel, OpRollback, OpPostcopy, OpArm, OpCommit, OpFinish, OpAbort, OpSetBandwidth:
		return true
	}
	return false
}

// Topic is the blackboard topic (and direct link name) of migration id.
func Topic(id string) string { return "migration/" + id }
