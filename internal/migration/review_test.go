package migration

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Cases from the review of the rewrite: what a re-read record, a lost
// write or a slow store must not do.

// A write whose outcome was reported lost but that landed: the re-read
// shows the machine's own terminal state. It ends once (one Ended) and
// orders nothing more.
func TestLostTerminalWriteEndsOnce(t *testing.T) {
	rec := transferringRec()
	rec.State, rec.Outcome, rec.Error = RollingBack, Failed, "source: failed"
	b := newBench(t, rec)
	out := b.step(Start{Resumed: true})
	sendTo(t, out, OpRollback, wSrc)
	out = b.step(Reply{Seq: sendsIn(out, OpRollback)[0].Seq, Report: &Report{}})
	abort := sendTo(t, out, OpAbort, wDst)
	out = b.step(Reply{Seq: abort.Seq, Report: &Report{}})
	p, ok := lastPersist(out)
	if !ok || p.Rec.State != Failed {
		t.Fatalf("no final write: %s", describe(out))
	}
	// The write lands, but its outcome is lost.
	landed := p.Rec
	landed.Version = p.IfVersion + 1
	out = b.step(Persisted{Err: errors.New("outcome unknown")})
	b.now = b.now.Add(RetryEvery)
	out = append(out, b.step(Tick{})...)
	if p, ok := lastPersist(out); !ok || p.IfVersion != rec.Version {
		t.Fatalf("the retry: %s", describe(out))
	}
	out = b.step(Persisted{Rec: landed, Stale: true})
	ended := 0
	for _, c := range out {
		switch c.(type) {
		case Ended:
			ended++
		case Send, Persist:
			t.Fatalf("a closed migration ordered %s", describe(out))
		}
	}
	if ended != 1 || !b.m.Done() {
		t.Fatalf("%d Ended, done %v: %s", ended, b.m.Done(), describe(out))
	}
}

// A re-read showing transferring that this drive's own (lost) write put
// there: the source is started, not left waiting.
func TestLostTransferringWriteStartsTheSource(t *testing.T) {
	rec := transferringRec()
	rec.State = Preparing
	b := newBench(t, rec)
	out := b.step(Start{})
	if len(out) != 2 {
		t.Fatalf("want an introduction and a preparation at once: %s", describe(out))
	}
	prep := sendTo(t, out, OpPrepare, wDst)
	b.step(Introduced{})
	out = b.step(Reply{Seq: prep.Seq, Report: &Report{}})
	p, ok := lastPersist(out)
	if !ok || p.Rec.State != Transferring {
		t.Fatalf("no transferring write: %s", describe(out))
	}
	landed := p.Rec
	landed.Version = p.IfVersion + 1
	b.step(Persisted{Err: errors.New("outcome unknown")})
	b.now = b.now.Add(RetryEvery)
	b.step(Tick{})
	out = b.step(Persisted{Rec: landed, Stale: true})
	sendTo(t, out, OpStart, wSrc)
}

// A failed progress write holds nothing up: the arm write follows at
// once when the source completes.
func TestFailedProgressWriteDelaysNothing(t *testing.T) {
	b := newBench(t, transferringRec())
	out := b.step(Start{Resumed: true})
	st := sendTo(t, out, OpStatus, wSrc)
	sendTo(t, out, OpStatus, wDst)
	out = b.step(Reply{Seq: st.Seq, Report: &Report{Phase: PhaseTransferring,
		Status: hypervisor.MigrationStatus{State: hypervisor.MigActive, Total: 100, Remaining: 50, Transferred: 50}}})
	p, ok := lastPersist(out)
	if !ok || p.Rec.Progress < 0.49 {
		t.Fatalf("no progress write: %s", describe(out))
	}
	b.step(Persisted{Err: errors.New("disk full")})
	out = b.step(Posted{Host: wSrc, Role: Source, Phase: PhaseCompleted})
	if p, ok := lastPersist(out); !ok || !p.Rec.Armed() {
		t.Fatalf("the arm waited for the failed progress write: %s", describe(out))
	}
}

// In post-copy, a source whose pre-copy finished on its own is paused:
// the destination is asked at once, and its verified post commits.
func TestPostcopyFinishedPrecopyAsksAtOnce(t *testing.T) {
	rec := transferringRec()
	rec.State, rec.AllowPostcopy = Postcopy, true
	b := newBench(t, rec)
	out := b.step(Start{Resumed: true})
	pc := sendTo(t, out, OpPostcopy, wSrc)
	out = b.step(Reply{Seq: pc.Seq, Report: &Report{Phase: PhaseCompleted,
		Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted}}})
	sendTo(t, out, OpStatus, wDst)
	out = b.step(Posted{Host: wDst, Role: Destination, Phase: PhaseCompleted})
	if p, ok := lastPersist(out); !ok || p.Rec.State != SwitchOver || !p.Rec.Verified {
		t.Fatalf("no commit on the destination's verified post: %s", describe(out))
	}
}

// A destination that never shows a verified image after the source's
// pre-copy finished in post-copy is rolled back after StallTimeout (it
// was neither armed nor committed), not waited for forever.
func TestPostcopyFinishedPrecopyStalls(t *testing.T) {
	rec := transferringRec()
	rec.State, rec.AllowPostcopy = Postcopy, true
	b := newBench(t, rec)
	out := b.step(Start{Resumed: true})
	pc := sendTo(t, out, OpPostcopy, wSrc)
	out = b.step(Reply{Seq: pc.Seq, Report: &Report{Phase: PhaseCompleted,
		Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted}}})
	st := sendTo(t, out, OpStatus, wDst)
	b.step(Reply{Seq: st.Seq, Err: errors.New("host offline")})
	for i := 0; i < 1000 && !b.m.NextTimeout().IsZero(); i++ {
		b.now = b.m.NextTimeout()
		out = b.step(Tick{})
		for _, s := range sendsIn(out, OpPostcopy) {
			b.step(Reply{Seq: s.Seq, Report: &Report{Phase: PhaseCompleted, Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted}}})
		}
		for _, s := range sendsIn(out, OpStatus) {
			b.step(Reply{Seq: s.Seq, Err: errors.New("host offline")})
		}
		if p, ok := lastPersist(out); ok {
			if p.Rec.State != RollingBack || b.now.Sub(t0) < StallTimeout {
				t.Fatalf("at %v: %s", b.now.Sub(t0), describe(out))
			}
			return
		}
	}
	t.Fatal("waited for the destination forever")
}

// A status request still out from transferring does not hold back the
// switch-over's request for the source's figures.
func TestOldRequestDoesNotBlockANewState(t *testing.T) {
	b := newBench(t, transferringRec())
	out := b.step(Start{Resumed: true})
	sendTo(t, out, OpStatus, wSrc) // never answered
	out = b.land(b.step(Posted{Host: wDst, Role: Destination, Phase: PhaseCompleted}))
	commit := sendTo(t, out, OpCommit, wDst)
	out = b.step(Reply{Seq: commit.Seq, Report: &Report{Phase: PhaseCommitted, At: t0.UnixNano()}})
	sendTo(t, out, OpStatus, wSrc)
}

// A cancel that lands while the start order is out wins over the start's
// failure.
func TestCancelBeatsAFailedStart(t *testing.T) {
	rec := transferringRec()
	rec.State = Preparing
	b := newBench(t, rec)
	prep := sendTo(t, b.step(Start{}), OpPrepare, wDst)
	b.step(Introduced{})
	out := b.land(b.step(Reply{Seq: prep.Seq, Report: &Report{}}))
	start := sendTo(t, out, OpStart, wSrc)
	cancelled := b.rec
	cancelled.CancelRequested, cancelled.Version = true, cancelled.Version+1
	b.rec = cancelled
	b.step(Changed{Rec: cancelled})
	out = b.step(Reply{Seq: start.Seq, Err: errors.New("no link")})
	if p, ok := lastPersist(out); !ok || p.Rec.Outcome != Cancelled {
		t.Fatalf("want a cancelled rollback: %s", describe(out))
	}
}

// A migration short enough to be committed before the source's agent has
// polled its hypervisor: the source's first answer has no final figures,
// so it is asked again, and the record carries the final ones.
func TestSourceFiguresAreFinal(t *testing.T) {
	b := newBench(t, transferringRec())
	b.step(Start{Resumed: true})
	out := b.land(b.step(Posted{Host: wDst, Role: Destination, Phase: PhaseCompleted}))
	commit := sendTo(t, out, OpCommit, wDst)
	out = b.step(Reply{Seq: commit.Seq, Report: &Report{Phase: PhaseCommitted, At: t0.UnixNano()}})
	st := sendTo(t, out, OpStatus, wSrc)
	out = b.step(Reply{Seq: st.Seq, Report: &Report{Phase: PhaseTransferring}})
	if len(persistsIn(out)) > 0 || len(sendsIn(out, OpFinish)) > 0 {
		t.Fatalf("completed on figures that are not final: %s", describe(out))
	}
	b.now = b.m.NextTimeout()
	out = b.step(Tick{})
	st = sendTo(t, out, OpStatus, wSrc)
	paused := t0.Add(-time.Second)
	out = b.step(Reply{Seq: st.Seq, Report: &Report{Phase: PhaseCompleted,
		Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted, Round: 3, Transferred: 1 << 20, PausedAt: paused}}})
	fin := sendTo(t, out, OpFinish, wSrc)
	out = b.step(Reply{Seq: fin.Seq, Report: &Report{}})
	p, ok := lastPersist(out)
	if !ok || p.Rec.State != Completed || p.Rec.Rounds != 3 || !p.Rec.PausedAt.Equal(paused) {
		t.Fatalf("final record without the source's figures: %s", describe(out))
	}
}

// A relayed link that moves to a direct path while the transfer runs
// goes on record (best effort, like progress); a move reported before
// the link exists, or naming no path, does not.
func TestLinkMovedIsRecorded(t *testing.T) {
	rec := transferringRec()
	rec.State = Preparing
	b := newBench(t, rec)
	prep := sendTo(t, b.step(Start{}), OpPrepare, wDst)
	b.step(LinkMoved{Path: "direct"}) // before the introduction: ignored
	b.step(Introduced{Path: "relayed", Note: "no direct path"})
	out := b.step(Reply{Seq: prep.Seq, Report: &Report{}})
	p, ok := lastPersist(out)
	if !ok || p.Rec.State != Transferring || p.Rec.Path != "relayed" {
		t.Fatalf("transferring write: %s", describe(out))
	}
	landed := p.Rec
	landed.Version = p.IfVersion + 1
	out = b.step(Persisted{Rec: landed})
	start := sendTo(t, out, OpStart, wSrc)
	b.step(Reply{Seq: start.Seq, Report: &Report{}})
	b.step(LinkMoved{Path: ""})
	out = b.step(LinkMoved{Path: "direct", Note: "moved to a direct path"})
	p, ok = lastPersist(out)
	if !ok || p.Rec.Path != "direct" || p.Rec.PathNote != "moved to a direct path" || p.Rec.State != Transferring {
		t.Fatalf("after the move: %s", describe(out))
	}
}

// TestPrepareBesideTheIntroduction: the destination is prepared while
// the agents are introduced. Transferring is written only once both are
// done, whichever finishes first; a failed introduction waits for the
// preparation's answer before rolling back (the abort must not overtake
// it); a failed preparation rolls back at once.
func TestPrepareBesideTheIntroduction(t *testing.T) {
	bad := errors.New("boom")
	cases := []struct {
		name  string
		steps func(prep Send) []Input
		want  State  // the state written after the last step ("": none)
		error string // part of the rollback's reason
	}{
		{"introduced, then prepared", func(p Send) []Input {
			return []Input{Introduced{Path: "direct"}, Reply{Seq: p.Seq, Report: &Report{}}}
		}, Transferring, ""},
		{"prepared, then introduced", func(p Send) []Input {
			return []Input{Reply{Seq: p.Seq, Report: &Report{}}, Introduced{Path: "direct"}}
		}, Transferring, ""},
		{"introduced only", func(p Send) []Input { return []Input{Introduced{Path: "direct"}} }, "", ""},
		{"prepared only", func(p Send) []Input { return []Input{Reply{Seq: p.Seq, Report: &Report{}}} }, "", ""},
		{"introduction failed, preparation out", func(p Send) []Input { return []Input{Introduced{Err: bad}} }, "", ""},
		{"introduction failed, then prepared", func(p Send) []Input {
			return []Input{Introduced{Err: bad}, Reply{Seq: p.Seq, Report: &Report{}}}
		}, RollingBack, "introducing the agents"},
		{"preparation failed, introduction out", func(p Send) []Input {
			return []Input{Reply{Seq: p.Seq, Err: bad}}
		}, RollingBack, "preparing the destination"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := transferringRec()
			rec.State = Preparing
			b := newBench(t, rec)
			out := b.step(Start{})
			if n := len(sendsIn(out, OpPrepare)); n != 1 || len(out) != 2 {
				t.Fatalf("want one introduction and one preparation at once: %s", describe(out))
			}
			steps := tc.steps(sendTo(t, out, OpPrepare, wDst))
			for i, in := range steps {
				out = b.step(in)
				if len(sendsIn(out, OpPrepare)) != 0 {
					t.Fatalf("step %d prepared again: %s", i, describe(out))
				}
				if p, ok := lastPersist(out); ok && i < len(steps)-1 {
					t.Fatalf("step %d wrote %s early", i, p.Rec.State)
				}
			}
			p, ok := lastPersist(out)
			switch {
			case tc.want == "" && ok:
				t.Fatalf("wrote %s (%s), want nothing yet", p.Rec.State, p.Rec.Error)
			case tc.want != "" && (!ok || p.Rec.State != tc.want):
				t.Fatalf("want a %s write: %s", tc.want, describe(out))
			case tc.want != "" && !strings.Contains(p.Rec.Error, tc.error):
				t.Fatalf("reason %q, want %q in it", p.Rec.Error, tc.error)
			}
		})
	}
}

// TestFirstByteOnRecord: the completed record says how long from the
// introduction to the stream's first byte at the destination, as the
// destination's report has it.
func TestFirstByteOnRecord(t *testing.T) {
	rec := transferringRec()
	rec.State = Preparing
	b := newBench(t, rec)
	prep := sendTo(t, b.step(Start{}), OpPrepare, wDst) // the introduction starts at t0
	b.now = t0.Add(100 * time.Millisecond)
	b.step(Introduced{Path: "direct", Took: 90 * time.Millisecond})
	out := b.land(b.step(Reply{Seq: prep.Seq, Report: &Report{}}))
	start := sendTo(t, out, OpStart, wSrc)
	b.step(Reply{Seq: start.Seq, Report: &Report{}})
	out = b.land(b.step(Posted{Host: wDst, Role: Destination, Phase: PhaseCompleted}))
	commit := sendTo(t, out, OpCommit, wDst)
	first := t0.Add(173 * time.Millisecond)
	out = b.step(Reply{Seq: commit.Seq, Report: &Report{Phase: PhaseCommitted, At: t0.Add(time.Second).UnixNano(), FirstByteAt: first.UnixNano()}})
	st := sendTo(t, out, OpStatus, wSrc)
	out = b.step(Reply{Seq: st.Seq, Report: &Report{Phase: PhaseCompleted,
		Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted, PausedAt: t0.Add(900 * time.Millisecond)}}})
	fin := sendTo(t, out, OpFinish, wSrc)
	out = b.step(Reply{Seq: fin.Seq, Report: &Report{}})
	p, ok := lastPersist(out)
	if !ok || p.Rec.State != Completed {
		t.Fatalf("no completion: %s", describe(out))
	}
	if p.Rec.FirstByteMS != 173 || p.Rec.LinkMS != 90 {
		t.Fatalf("first_byte_ms %d, link_ms %d; want 173 and 90", p.Rec.FirstByteMS, p.Rec.LinkMS)
	}
}
