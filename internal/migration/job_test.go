package migration

import (
	"errors"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func TestJobPhase(t *testing.T) {
	active := hypervisor.MigrationStatus{State: hypervisor.MigActive}
	done := hypervisor.MigrationStatus{State: hypervisor.MigCompleted}
	verified := hypervisor.MigrationStatus{State: hypervisor.MigCompleted, Verified: true}
	failed := hypervisor.MigrationStatus{State: hypervisor.MigFailed, Error: "boom"}
	cancelled := hypervisor.MigrationStatus{State: hypervisor.MigCancelled}
	streamErr := errors.New("link reset")
	for _, c := range []struct {
		name      string
		role      Role
		phase     Phase
		st        hypervisor.MigrationStatus
		streamErr error
		want      Phase
		why       string
	}{
		{"source sending", Source, PhaseTransferring, active, nil, PhaseTransferring, ""},
		{"source sent all", Source, PhaseTransferring, done, nil, PhaseCompleted, ""},
		{"destination complete but unverified waits", Destination, PhaseTransferring, done, nil, PhaseTransferring, ""},
		{"destination verified", Destination, PhaseTransferring, verified, nil, PhaseCompleted, ""},
		{"destination verified before its stream was seen", Destination, PhasePreparing, verified, nil, PhaseCompleted, ""},
		{"a completed job is not completed again", Source, PhaseCompleted, done, nil, PhaseCompleted, ""},
		{"a committed destination stays committed", Destination, PhaseCommitted, verified, nil, PhaseCommitted, ""},
		{"failure while sending", Source, PhaseTransferring, failed, nil, PhaseFailed, "boom"},
		{"no failure after completed", Destination, PhaseCompleted, failed, nil, PhaseCompleted, ""},
		{"no failure after finished", Source, PhaseFinished, failed, nil, PhaseFinished, ""},
		{"cancelled while sending", Source, PhaseTransferring, cancelled, nil, PhaseCancelled, ""},
		{"a rolled-back source stays rolled back", Source, PhaseRolledBack, cancelled, nil, PhaseRolledBack, ""},
		{"stream failed before the destination saw it", Destination, PhasePreparing, active, streamErr, PhaseFailed, "link reset"},
		{"a stream error while transferring waits for the hypervisor's word", Destination, PhaseTransferring, active, streamErr, PhaseTransferring, ""},
	} {
		got, why := JobPhase(c.role, c.phase, c.st, c.streamErr)
		if got != c.want || why != c.why {
			t.Errorf("%s: JobPhase = %s %q, want %s %q", c.name, got, why, c.want, c.why)
		}
	}
}

func TestResumeOnVerify(t *testing.T) {
	for _, c := range []struct {
		role     Role
		from, to Phase
		armed    bool
		want     bool
	}{
		{Destination, PhaseTransferring, PhaseCompleted, true, true},
		{Destination, PhaseTransferring, PhaseCompleted, false, false},
		{Source, PhaseTransferring, PhaseCompleted, true, false},
		{Destination, PhaseCompleted, PhaseCompleted, true, false},
		{Destination, PhaseTransferring, PhaseFailed, true, false},
	} {
		if got := ResumeOnVerify(c.role, c.from, c.to, c.armed); got != c.want {
			t.Errorf("ResumeOnVerify(%+v) = %v", c, got)
		}
	}
}

func TestSourceAndDestinationVerbs(t *testing.T) {
	for _, c := range []struct {
		st   hypervisor.MigrationStatus
		verb SourceVerb
		err  error
	}{
		{hypervisor.MigrationStatus{State: hypervisor.MigActive}, CancelTransfer, nil},
		{hypervisor.MigrationStatus{State: hypervisor.MigCompleted}, ResumeCopy, nil},
		{hypervisor.MigrationStatus{State: hypervisor.MigFailed}, KeepRunning, nil},
		{hypervisor.MigrationStatus{State: hypervisor.MigCancelled}, KeepRunning, nil},
		{hypervisor.MigrationStatus{}, KeepRunning, nil},
		{hypervisor.MigrationStatus{State: hypervisor.MigActive, Postcopy: hypervisor.PostcopyActive}, KeepRunning, ErrPostcopySwitched},
		{hypervisor.MigrationStatus{State: hypervisor.MigActive, Postcopy: hypervisor.PostcopyReady}, CancelTransfer, nil},
	} {
		verb, err := RollbackVerb(c.st)
		if verb != c.verb || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("RollbackVerb(%+v) = %v, %v; want %v, %v", c.st, verb, err, c.verb, c.err)
		}
	}

	for _, c := range []struct {
		st                 hypervisor.MigrationStatus
		postcopy           bool
		pulling, wait, bad bool
	}{
		{hypervisor.MigrationStatus{State: hypervisor.MigCompleted, Verified: true}, false, false, false, false},
		{hypervisor.MigrationStatus{State: hypervisor.MigCompleted, Verified: true}, true, false, false, false},
		{hypervisor.MigrationStatus{State: hypervisor.MigCompleted}, false, false, false, true},
		{hypervisor.MigrationStatus{State: hypervisor.MigActive}, false, false, false, true},
		{hypervisor.MigrationStatus{State: hypervisor.MigActive}, true, false, true, false},
		{hypervisor.MigrationStatus{State: hypervisor.MigActive, Postcopy: hypervisor.PostcopyActive}, true, true, false, false},
		{hypervisor.MigrationStatus{State: hypervisor.MigActive, Postcopy: hypervisor.PostcopyActive}, false, false, false, true},
		{hypervisor.MigrationStatus{State: hypervisor.MigFailed}, true, false, false, true},
	} {
		pulling, wait, err := CommitCheck(c.st, c.postcopy)
		if pulling != c.pulling || wait != c.wait || (err != nil) != c.bad {
			t.Errorf("CommitCheck(%+v, %v) = %v %v %v", c.st, c.postcopy, pulling, wait, err)
		}
	}

	if FinishCheck(hypervisor.MigrationStatus{State: hypervisor.MigCompleted}) != nil {
		t.Error("a completed source may be destroyed")
	}
	for _, s := range []string{hypervisor.MigActive, hypervisor.MigFailed, hypervisor.MigCancelled, ""} {
		if FinishCheck(hypervisor.MigrationStatus{State: s}) == nil {
			t.Errorf("a source whose migration is %q was allowed to go", s)
		}
	}
	if AbortCheck(hypervisor.StateRunning) == nil {
		t.Error("a running destination copy was allowed to go")
	}
	if AbortCheck(hypervisor.StatePaused) != nil {
		t.Error("a paused destination copy may be destroyed")
	}
}

func TestJobStopAndCopyBudget(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, c := range []struct{ limit, src, dst, want time.Duration }{
		// 300 − (30 queue + 25 one-way + 50 repair + 30 fixed) = 165
		{ms(300), ms(10), ms(40), ms(165)},
		{ms(300), 0, 0, ms(240)},
		// A long path leaves at least a sixth of the limit.
		{ms(300), ms(200), ms(200), ms(50)},
		{ms(1000), ms(50), ms(50), ms(790)},
	} {
		if got := StopAndCopy(c.limit, c.src, c.dst); got != c.want {
			t.Errorf("StopAndCopy(%v, %v, %v) = %v, want %v", c.limit, c.src, c.dst, got, c.want)
		}
	}
}
