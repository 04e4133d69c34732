package migration

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// The integration matrix of internal/agent/orchestrate_test.go
// (TestMigrationFailures, TestArmedDestinationGone,
// TestPostcopyOrchestration), played against the pure Machine in the
// world of world_test.go. Every case also checks, on every step, that
// nothing follows a Persist in a batch, that every order matches what
// the record already says (the arm only after the armed write landed, a
// commit only in switch-over…), that every write is true of the world
// when it lands (a commit only with a verified destination image…), and
// that two copies never run.

// gated: the gate a phase is held at, as in TestMigrationFailures.
var phaseGates = map[string]struct{ host, gate string }{
	"preparing":    {wDst, gatePrepare},
	"transferring": {wSrc, gateEnd},
	"armed":        {wDst, gateVerify},
	"switch-over":  {wDst, gateResume},
}

// inPhase: the world is held in phase.
func inPhase(w *world, phase string) func() bool {
	return func() bool {
		switch phase {
		case "preparing":
			return w.store.State == Preparing && w.atGate(wDst, gatePrepare)
		case "transferring":
			// Bytes flow; the source holds only its last chunk.
			v := w.hosts[wSrc].vm
			return w.store.State == Transferring && v != nil && v.mig.Transferred > 0
		case "armed":
			// The arm order arrived; the image waits to be verified.
			j := w.hosts[wDst].job
			return w.store.Armed() && j != nil && j.armed && w.atGate(wDst, gateVerify)
		case "switch-over":
			return w.store.State == SwitchOver && w.atGate(wDst, gateResume)
		}
		panic(phase)
	}
}

// inject does what TestMigrationFailures does for failure, the world
// held at gate g.
func inject(w *world, failure string, g struct{ host, gate string }) {
	release := func() { w.release(g.host, g.gate) }
	switch failure {
	case "source-dies", "destination-dies":
		h := map[string]string{"source-dies": wSrc, "destination-dies": wDst}[failure]
		w.kill(h)
		w.after(releaseIn, release)
		w.after(agentAway, func() { w.restart(h) })
	case "destination-fails":
		w.hosts[wDst].badImage = true
		release()
	case "link-cut":
		if !w.cutLink() {
			w.t.Fatal("no link to cut")
		}
		release()
	case "mmc-restart":
		w.stopMMC()
		w.after(releaseIn, release)
		w.after(mmcAway, w.startMMC)
	case "cancel":
		w.cancel()
		w.after(releaseIn, release)
	default:
		panic(failure)
	}
}

// TestFailureMatrix is TestMigrationFailures: each failure at each phase.
func TestFailureMatrix(t *testing.T) {
	phases := []string{"preparing", "transferring", "armed", "switch-over"}
	failures := []string{"source-dies", "destination-dies", "destination-fails", "link-cut", "mmc-restart", "cancel"}
	want := func(phase, failure string) State {
		switch {
		case phase == "switch-over":
			return Completed // committed: only forward
		case phase == "armed" && failure == "destination-fails":
			return Failed // its own word that its copy cannot run
		case phase == "armed":
			return Completed // only the destination decides now
		case failure == "cancel":
			return Cancelled
		case phase == "transferring" && failure == "mmc-restart":
			return Completed // the transfer went on without the MMC
		}
		return Failed
	}
	for _, phase := range phases {
		for _, failure := range failures {
			t.Run(phase+"/"+failure, func(t *testing.T) {
				w := newWorld(t, Options{})
				g := phaseGates[phase]
				w.hold(g.host, g.gate)
				w.when(phase, inPhase(w, phase), func() { inject(w, failure, g) })
				w.run()
				if !w.fired(phase) {
					t.Fatalf("the migration never reached %s (outcome %s)", phase, w.store.State)
				}
				w.expectOutcome(want(phase, failure))
				if failure == "cancel" {
					if phase == "switch-over" || phase == "armed" {
						if w.cancelErr == nil || !errors.Is(w.cancelErr, ErrNotCancellable) || w.cancelled {
							t.Fatalf("a committed (or armed) migration was cancelled (%v)", w.cancelErr)
						}
					} else if w.cancelErr != nil || !w.store.CancelRequested || w.store.Outcome != Cancelled {
						t.Fatalf("cancel answered %v; record %+v", w.cancelErr, w.store)
					}
				}
				if phase == "armed" && failure == "mmc-restart" {
					// It verified while the MMC was down and resumed by
					// itself, long before the commit.
					r := w.store
					if r.CommittedAt.Sub(r.ResumedAt) < 200*time.Millisecond {
						t.Fatalf("an armed destination waited for the commit: resumed %v, committed %v", r.ResumedAt.Sub(t0), r.CommittedAt.Sub(t0))
					}
				}
			})
		}
	}
}

// TestArmedDestinationGone: an armed migration whose destination agent
// restarted (its job gone) and whose copy then shows failed.
func TestArmedDestinationGone(t *testing.T) {
	for _, mayHaveRun := range []bool{false, true} {
		name := "may-have-run=false"
		if mayHaveRun {
			name = "may-have-run=true"
		}
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, Options{})
			w.hold(wDst, gateVerify)
			w.when("armed", inPhase(w, "armed"), func() {
				w.kill(wDst)
				w.hosts[wDst].mayHaveRun = mayHaveRun
				w.hosts[wDst].badImage = true
				w.release(wDst, gateVerify)
				w.after(releaseIn, func() { w.restart(wDst) })
			})
			if !mayHaveRun {
				// Its agent never recorded resuming it: it never ran.
				w.run()
				w.expectOutcome(Failed)
				return
			}
			// It may have run: nothing here can tell, so nothing is
			// rolled back (past several stall timeouts): the VM stays
			// paused at the source, never two running.
			w.runFor(simLimit)
			if !w.fired("armed") {
				t.Fatal("never armed")
			}
			if w.store.State != Transferring || w.m == nil || w.m.Done() || w.ended != 0 {
				t.Fatalf("an armed migration whose destination may have run ended %s (%q)", w.store.State, w.store.Error)
			}
			if n := w.running(); n != 0 {
				t.Fatalf("%d running copies, want none", n)
			}
			if v := w.hosts[wSrc].vm; v == nil || v.state != hypervisor.StatePaused {
				t.Fatalf("the source copy is not paused: %+v", v)
			}
			if v := w.hosts[wDst].vm; v == nil || v.mig.State != hypervisor.MigFailed {
				t.Fatalf("the destination copy: %+v", v)
			}
			if !w.loggedAt(slog.LevelError, "cannot say whether it ran") {
				t.Error("no error logged for an operator")
			}
			if w.sentOp(OpRollback) != 0 || w.sentOp(OpAbort) != 0 || w.sentOp(OpCommit) != 0 {
				t.Errorf("orders sent: rollback %d, abort %d, commit %d", w.sentOp(OpRollback), w.sentOp(OpAbort), w.sentOp(OpCommit))
			}
		})
	}
}

// TestPostcopy is TestPostcopyOrchestration.
func TestPostcopy(t *testing.T) {
	type gate struct{ host, gate string }
	cases := []struct {
		name    string
		hold    gate
		inState func(w *world) bool
		inject  func(w *world)
		want    State
		outlive bool // the agents' actions outlive the MMC's session
	}{
		{name: "clean", want: Completed},
		{name: "mmc-restart-while-switching", hold: gate{wSrc, gateSwitch},
			inState: func(w *world) bool { return w.store.State == Postcopy && w.atGate(wSrc, gateSwitch) },
			inject: func(w *world) {
				w.stopMMC()
				w.after(releaseIn, func() { w.release(wSrc, gateSwitch) })
				w.after(2*releaseIn+mmcAway, w.startMMC)
			}, want: Completed},
		{name: "mmc-restart-while-switching/switched-while-away", hold: gate{wSrc, gateSwitch}, outlive: true,
			inState: func(w *world) bool { return w.store.State == Postcopy && w.atGate(wSrc, gateSwitch) },
			inject: func(w *world) {
				w.stopMMC()
				w.after(releaseIn, func() {
					w.release(wSrc, gateSwitch)
					if w.hosts[wSrc].vm.mig.Postcopy != hypervisor.PostcopyActive {
						w.t.Error("the source did not switch while the MMC was away")
					}
				})
				w.after(2*releaseIn+mmcAway, w.startMMC)
			}, want: Completed},
		{name: "source-dies-while-switching", hold: gate{wSrc, gateSwitch},
			inState: func(w *world) bool { return w.store.State == Postcopy && w.atGate(wSrc, gateSwitch) },
			inject: func(w *world) {
				w.kill(wSrc) // its stream goes: the source gives up the offer and runs on
				w.release(wSrc, gateSwitch)
				w.after(releaseIn, func() { w.restart(wSrc) })
			}, want: Failed},
		{name: "cancel-while-switching", hold: gate{wSrc, gateSwitch},
			inState: func(w *world) bool { return w.store.State == Postcopy && w.atGate(wSrc, gateSwitch) },
			inject: func(w *world) {
				w.cancel()
				w.release(wSrc, gateSwitch)
			}, want: Completed},
		{name: "mmc-restart-after-commit", hold: gate{wDst, gateResume},
			inState: func(w *world) bool { return w.store.State == SwitchOver && w.atGate(wDst, gateResume) },
			inject: func(w *world) {
				w.stopMMC()
				w.after(releaseIn, func() { w.release(wDst, gateResume) })
				w.after(mmcAway, w.startMMC)
			}, want: Completed},
		{name: "mmc-restart-after-commit/resumed-while-away", hold: gate{wDst, gateResume}, outlive: true,
			inState: func(w *world) bool { return w.store.State == SwitchOver && w.atGate(wDst, gateResume) },
			inject: func(w *world) {
				w.stopMMC()
				w.after(releaseIn, func() {
					w.release(wDst, gateResume)
					if w.hosts[wDst].vm.state != hypervisor.StateRunning {
						w.t.Error("the destination did not resume while the MMC was away")
					}
				})
				w.after(mmcAway, w.startMMC)
			}, want: Completed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, Options{AllowPostcopy: true})
			w.actionsOutliveMMC = tc.outlive
			if tc.hold.gate != "" {
				w.hold(tc.hold.host, tc.hold.gate)
			}
			if tc.inject != nil {
				w.when(tc.name, func() bool { return tc.inState(w) }, func() { tc.inject(w) })
			}
			w.run()
			if tc.inject != nil && !w.fired(tc.name) {
				t.Fatalf("the failure was never injected (outcome %s)", w.store.State)
			}
			w.expectOutcome(tc.want)
			if tc.name == "cancel-while-switching" && (w.cancelErr == nil || w.cancelled) {
				t.Fatal("a migration switching to post-copy was cancelled")
			}
			r := w.store
			if r.State == Completed {
				if !r.Postcopy || !r.Verified || r.TotalMS <= 0 || r.PausedAt.IsZero() {
					t.Fatalf("completed without a post-copy report: %+v", r)
				}
				if tc.name == "clean" && !r.ResumedAt.Before(r.VerifiedAt) {
					t.Errorf("the destination resumed at %v, after it had every page (%v): not post-copy",
						r.ResumedAt.Sub(t0), r.VerifiedAt.Sub(t0))
				}
			}
		})
	}
}

// TestStaleWriteWithCancel: an administrator's cancel lands just before
// the machine's write that arms (or commits): the write comes back
// Stale with the cancel in the record, and the machine rolls back
// instead — no arm, no commit ever leaves.
func TestStaleWriteWithCancel(t *testing.T) {
	t.Run("arm", func(t *testing.T) {
		w := newWorld(t, Options{})
		hooked := false
		w.beforePersist = func(p Persist) {
			if !hooked && p.Rec.Armed() && !w.store.Armed() {
				hooked = true
				w.cancel()
			}
		}
		w.run()
		if !hooked || w.cancelErr != nil {
			t.Fatalf("the cancel did not race the armed write (hooked %v, %v)", hooked, w.cancelErr)
		}
		w.expectOutcome(Cancelled)
		if n := w.sentOp(OpArm); n != 0 {
			t.Fatalf("%d arm orders sent", n)
		}
		for _, r := range w.persists {
			if r.Armed() {
				t.Fatalf("an armed record was written over the cancel: v%d", r.Version)
			}
		}
	})
	t.Run("commit", func(t *testing.T) {
		// Not armed (the MMC was away when the source completed): the
		// restarted MMC sees the verified image and commits.
		w := newWorld(t, Options{})
		w.hold(wSrc, gateEnd)
		w.when("transferring", inPhase(w, "transferring"), func() { inject(w, "mmc-restart", phaseGates["transferring"]) })
		hooked := false
		w.beforePersist = func(p Persist) {
			if !hooked && p.Rec.State == SwitchOver && w.store.State == Transferring {
				hooked = true
				w.cancel()
			}
		}
		w.run()
		if !hooked || w.cancelErr != nil {
			t.Fatalf("the cancel did not race the commit (hooked %v, %v)", hooked, w.cancelErr)
		}
		w.expectOutcome(Cancelled)
		if n := w.sentOp(OpCommit); n != 0 {
			t.Fatalf("%d commit orders sent", n)
		}
	})
}

// TestFailedWrites: a write that fails is decided again later; nothing
// it would have said leaves meanwhile.
func TestFailedWrites(t *testing.T) {
	for _, st := range []State{Preparing, Transferring, SwitchOver, Completed} {
		t.Run(string(st), func(t *testing.T) {
			w := newWorld(t, Options{})
			failed := false
			w.beforePersist = func(p Persist) {
				if !failed && p.Rec.State == st && (st != Transferring || p.Rec.Armed()) {
					failed = true
					w.failWrites = 2
				}
			}
			w.run()
			if !failed {
				t.Fatal("no write failed")
			}
			w.expectOutcome(Completed)
		})
	}
}

// ---- hand-driven machines ----

// bench steps a machine by hand against a store of one record.
type bench struct {
	t   *testing.T
	m   *Machine
	now time.Time
	rec Record
}

func newBench(t *testing.T, rec Record) *bench {
	return &bench{t: t, m: New(rec), now: t0, rec: rec}
}

func (b *bench) step(in Input) []Command {
	b.t.Helper()
	out := b.m.Step(in, b.now)
	checkBatch(b.t, in, out)
	return out
}

// land answers out's Persist (and those that follow) as the store does,
// returning everything emitted.
func (b *bench) land(out []Command) []Command {
	b.t.Helper()
	all := out
	for n := 0; ; n++ {
		p, ok := lastPersist(out)
		if !ok {
			return all
		}
		if n > 100 {
			b.t.Fatalf("over 100 writes in a row: %s", describe(all[len(all)-8:]))
		}
		if p.IfVersion != b.rec.Version {
			out = b.step(Persisted{Rec: b.rec, Stale: true})
		} else {
			r := p.Rec
			r.Version = p.IfVersion + 1
			b.rec = r
			out = b.step(Persisted{Rec: r})
		}
		all = append(all, out...)
	}
}

func lastPersist(out []Command) (Persist, bool) {
	if len(out) == 0 {
		return Persist{}, false
	}
	p, ok := out[len(out)-1].(Persist)
	return p, ok
}

func persistsIn(out []Command) []Persist {
	var ps []Persist
	for _, c := range out {
		if p, ok := c.(Persist); ok {
			ps = append(ps, p)
		}
	}
	return ps
}

func sendsIn(out []Command, op Op) []Send {
	var ss []Send
	for _, c := range out {
		if s, ok := c.(Send); ok && s.Op == op {
			ss = append(ss, s)
		}
	}
	return ss
}

func sendTo(t *testing.T, out []Command, op Op, host string) Send {
	t.Helper()
	for _, s := range sendsIn(out, op) {
		if s.Host == host {
			return s
		}
	}
	t.Fatalf("no %s to %s in %s", op, host, describe(out))
	return Send{}
}

func transferringRec() Record {
	return Record{ID: wID, VM: wVM, From: wSrc, To: wDst, State: Transferring, Version: 5,
		Created: t0, Updated: t0, Started: t0}
}

var verifiedReport = &Report{Phase: PhaseCompleted,
	Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted, Verified: true, Finished: t0}}

// TestPostedOnlyFromItsAgent: a phase posted by the wrong host, or in
// the wrong role, changes nothing.
func TestPostedOnlyFromItsAgent(t *testing.T) {
	cases := []struct {
		p    Posted
		want string // "": nothing; else the write it causes
	}{
		{Posted{Host: wSrc, Role: Destination, Phase: PhaseCompleted}, ""},
		{Posted{Host: wSrc, Role: Destination, Phase: PhaseCommitted}, ""},
		{Posted{Host: "h3", Role: Destination, Phase: PhaseCompleted}, ""},
		{Posted{Host: "h3", Role: Destination, Phase: PhaseCommitted}, ""},
		{Posted{Host: wDst, Role: Source, Phase: PhaseCompleted}, ""},
		{Posted{Host: "h3", Role: Source, Phase: PhaseCompleted}, ""},
		{Posted{Host: wSrc, Role: Source, Phase: PhaseCommitted}, ""},
		{Posted{Host: wDst, Role: Destination, Phase: PhaseTransferring}, ""},
		{Posted{Host: wDst, Role: Destination, Phase: PhaseFailed}, ""},
		{Posted{Host: wSrc, Role: Source, Phase: PhaseTransferring}, ""},
		// Controls: the migration's own agents in their roles.
		{Posted{Host: wDst, Role: Destination, Phase: PhaseCompleted}, "commit"},
		{Posted{Host: wDst, Role: Destination, Phase: PhaseCommitted}, "commit"},
		{Posted{Host: wSrc, Role: Source, Phase: PhaseCompleted}, "arm"},
	}
	for _, tc := range cases {
		t.Run(string(tc.p.Role)+"@"+tc.p.Host+"/"+string(tc.p.Phase), func(t *testing.T) {
			b := newBench(t, transferringRec())
			b.step(Start{Resumed: true})
			out := b.step(tc.p)
			b.now = b.now.Add(time.Second)
			out = append(out, b.step(Tick{})...)
			ps := persistsIn(out)
			switch tc.want {
			case "":
				if len(ps) != 0 || b.m.Record().Version != 5 {
					t.Fatalf("a stray post caused %s", describe(out))
				}
				for _, c := range out {
					if s, ok := c.(Send); ok && s.Op != OpStatus {
						t.Fatalf("a stray post sent %s", s.Op)
					}
				}
			case "commit":
				if len(ps) != 1 || ps[0].Rec.State != SwitchOver {
					t.Fatalf("no commit: %s", describe(out))
				}
			case "arm":
				if len(ps) != 1 || !ps[0].Rec.Armed() || ps[0].Rec.State != Transferring {
					t.Fatalf("no armed write: %s", describe(out))
				}
			}
		})
	}
}

// TestRepliesForAStateLeft: an answer to an order sent in a state the
// migration has left since is ignored.
func TestRepliesForAStateLeft(t *testing.T) {
	t.Run("verified image after a cancel", func(t *testing.T) {
		b := newBench(t, transferringRec())
		dst := sendTo(t, b.step(Start{Resumed: true}), OpStatus, wDst)
		c := b.rec
		c.CancelRequested, c.Version = true, c.Version+1
		b.rec = c
		out := b.land(b.step(Changed{Rec: c}))
		if b.rec.State != RollingBack || b.rec.Outcome != Cancelled {
			t.Fatalf("the cancel was not acted on: %s", describe(out))
		}
		rb := sendTo(t, out, OpRollback, wSrc)
		out = b.land(b.step(Reply{Seq: dst.Seq, Report: verifiedReport}))
		if len(persistsIn(out)) != 0 || len(sendsIn(out, OpCommit)) != 0 || b.rec.State != RollingBack {
			t.Fatalf("a transferring-time report of a verified image moved a rollback: %s", describe(out))
		}
		out = b.land(b.step(Reply{Seq: rb.Seq, Report: &Report{Phase: PhaseRolledBack}}))
		ab := sendTo(t, out, OpAbort, wDst)
		b.land(b.step(Reply{Seq: ab.Seq, Report: &Report{Phase: PhaseAborted}}))
		if b.rec.State != Cancelled || !b.m.Done() {
			t.Fatalf("ended %s", b.rec.State)
		}
	})
	t.Run("failure reports after the commit", func(t *testing.T) {
		b := newBench(t, transferringRec())
		out := b.step(Start{Resumed: true})
		src, dst := sendTo(t, out, OpStatus, wSrc), sendTo(t, out, OpStatus, wDst)
		out = b.land(b.step(Posted{Host: wDst, Role: Destination, Phase: PhaseCommitted}))
		if b.rec.State != SwitchOver {
			t.Fatalf("no commit: %s", describe(out))
		}
		commit := sendTo(t, out, OpCommit, wDst)
		failed := &Report{Phase: PhaseFailed, Error: "boom", Status: hypervisor.MigrationStatus{State: hypervisor.MigFailed, Error: "boom"}}
		for _, seq := range []uint64{src.Seq, dst.Seq, 999} {
			out = b.land(b.step(Reply{Seq: seq, Report: failed}))
			if len(persistsIn(out)) != 0 || b.rec.State != SwitchOver {
				t.Fatalf("reply %d from transferring moved a committed migration: %s", seq, describe(out))
			}
		}
		out = b.land(b.step(Reply{Seq: commit.Seq, Report: &Report{Phase: PhaseCommitted, At: t0.UnixNano()}}))
		sendTo(t, out, OpStatus, wSrc) // on, forward: the source's figures
	})
	t.Run("prepare answered after a restart", func(t *testing.T) {
		// A new drive of a preparing migration rolls back; an answer to
		// nothing it sent is nothing.
		r := transferringRec()
		r.State = Preparing
		b := newBench(t, r)
		out := b.land(b.step(Start{Resumed: true}))
		if b.rec.State != RollingBack {
			t.Fatalf("a restarted preparation did not roll back: %s", describe(out))
		}
		out = b.step(Reply{Seq: 1, Report: &Report{Phase: PhasePreparing}})
		if len(persistsIn(out)) != 0 {
			t.Fatalf("a stray reply wrote: %s", describe(out))
		}
	})
}

// TestStaleWriteRollsBack: by hand, a Stale answer whose record carries
// a cancel turns an arm or a commit into a rollback.
func TestStaleWriteRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		post Posted
		op   Op
	}{
		{"arm", Posted{Host: wSrc, Role: Source, Phase: PhaseCompleted}, OpArm},
		{"commit", Posted{Host: wDst, Role: Destination, Phase: PhaseCompleted}, OpCommit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBench(t, transferringRec())
			b.step(Start{Resumed: true})
			out := b.step(tc.post)
			p, ok := lastPersist(out)
			if !ok || (tc.op == OpArm && !p.Rec.Armed()) || (tc.op == OpCommit && p.Rec.State != SwitchOver) {
				t.Fatalf("no %s write: %s", tc.name, describe(out))
			}
			c := b.rec // the cancel lands first
			c.CancelRequested, c.Version = true, c.Version+1
			b.rec = c
			all := b.land(out)
			if len(sendsIn(all, tc.op)) != 0 {
				t.Fatalf("%s sent over a cancel: %s", tc.op, describe(all))
			}
			ps := persistsIn(all)
			if len(ps) != 2 || ps[1].IfVersion != c.Version {
				t.Fatalf("writes: %s", describe(all))
			}
			r := ps[1].Rec
			if r.State != RollingBack || r.Outcome != Cancelled || r.Armed() || !r.CommittedAt.IsZero() {
				t.Fatalf("after the stale write: %+v", r)
			}
			sendTo(t, all, OpRollback, wSrc)
		})
	}
}

// TestArmAfterItsWrite: the arm order leaves only once the armed write
// landed; a failed write is retried before anything is said.
func TestArmAfterItsWrite(t *testing.T) {
	b := newBench(t, transferringRec())
	b.step(Start{Resumed: true})
	out := b.step(Posted{Host: wSrc, Role: Source, Phase: PhaseCompleted})
	if p, ok := lastPersist(out); !ok || !p.Rec.Armed() || len(sendsIn(out, OpArm)) != 0 {
		t.Fatalf("want the armed write alone: %s", describe(out))
	}
	out = b.step(Persisted{Err: errors.New("store: disk full")})
	if len(sendsIn(out, OpArm)) != 0 || len(persistsIn(out)) != 0 {
		t.Fatalf("after a failed write: %s", describe(out))
	}
	if next := b.m.NextTimeout(); !next.Equal(b.now.Add(RetryEvery)) {
		t.Fatalf("retry at %v, want %v", next.Sub(t0), RetryEvery)
	}
	b.now = b.now.Add(RetryEvery / 2)
	if out := b.step(Tick{}); len(persistsIn(out)) != 0 || len(sendsIn(out, OpArm)) != 0 {
		t.Fatalf("before the retry: %s", describe(out))
	}
	b.now = b.m.NextTimeout()
	out = b.step(Tick{})
	if p, ok := lastPersist(out); !ok || !p.Rec.Armed() || len(sendsIn(out, OpArm)) != 0 {
		t.Fatalf("want the armed write again, alone: %s", describe(out))
	}
	all := b.land(out)
	arm := sendTo(t, all, OpArm, wDst)
	if !b.rec.Armed() || arm.Order.ID != wID || arm.Order.VM != wVM {
		t.Fatalf("arm %+v, record armed %v", arm, b.rec.Armed())
	}
	// Once per drive.
	out = b.land(b.step(Posted{Host: wSrc, Role: Source, Phase: PhaseCompleted}))
	b.now = b.now.Add(time.Second)
	out = append(out, b.land(b.step(Tick{}))...)
	if len(sendsIn(out, OpArm)) != 0 || len(persistsIn(out)) != 0 {
		t.Fatalf("armed twice: %s", describe(out))
	}
	// A restarted MMC arms again (the order may not have left).
	b2 := newBench(t, b.rec)
	sendTo(t, b2.step(Start{Resumed: true}), OpArm, wDst)
}

// TestPlannedChecks: what a planned migration checks before it changes
// anything.
func TestPlannedChecks(t *testing.T) {
	spec := &hypervisor.Spec{Name: wVM, Memory: 1 << 20, VCPUs: 1}
	cases := []struct {
		name    string
		env     Env
		cancel  bool
		state   State
		outcome State
		errHas  string
	}{
		{"ok", Env{SrcOnline: true, DstOnline: true, Spec: spec}, false, Preparing, "", ""},
		{"source-offline", Env{DstOnline: true, Spec: spec}, false, RollingBack, Failed, "offline"},
		{"destination-offline", Env{SrcOnline: true, Spec: spec}, false, RollingBack, Failed, "offline"},
		{"vm-gone", Env{SrcOnline: true, DstOnline: true}, false, RollingBack, Failed, "no longer on h1"},
		{"vm-elsewhere", Env{SrcOnline: true, DstOnline: true, Spec: spec, OtherHost: "h3"}, false, RollingBack, Failed, "reported by h3"},
		{"vm-here-only", Env{SrcOnline: true, DstOnline: true, Spec: spec, OtherHost: wSrc}, false, Preparing, "", ""},
		{"cancelled", Env{SrcOnline: true, DstOnline: true, Spec: spec}, true, RollingBack, Cancelled, "cancelled"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := transferringRec()
			r.State, r.Started, r.CancelRequested = Planned, time.Time{}, tc.cancel
			b := newBench(t, r)
			out := b.step(Start{Env: tc.env})
			p, ok := lastPersist(out)
			if !ok || len(out) != 1 {
				t.Fatalf("want one write: %s", describe(out))
			}
			if p.Rec.State != tc.state || p.Rec.Outcome != tc.outcome || !strings.Contains(p.Rec.Error, tc.errHas) || p.IfVersion != r.Version {
				t.Fatalf("wrote %s/%s %q if v%d", p.Rec.State, p.Rec.Outcome, p.Rec.Error, p.IfVersion)
			}
		})
	}
}

func TestStopAndCopy(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		limit, src, dst, want time.Duration
	}{
		// fixed = 30 ms queue + link/2 + link + 30 ms, link = src+dst
		{300 * ms, 0, 0, 240 * ms},
		{300 * ms, 10 * ms, 20 * ms, 195 * ms},
		{1000 * ms, 40 * ms, 40 * ms, 820 * ms},
		{600 * ms, 50 * ms, 50 * ms, 390 * ms},
		{120 * ms, 5 * ms, 5 * ms, 45 * ms},
		{300 * ms, 100 * ms, 100 * ms, 50 * ms}, // floor: a sixth
		{60 * ms, 0, 0, 10 * ms},                // 0 left: the floor
		{300 * ms, 58 * ms, 0, 153 * ms},        // one side measured
		{6 * time.Second, time.Second, time.Second, 2940 * ms},
	}
	for _, c := range cases {
		if got := StopAndCopy(c.limit, c.src, c.dst); got != c.want {
			t.Errorf("StopAndCopy(%v, %v, %v) = %v, want %v", c.limit, c.src, c.dst, got, c.want)
		}
	}
}

// TestLongOutages: agents away (or a transfer stuck) for longer than the
// machine waits.
func TestLongOutages(t *testing.T) {
	t.Run("source away past the report wait after the commit", func(t *testing.T) {
		w := newWorld(t, Options{})
		w.hold(wDst, gateResume)
		w.when("switch-over", inPhase(w, "switch-over"), func() {
			w.kill(wSrc)
			w.release(wDst, gateResume)
			w.after(SourceReportWait+30*time.Second, func() { w.restart(wSrc) })
		})
		w.run()
		// Completed without the source's figures; its copy is destroyed
		// by the cleanup once its agent is back.
		w.expectOutcome(Completed)
		if !w.store.PausedAt.IsZero() || w.store.DowntimeMS != 0 {
			t.Errorf("source figures from an agent that was away: %+v", w.store)
		}
	})
	t.Run("stuck transfer", func(t *testing.T) {
		w := newWorld(t, Options{})
		w.hold(wSrc, gateEnd) // never released
		w.run()
		w.expectOutcome(Failed)
		if !strings.Contains(w.store.Error, "no progress") {
			t.Errorf("error %q", w.store.Error)
		}
		if d := w.store.Finished.Sub(w.store.Started); d < StallTimeout || d > StallTimeout+10*time.Second {
			t.Errorf("rolled back after %v, want about %v", d, StallTimeout)
		}
	})
}

// TestArmedDestinationsOwnWord: an armed destination whose job itself
// says its copy failed is rolled back even when its agent cannot rule
// out a resume (an agent without a data directory answers may-have-run
// for every copy): the job's own word is that the copy never ran.
func TestArmedDestinationsOwnWord(t *testing.T) {
	w := newWorld(t, Options{})
	w.hosts[wDst].alwaysMayHaveRun = true
	g := phaseGates["armed"]
	w.hold(g.host, g.gate)
	w.when("armed", inPhase(w, "armed"), func() { inject(w, "destination-fails", g) })
	w.run()
	w.expectOutcome(Failed)
}

// An administrator's new cap reaches the running source once; a drive
// that took over a running transfer (an MMC restart) sends the record's
// cap once; a migration that never transferred is never sent one.
func TestSetBandwidth(t *testing.T) {
	t.Run("mid-transfer", func(t *testing.T) {
		w := newWorld(t, Options{MaxRate: 1e6})
		w.hold(wSrc, gateEnd)
		w.when("transferring", inPhase(w, "transferring"), func() {
			w.setRate(5e6)
			w.after(time.Second, func() { w.release(wSrc, gateEnd) })
		})
		w.run()
		w.expectOutcome(Completed)
		if n := w.sentOp(OpSetBandwidth); n != 1 {
			t.Fatalf("%d set-bandwidth orders, want 1", n)
		}
		if r := w.hosts[wSrc].rate; r != 5e6 {
			t.Fatalf("the source's cap is %v, want 5e6", r)
		}
	})
	t.Run("takeover", func(t *testing.T) {
		w := newWorld(t, Options{MaxRate: 2e6})
		w.hold(wSrc, gateEnd)
		w.when("transferring", inPhase(w, "transferring"), func() {
			inject(w, "mmc-restart", phaseGates["transferring"])
		})
		w.run()
		w.expectOutcome(Completed)
		if n := w.sentOp(OpSetBandwidth); n != 1 {
			t.Fatalf("%d set-bandwidth orders, want 1", n)
		}
		for _, c := range w.sends {
			if c.Op == OpSetBandwidth && c.Order.Params.MaxBandwidth != 2e6 {
				t.Fatalf("the takeover sent the cap %v, want the record's 2e6", c.Order.Params.MaxBandwidth)
			}
		}
	})
	t.Run("unchanged", func(t *testing.T) {
		w := newWorld(t, Options{MaxRate: 1e6})
		w.run()
		w.expectOutcome(Completed)
		if n := w.sentOp(OpSetBandwidth); n != 0 {
			t.Fatalf("%d set-bandwidth orders for a cap nobody changed", n)
		}
	})
}

// TestTakeoverStartsAnUnstartedSource: a leader that died between
// recording transferring and its start reaching the source leaves a
// source with no transfer. The drive that takes over starts it (once)
// instead of failing the migration; a source whose transfer this drive
// knows of and that then has none (its agent restarted) still fails it.
func TestTakeoverStartsAnUnstartedSource(t *testing.T) {
	none := &Report{Phase: PhaseNone}
	running := &Report{Phase: PhaseTransferring, Status: hypervisor.MigrationStatus{State: hypervisor.MigActive, Transferred: 1 << 20}}

	t.Run("never started", func(t *testing.T) {
		b := newBench(t, transferringRec())
		src := sendTo(t, b.step(Start{Resumed: true}), OpStatus, wSrc)
		out := b.land(b.step(Reply{Seq: src.Seq, Report: none}))
		if b.rec.State != Transferring || len(persistsIn(out)) != 0 {
			t.Fatalf("a source that never got its start failed the migration: %s", describe(out))
		}
		start := sendTo(t, out, OpStart, wSrc)
		out = b.land(b.step(Reply{Seq: start.Seq, Report: running}))
		b.now = b.now.Add(PollEvery)
		out = append(out, b.land(b.step(Tick{}))...)
		src = sendTo(t, out, OpStatus, wSrc)
		// Started by this drive, then gone: the agent restarted.
		out = b.land(b.step(Reply{Seq: src.Seq, Report: none}))
		if b.rec.State != RollingBack || len(sendsIn(out, OpStart)) != 0 {
			t.Fatalf("a source that lost the transfer this drive started: %s (state %s)", describe(out), b.rec.State)
		}
	})
	t.Run("running, then gone", func(t *testing.T) {
		b := newBench(t, transferringRec())
		src := sendTo(t, b.step(Start{Resumed: true}), OpStatus, wSrc)
		b.land(b.step(Reply{Seq: src.Seq, Report: running}))
		b.now = b.now.Add(PollEvery)
		src = sendTo(t, b.land(b.step(Tick{})), OpStatus, wSrc)
		out := b.land(b.step(Reply{Seq: src.Seq, Report: none}))
		if b.rec.State != RollingBack || len(sendsIn(out, OpStart)) != 0 {
			t.Fatalf("a transfer seen running and then gone was started again: %s (state %s)", describe(out), b.rec.State)
		}
	})
}

// TestStartAt: a migration whose record says when it may start (an
// evacuation's next VM on a link) prepares the destination and opens
// the link at once but records transferring, and so starts the source,
// only then; never later than MaxStartHold after it was planned; and a
// cancel while it waits ends it.
func TestStartAt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration // StartAt − Created
		want  time.Duration // when the transfer starts, after Created
	}{
		{"held", 2 * time.Second, 2 * time.Second},
		{"bounded", time.Minute, MaxStartHold},
		{"already due", -time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, Options{})
			w.store.StartAt = t0.Add(tc.after)
			w.run()
			w.expectOutcome(Completed)
			started := w.store.Started.Sub(t0)
			if started < tc.want || started > tc.want+500*time.Millisecond {
				t.Fatalf("transfer started %v after the plan, want %v", started, tc.want)
			}
		})
	}
	t.Run("cancelled while held", func(t *testing.T) {
		w := newWorld(t, Options{})
		w.store.StartAt = t0.Add(3 * time.Second)
		w.after(time.Second, w.cancel)
		w.run()
		w.expectOutcome(Cancelled)
		if n := w.sentOp(OpStart); n != 0 {
			t.Fatalf("%d start orders for a migration cancelled before its start", n)
		}
	})
}
