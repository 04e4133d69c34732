package mmc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
)

// The migration orchestrator: one goroutine per open migration drives its
// persisted state machine
//
//	planned → preparing → transferring ──────────────→ switch-over → completed
//	              │              └──→ postcopy ──────────↗
//	              └──────────┴──────────┴─→ rolling-back → cancelled | failed
//
// The invariant it keeps: at every moment exactly one copy of the VM is
// authoritative, and which one is decided by the state in the store. Up
// to and including transferring it is the source: the destination copy is
// never resumed, and the MA destroys it on rollback. The commit is the
// write of switch-over, made only once the destination reports the image
// complete and verified — which also means the source sent its last byte
// and paused itself for good (a source never resumes on its own after
// that). From switch-over on it is the destination, and the orchestrator
// only rolls forward: resume the destination, destroy the source, retrying
// agents that are away until they are back.
//
// Arming takes the commit's round trip out of the downtime. When the
// source reports its transfer complete (its copy paused for good, its
// last byte in the stream), the orchestrator records armed_at and tells
// the destination's MA to resume its copy by itself the moment the image
// verifies; the order overtakes the stream's tail, so the destination
// resumes without reporting to the MMC and waiting for the commit (one
// RTT to the MMC's site). From the armed write on, the copy that is the
// VM is the destination's as soon as it verifies, which only its MA
// knows: the orchestrator rolls back only on the destination's own report
// that its copy failed (such a copy cannot run), refuses a cancel, and
// waits for a destination that is away rather than roll back on a stall.
// The destination's "verified" or "committed" then leads to switch-over
// as before, and migrate.commit finds the copy already running.
//
// Post-copy moves the commit earlier: a transfer whose pre-copy did not
// converge, with post-copy allowed, enters postcopy, in which the MMC has
// the source's hypervisor switch (it stops the guest and hands the device
// state over; the destination then runs and pulls the pages it lacks).
// In that state the authoritative copy is what the source's hypervisor
// says: until it switched, the source (a failure rolls back as before);
// once it has, the destination, and that is the commit. Only the source
// can switch, so asking it decides, after an MMC restart too. A
// post-copy switch-over resumes the destination at once but destroys the
// source only once the destination holds every page.
//
// After an MMC restart every open migration is picked up where the store
// says: planned starts, preparing (whose actions' outcome is unknown)
// rolls back, transferring re-attaches to the agents (the transfer went on
// without the MMC; armed stays armed), switch-over and rolling-back
// continue.

// Orchestrator timings.
const (
	// orchPoll is how often a transfer's progress is read when no
	// blackboard entry woke the orchestrator earlier.
	orchPoll = 500 * time.Millisecond
	// stallTimeout rolls back a transfer whose agents show no progress
	// (unreachable, or the transfer stuck) for this long.
	stallTimeout = 2 * time.Minute
	// retryEvery paces actions for agents that are away.
	retryEvery = 2 * time.Second
	// sourceReportWait is how long a switch-over waits for an absent
	// source to report its figures and drop its copy before completing
	// with that left as a cleanup.
	sourceReportWait = time.Minute
	// defaultDowntimeLimit is the downtime a migration aims at.
	defaultDowntimeLimit = hypervisor.DefaultDowntimeLimit
	// migrationQueueDelay is the MA's bound on its stream's unsent
	// backlog (agent streamQueueDelay).
	migrationQueueDelay = 30 * time.Millisecond
)

// errCancelPending refuses a state change past a requested cancel.
var errCancelPending = errors.New("mmc: a cancel is pending")

// errEnded: the step recorded the migration's outcome itself.
var errEnded = errors.New("mmc: migration ended")

// errRollback carries the reason a migration is rolled back.
type errRollback struct {
	outcome migration.State
	reason  string
}

func (e *errRollback) Error() string { return e.reason }

func rollback(outcome migration.State, format string, args ...any) error {
	return &errRollback{outcome: outcome, reason: fmt.Sprintf(format, args...)}
}

// orchestrator tracks the running drives and their live progress.
type orchestrator struct {
	mu      sync.Mutex
	ctx     context.Context // the server's, once Run started
	running map[string]*drive
	wg      sync.WaitGroup
}

type drive struct {
	wake chan struct{}
	// sent is set, and sentCh closed, when the source's agent posts that
	// its transfer completed: the destination can be armed without
	// waiting for a status round trip.
	sent     atomic.Bool
	sentCh   chan struct{}
	sentOnce sync.Once
	// verified is set when the destination's agent posts that its image
	// is complete and verified: the commit need not wait for a status
	// round trip (downtime). verifiedCh is closed then too, cutting short
	// a status round trip already under way.
	verified     atomic.Bool
	verifiedCh   chan struct{}
	verifiedOnce sync.Once
	mu           sync.Mutex
	live         *api.MigrationLive
}

func (d *drive) markSent() {
	d.sent.Store(true)
	d.sentOnce.Do(func() { close(d.sentCh) })
}

func (d *drive) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// runOrchestrator resumes the open migrations, retries pending cleanups,
// and waits for every drive when ctx ends.
func (s *Server) runOrchestrator(ctx context.Context) {
	s.orch.mu.Lock()
	s.orch.ctx = ctx
	if s.orch.running == nil {
		s.orch.running = map[string]*drive{}
	}
	s.orch.mu.Unlock()
	defer s.orch.wg.Wait()
	all, err := s.st.Migrations()
	if err != nil {
		s.log.Error("mmc: loading migrations", "err", err)
	}
	for _, m := range all {
		if m.State.Open() {
			s.policyMu.Lock()
			s.engine.Started(m.VM, m.Created)
			s.policyMu.Unlock()
			s.launch(m.ID, true)
		}
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.cleanup(ctx)
	}
}

// launch starts the drive of migration id unless one runs. resumed marks
// a migration found open at startup.
func (s *Server) launch(id string, resumed bool) {
	s.orch.mu.Lock()
	defer s.orch.mu.Unlock()
	if s.orch.ctx == nil || s.orch.running[id] != nil || s.orch.ctx.Err() != nil {
		return
	}
	d := &drive{wake: make(chan struct{}, 1), verifiedCh: make(chan struct{}), sentCh: make(chan struct{})}
	s.orch.running[id] = d
	s.orch.wg.Add(1)
	go func() {
		defer s.orch.wg.Done()
		defer func() {
			s.orch.mu.Lock()
			delete(s.orch.running, id)
			s.orch.mu.Unlock()
		}()
		s.drive(s.orch.ctx, id, d, resumed)
	}()
}

// migrationEvent is what a blackboard entry on a migration's topic told
// the orchestrator.
type migrationEvent int

const (
	eventNone     migrationEvent = iota
	eventSent                    // the source's transfer completed
	eventVerified                // the destination holds a verified image
)

// poke wakes the drive of migration id (a blackboard entry arrived) and
// records what the entry said.
func (s *Server) poke(id string, ev migrationEvent) {
	s.orch.mu.Lock()
	d := s.orch.running[id]
	s.orch.mu.Unlock()
	if d != nil {
		switch ev {
		case eventSent:
			d.markSent()
		case eventVerified:
			d.verified.Store(true)
			d.verifiedOnce.Do(func() { close(d.verifiedCh) })
		}
		d.poke()
	}
}

// live returns a running migration's latest progress.
func (s *Server) live(id string) *api.MigrationLive {
	s.orch.mu.Lock()
	d := s.orch.running[id]
	s.orch.mu.Unlock()
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.live == nil {
		return nil
	}
	l := *d.live
	return &l
}

func topicOf(id string) string { return "migration/" + id }

// setState persists a state change (and whatever else fn sets).
func (s *Server) setState(id string, state migration.State, fn func(*migration.Record)) (migration.Record, error) {
	return s.mutateMigration(id, func(m *migration.Record) error {
		m.State, m.Updated = state, s.cfg.Now()
		if fn != nil {
			fn(m)
		}
		return nil
	})
}

// drive runs one migration to an outcome (or until ctx ends: a later
// start picks it up).
func (s *Server) drive(ctx context.Context, id string, d *drive, resumed bool) {
	for ctx.Err() == nil {
		m, err := s.st.Migration(id)
		if err != nil {
			s.log.Error("mmc: migration vanished", "id", id, "err", err)
			return
		}
		if !m.State.Open() {
			return
		}
		switch m.State {
		case migration.Planned:
			err = s.prepare(ctx, m)
		case migration.Preparing:
			if resumed {
				err = rollback(migration.Failed, "the MMC restarted while preparing the destination")
			} else {
				err = s.startTransfer(ctx, m)
			}
		case migration.Transferring:
			err = s.transfer(ctx, m, d)
		case migration.Postcopy:
			err = s.postcopy(ctx, m)
		case migration.SwitchOver:
			err = s.switchOver(ctx, m)
		case migration.RollingBack:
			err = s.rollBack(ctx, m)
		default:
			err = rollback(migration.Failed, "unknown state %q", m.State)
		}
		resumed = false
		var rb *errRollback
		switch {
		case ctx.Err() != nil:
			return
		case errors.As(err, &rb):
			if _, err := s.setState(id, migration.RollingBack, func(m *migration.Record) {
				m.Outcome, m.Error = rb.outcome, rb.reason
			}); err != nil {
				s.log.Error("mmc: persisting a rollback", "id", id, "err", err)
				return
			}
			s.log.Warn("mmc: migration rolling back", "id", id, "vm", m.VM, "reason", rb.reason)
			_ = s.postAsMMC(ctx, topicOf(id), board.KindNote, board.Note{Text: truncate("rolling back: " + rb.reason)})
		case err != nil:
			s.log.Error("mmc: migration", "id", id, "state", m.State, "err", err)
			if !sleepCtx(ctx, retryEvery) {
				return
			}
		}
	}
}

// prepare checks the plan, introduces the agents and has the destination
// start its incoming VM.
func (s *Server) prepare(ctx context.Context, m migration.Record) error {
	if m.CancelRequested {
		return rollback(migration.Cancelled, "cancelled before it started")
	}
	src, dst := s.sessionByHost(m.From), s.sessionByHost(m.To)
	if src == nil || dst == nil {
		return rollback(migration.Failed, "%s or %s is offline", m.From, m.To)
	}
	spec, ok := s.specOf(m.VM, m.From)
	if !ok {
		return rollback(migration.Failed, "VM %s is no longer on %s", m.VM, m.From)
	}
	if h, ok := s.hostOfVM(m.VM); ok && h != m.From {
		return rollback(migration.Failed, "VM %s is reported by %s too", m.VM, h)
	}
	if _, err := s.setState(m.ID, migration.Preparing, nil); err != nil {
		return err
	}
	topic := topicOf(m.ID)
	if err := s.Introduce(ctx, topic, dst.id, src.id); err != nil {
		return rollback(migration.Failed, "introducing the agents: %v", err)
	}
	order := &migration.Order{ID: m.ID, Topic: topic, VM: m.VM, Spec: &spec}
	if _, err := s.act(ctx, m.To, message.Action{Op: "migrate.prepare", Mig: order}); err != nil {
		return rollback(migration.Failed, "preparing the destination: %v", err)
	}
	return s.startTransfer(ctx, m)
}

// startTransfer has the source start sending.
func (s *Server) startTransfer(ctx context.Context, m migration.Record) error {
	m, err := s.st.Migration(m.ID) // a cancel may have come in while preparing
	if err != nil {
		return err
	}
	if m.CancelRequested {
		return rollback(migration.Cancelled, "cancelled")
	}
	now := s.cfg.Now()
	if _, err := s.setState(m.ID, migration.Transferring, func(m *migration.Record) { m.Started = now }); err != nil {
		return err
	}
	params := hypervisor.MigrationParams{MaxBandwidth: m.MaxRate, DowntimeLimit: s.stopAndCopyBudget(m), AutoConverge: true,
		Postcopy: m.AllowPostcopy, MaxRounds: m.MaxRounds, Compress: m.Compress}
	order := &migration.Order{ID: m.ID, Topic: topicOf(m.ID), VM: m.VM, Params: params}
	if _, err := s.act(ctx, m.From, message.Action{Op: "migrate.start", Mig: order}); err != nil {
		return rollback(migration.Failed, "starting the transfer: %v", err)
	}
	s.log.Info("mmc: migration transferring", "id", m.ID, "vm", m.VM, "from", m.From, "to", m.To)
	return nil
}

// stopAndCopyBudget is the part of the downtime limit (the migration's,
// or 300 ms) the source's final
// copy may take. The rest of the downtime is fixed costs, estimated from
// the sessions' RTTs: the backlog ahead of the final copy (the
// migration stream's bounded queue), the one-way delay of the agents'
// link (half its RTT, which is about the sum of their RTTs to the MMC,
// since the MMC sits near one of them), one link RTT to repair what the
// path lost in the final copy's last round trip (at 1 % loss a final
// copy of a few hundred packets almost always loses one, and the
// repair of the last ones costs a round trip), and 30 ms for the
// arming's fsync, scheduling and the socket pairs between the agents and
// their hypervisors (128 KiB each: 10 ms at 100 Mbit/s). The arming
// itself travels beside the stream's tail (source to MMC to destination,
// about the link's one-way delay), so the destination resumes without a
// round trip to the MMC.
func (s *Server) stopAndCopyBudget(m migration.Record) time.Duration {
	var rttDst, rttSrc time.Duration
	if ss := s.sessionByHost(m.To); ss != nil {
		rttDst = ss.c.Stats().SmoothedRTT
	}
	if ss := s.sessionByHost(m.From); ss != nil {
		rttSrc = ss.c.Stats().SmoothedRTT
	}
	link := rttDst + rttSrc
	fixed := migrationQueueDelay + link/2 + link + 30*time.Millisecond
	limit := defaultDowntimeLimit
	if m.DowntimeLimitMS > 0 {
		limit = time.Duration(m.DowntimeLimitMS) * time.Millisecond
	}
	return max(limit-fixed, limit/6)
}

// status asks host for its view of migration m.
func (s *Server) status(ctx context.Context, m migration.Record, host string) (*migration.Report, error) {
	r, err := s.act(ctx, host, message.Action{Op: "migrate.status", Mig: &migration.Order{ID: m.ID, Topic: topicOf(m.ID), VM: m.VM}})
	if err != nil {
		return nil, err
	}
	if r.Mig == nil {
		return nil, fmt.Errorf("mmc: %s sent no migration report", host)
	}
	return r.Mig, nil
}

// transfer watches a transfer until the destination holds a verified
// image (then commits) or something fails (then rolls back). Once the
// source reports its transfer complete, the destination is armed (see the
// top of this file): from then on only the destination's own failure
// rolls back.
func (s *Server) transfer(ctx context.Context, m migration.Record, d *drive) error {
	armed := !m.ArmedAt.IsZero()
	// The agents' status round trips are cut short when the source posts
	// its completion (before the destination is armed) or the destination
	// a verified image: a status round trip to the destination's site
	// (one WAN RTT) would otherwise hold the arming or the commit back by
	// up to that long.
	roundTrip := func(cutOnSent bool) (context.Context, context.CancelFunc) {
		rctx, cancel := context.WithCancel(ctx)
		var sent chan struct{}
		if cutOnSent {
			sent = d.sentCh
		}
		go func() {
			select {
			case <-d.verifiedCh:
			case <-sent:
			case <-rctx.Done():
			}
			cancel()
		}()
		return rctx, cancel
	}
	if armed {
		// Re-attached after an MMC restart: the order may not have left.
		s.sendArm(ctx, m)
	}
	dstWarned := false
	lastProgress := s.cfg.Now()
	var lastMoved uint64
	t := time.NewTicker(orchPoll)
	defer t.Stop()
	for {
		if cur, err := s.st.Migration(m.ID); err == nil && cur.CancelRequested && !armed {
			return rollback(migration.Cancelled, "cancelled by %s", "the administrator")
		}
		// The destination first: once it holds a verified image the
		// commit should not wait for another round trip.
		if d.verified.Load() {
			return s.commit(m)
		}
		if !armed && d.sent.Load() {
			rctx, cancel := roundTrip(false)
			err := s.arm(rctx, &m)
			cancel()
			if err != nil {
				return err
			}
			armed = true
			continue
		}
		rctx, cancel := roundTrip(!armed)
		dst, dstErr := s.status(rctx, m, m.To)
		cancel()
		if d.verified.Load() || (dstErr == nil && dst.Status.State == hypervisor.MigCompleted && dst.Status.Verified) {
			return s.commit(m)
		}
		switch {
		case dstErr != nil:
		case dst.Phase == "failed":
			// Armed or not: the destination's job saw its copy fail
			// before it verified (it never moves to failed after), so
			// the copy never ran.
			return rollback(migration.Failed, "destination: %s", firstNonEmpty(dst.Error, dst.Status.Error, "failed"))
		case dst.Status.State == hypervisor.MigFailed && (!armed || !dst.MayHaveRun):
			// Armed or not, a copy its agent never recorded resuming
			// never ran.
			return rollback(migration.Failed, "destination: %s", firstNonEmpty(dst.Error, dst.Status.Error, "failed"))
		case dst.Status.State == hypervisor.MigFailed && !dstWarned:
			// Armed, and no job to say what happened (the agent
			// restarted) but a record that it may have resumed the
			// copy: a QEMU that is gone may have run first. Only an
			// operator can tell; the VM stays paused.
			s.log.Error("mmc: armed migration's destination copy is gone and its agent cannot say whether it ran; the VM stays paused at the source",
				"id", m.ID, "host", m.To, "err", firstNonEmpty(dst.Error, dst.Status.Error))
			dstWarned = true
		}
		var src *migration.Report
		srcErr := errArmed
		if !armed {
			// Once armed only the destination decides.
			rctx, cancel := roundTrip(true)
			src, srcErr = s.status(rctx, m, m.From)
			cancel()
		}
		if srcErr == nil {
			switch {
			case src.Phase == "failed" || src.Status.State == hypervisor.MigFailed:
				return rollback(migration.Failed, "source: %s", firstNonEmpty(src.Error, src.Status.Error, "failed"))
			case src.Status.State == hypervisor.MigCancelled:
				return rollback(migration.Failed, "source: transfer cancelled")
			case src.Phase == "none" && src.Status.State == "":
				return rollback(migration.Failed, "source: no migration running (agent restarted?)")
			case src.Status.State == hypervisor.MigCompleted && src.Status.Postcopy == "":
				d.markSent() // its post may have been lost (an MMC restart)
				continue
			}
			s.setLive(m, d, src)
			if src.Status.Postcopy != "" && m.AllowPostcopy {
				// Not past a cancel that came in meanwhile: the move is
				// conditional.
				_, err := s.mutateMigration(m.ID, func(x *migration.Record) error {
					if x.CancelRequested {
						return errCancelPending
					}
					x.State, x.Updated = migration.Postcopy, s.cfg.Now()
					return nil
				})
				if errors.Is(err, errCancelPending) {
					return rollback(migration.Cancelled, "cancelled by %s", "the administrator")
				}
				s.log.Info("mmc: migration switching to post-copy", "id", m.ID, "vm", m.VM, "round", src.Status.Round)
				return err
			}
			if moved := src.Status.StreamBytes + src.Status.Transferred; moved != lastMoved {
				lastMoved, lastProgress = moved, s.cfg.Now()
			}
		}
		switch {
		case s.cfg.Now().Sub(lastProgress) <= stallTimeout:
		case armed:
			// The destination may have resumed: an agent that is away,
			// or a link that died in the last round trip, is waited for.
			s.log.Warn("mmc: armed migration waits for its destination", "id", m.ID, "host", m.To, "err", errText(dstErr))
			lastProgress = s.cfg.Now()
		default:
			return rollback(migration.Failed, "no progress for %v (source: %v; destination: %v)", stallTimeout, errText(srcErr), errText(dstErr))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.wake:
		case <-t.C:
		}
	}
}

// errArmed stands for the source's status, not asked once the
// destination is armed.
var errArmed = errors.New("mmc: not asked (the destination is armed)")

// arm records that the source's transfer completed and tells the
// destination to resume by itself as soon as its image verifies, which
// takes the report to the MMC and the commit back out of the downtime.
// The write comes first and is conditional on no cancel being pending: a
// destination may be told only what the store already says. A
// destination that does not get the order (away, or an older agent) is
// committed the usual way once it reports its image verified.
func (s *Server) arm(ctx context.Context, m *migration.Record) error {
	now := s.cfg.Now()
	cur, err := s.mutateMigration(m.ID, func(x *migration.Record) error {
		if x.CancelRequested {
			return errCancelPending
		}
		x.ArmedAt, x.Updated = now, now
		return nil
	})
	if errors.Is(err, errCancelPending) {
		return rollback(migration.Cancelled, "cancelled by %s", "the administrator")
	}
	if err != nil {
		return err
	}
	*m = cur
	s.sendArm(ctx, *m)
	s.log.Debug("mmc: migration armed", "id", m.ID, "vm", m.VM, "to", m.To)
	return nil
}

// sendArm tells the destination of an armed migration to resume once
// verified (idempotent; a destination that does not get it is committed
// the usual way).
func (s *Server) sendArm(ctx context.Context, m migration.Record) {
	order := &migration.Order{ID: m.ID, Topic: topicOf(m.ID), VM: m.VM}
	if _, err := s.act(ctx, m.To, message.Action{Op: "migrate.arm", Mig: order}); err != nil && ctx.Err() == nil {
		s.log.Warn("mmc: arming the destination", "id", m.ID, "host", m.To, "err", err)
	}
}

// postcopy has the source switch to post-copy and commits once it has
// (see the top of this file).
func (s *Server) postcopy(ctx context.Context, m migration.Record) error {
	order := &migration.Order{ID: m.ID, Topic: topicOf(m.ID), VM: m.VM}
	fastUntil := time.Now().Add(5 * time.Second)
	for {
		r, err := s.act(ctx, m.From, message.Action{Op: "migrate.postcopy", Mig: order})
		if r.Mig != nil {
			st := r.Mig.Status
			switch {
			case st.State == hypervisor.MigCompleted && st.Postcopy == "":
				// The pre-copy finished on its own before the switch
				// (QEMU went on iterating meanwhile): the source is
				// paused for good, and the usual commit applies once the
				// destination holds a verified image.
				dst, derr := s.status(ctx, m, m.To)
				switch {
				case derr == nil && dst.Status.State == hypervisor.MigCompleted && dst.Status.Verified:
					return s.commit(m)
				case derr == nil && (dst.Phase == "failed" || dst.Status.State == hypervisor.MigFailed):
					return rollback(migration.Failed, "destination: %s", firstNonEmpty(dst.Error, dst.Status.Error, "failed"))
				}
			case st.Postcopy == hypervisor.PostcopyActive:
				now := s.cfg.Now()
				_, err := s.setState(m.ID, migration.SwitchOver, func(x *migration.Record) {
					x.Postcopy, x.CommittedAt, x.PausedAt = true, now, st.PausedAt
				})
				if err == nil {
					s.log.Info("mmc: migration committed in post-copy", "id", m.ID, "vm", m.VM, "to", m.To)
				}
				return err
			case r.Mig.Phase == "failed" || st.State == hypervisor.MigFailed || st.State == hypervisor.MigCancelled:
				return rollback(migration.Failed, "source, switching to post-copy: %s", firstNonEmpty(r.Mig.Error, st.Error, st.State))
			}
		}
		wait := retryEvery
		if err == nil && time.Now().Before(fastUntil) {
			wait = 20 * time.Millisecond // switching: its agent sees it within a fast poll
		} else if err != nil {
			s.log.Warn("mmc: switching to post-copy", "id", m.ID, "host", m.From, "err", err)
		}
		if !sleepCtx(ctx, wait) {
			return ctx.Err()
		}
	}
}

// setLive records a transfer's progress for the API.
func (s *Server) setLive(m migration.Record, d *drive, src *migration.Report) {
	st := src.Status
	l := &api.MigrationLive{Round: st.Round, Total: st.Total, Remaining: st.Remaining, Transferred: st.Transferred,
		WireBytes: src.WireBytes, DirtyRate: st.DirtyRate, Rate: st.Rate,
		ExpectedDowntimeMS: st.ExpectedDowntime.Milliseconds(), Throttle: st.Throttle}
	if st.Total > 0 {
		l.Progress = min(0.99, 1-float64(st.Remaining)/float64(st.Total))
	}
	if st.Rate > 0 {
		l.ETASeconds = float64(st.Remaining) / st.Rate
	}
	d.mu.Lock()
	if d.live != nil && d.live.Progress > l.Progress {
		l.Progress = d.live.Progress // never backwards: later rounds resend
	}
	d.live = l
	d.mu.Unlock()
	if l.Progress-m.Progress >= 0.05 {
		_, _ = s.mutateMigration(m.ID, func(m *migration.Record) error { m.Progress = l.Progress; return nil })
	}
}

// commit records the switch-over: from this write on the destination is
// the VM.
func (s *Server) commit(m migration.Record) error {
	now := s.cfg.Now()
	_, err := s.setState(m.ID, migration.SwitchOver, func(x *migration.Record) {
		x.Verified, x.Progress, x.CommittedAt = true, 1, now
	})
	if err != nil {
		return err
	}
	s.log.Info("mmc: migration committed", "id", m.ID, "vm", m.VM, "to", m.To)
	return nil
}

// switchOver rolls a committed migration forward: resume the destination
// (retrying until its agent answers), then destroy the source (left as a
// cleanup if its agent is away: its copy stays paused, not running).
func (s *Server) switchOver(ctx context.Context, m migration.Record) error {
	order := &migration.Order{ID: m.ID, Topic: topicOf(m.ID), VM: m.VM}
	// A post-copy destination resumes as soon as it is in post-copy (its
	// agent waits for that).
	order.Params.Postcopy = m.Postcopy
	var resumed, verified time.Time
	var dstWire uint64
	for {
		r, err := s.act(ctx, m.To, message.Action{Op: "migrate.commit", Mig: order})
		if err == nil && r.Mig != nil {
			resumed, dstWire = time.Unix(0, r.Mig.At), r.Mig.WireBytes
			if r.Mig.At == 0 {
				resumed = s.cfg.Now()
			}
			if r.Mig.Status.Verified {
				verified = r.Mig.Status.Finished
			}
			break
		}
		s.log.Warn("mmc: resuming the destination", "id", m.ID, "host", m.To, "err", err)
		if !sleepCtx(ctx, retryEvery) {
			return ctx.Err()
		}
	}
	if m.Postcopy {
		// The source holds the pages the destination has not pulled yet.
		var err error
		if verified, dstWire, err = s.postcopyDone(ctx, m); errors.Is(err, errEnded) {
			return nil
		} else if err != nil {
			return err
		}
	}
	// The source's figures (pause time, rounds, bytes) for the report,
	// read before its copy goes; an agent that is away (it may not yet
	// have noticed an MMC restart) gets a while to come back.
	src, srcErr := s.status(ctx, m, m.From)
	for wait := time.Now().Add(sourceReportWait); srcErr != nil && time.Now().Before(wait); src, srcErr = s.status(ctx, m, m.From) {
		if !sleepCtx(ctx, retryEvery/4) {
			return ctx.Err()
		}
	}
	var cleanup []string
	if _, err := s.act(ctx, m.From, message.Action{Op: "migrate.finish", Mig: order}); err != nil {
		s.log.Warn("mmc: destroying the source copy later", "id", m.ID, "host", m.From, "err", err)
		cleanup = append(cleanup, "finish:"+m.From)
	}
	now := s.cfg.Now()
	done, err := s.setState(m.ID, migration.Completed, func(x *migration.Record) {
		x.ResumedAt, x.Finished, x.VerifiedAt = resumed, now, verified
		x.BytesOnWire = dstWire
		if srcErr == nil {
			x.PausedAt, x.Rounds, x.Transferred = src.Status.PausedAt, src.Status.Round, src.Status.Transferred
			if src.Status.State == hypervisor.MigCompleted {
				x.SentAt = src.Status.Finished
			}
			x.BytesOnWire += src.WireBytes
		}
		end := resumed
		if x.Postcopy {
			end = verified // the last page arrived
			x.Verified = !verified.IsZero()
		}
		if !x.Started.IsZero() && !end.IsZero() {
			x.TotalMS = end.Sub(x.Started).Milliseconds()
		}
		if !x.PausedAt.IsZero() {
			x.DowntimeMS = max(0, resumed.Sub(x.PausedAt).Milliseconds())
		}
		x.Cleanup = append(x.Cleanup, cleanup...)
	})
	if err != nil {
		return err
	}
	s.finished(ctx, done)
	s.log.Info("mmc: migration completed", "id", m.ID, "vm", m.VM, "from", m.From, "to", m.To,
		"total_ms", done.TotalMS, "downtime_ms", done.DowntimeMS, "bytes_on_wire", done.BytesOnWire)
	return nil
}

// postcopyDone waits until a post-copy destination holds every page, and
// returns when that was and the bytes its agent sent. A post-copy cut off
// from its source pauses (QEMU: postcopy-paused) and waits; nothing here
// can roll it back or forward, so the wait has no end but the MMC's.
func (s *Server) postcopyDone(ctx context.Context, m migration.Record) (time.Time, uint64, error) {
	lastWarn := time.Now()
	for {
		r, err := s.status(ctx, m, m.To)
		if err == nil {
			switch r.Status.State {
			case hypervisor.MigCompleted:
				return r.Status.Finished, r.WireBytes, nil
			case hypervisor.MigFailed:
				// Neither copy is a VM any more. Say so; destroy nothing.
				done, err := s.setState(m.ID, migration.Failed, func(x *migration.Record) {
					x.Error = "post-copy failed at the destination (" + firstNonEmpty(r.Error, r.Status.Error, "failed") +
						"): the guest's memory was split between the hosts; both copies are kept for inspection"
					x.Finished = s.cfg.Now()
				})
				if err != nil {
					return time.Time{}, 0, err
				}
				s.finished(ctx, done)
				s.log.Error("mmc: post-copy failed", "id", m.ID, "vm", m.VM, "err", done.Error)
				return time.Time{}, 0, errEnded
			}
		}
		if time.Since(lastWarn) > 30*time.Second {
			lastWarn = time.Now()
			s.log.Warn("mmc: post-copy still pulling pages", "id", m.ID, "vm", m.VM, "err", err)
		}
		if !sleepCtx(ctx, orchPoll/5) {
			return time.Time{}, 0, ctx.Err()
		}
	}
}

// rollBack makes the source the running copy again and has the
// destination drop its copy. The source must answer (a copy paused after
// a complete transfer resumes only when told); the destination's abort is
// left as a cleanup if its agent is away (its copy is never resumed
// without a commit, so it is harmless until then).
func (s *Server) rollBack(ctx context.Context, m migration.Record) error {
	order := &migration.Order{ID: m.ID, Topic: topicOf(m.ID), VM: m.VM}
	for {
		_, err := s.act(ctx, m.From, message.Action{Op: "migrate.rollback", Mig: order})
		if err == nil {
			break
		}
		s.log.Warn("mmc: rolling back the source", "id", m.ID, "host", m.From, "err", err)
		if !sleepCtx(ctx, retryEvery) {
			return ctx.Err()
		}
	}
	var cleanup []string
	if _, err := s.act(ctx, m.To, message.Action{Op: "migrate.abort", Mig: order}); err != nil {
		s.log.Warn("mmc: dropping the destination copy later", "id", m.ID, "host", m.To, "err", err)
		cleanup = append(cleanup, "abort:"+m.To)
	}
	outcome := m.Outcome
	if outcome != migration.Cancelled {
		outcome = migration.Failed
	}
	now := s.cfg.Now()
	done, err := s.setState(m.ID, outcome, func(x *migration.Record) {
		x.Finished = now
		x.Cleanup = append(x.Cleanup, cleanup...)
	})
	if err != nil {
		return err
	}
	s.finished(ctx, done)
	s.log.Info("mmc: migration rolled back", "id", m.ID, "vm", m.VM, "outcome", outcome, "reason", m.Error)
	return nil
}

// finished ends a migration's bookkeeping: the policy's in-flight count,
// the blackboard topic, the audit trail.
func (s *Server) finished(ctx context.Context, m migration.Record) {
	s.policyMu.Lock()
	s.engine.Finished(m.VM)
	s.policyMu.Unlock()
	_ = s.postAsMMC(ctx, topicOf(m.ID), board.KindNote, board.Note{Text: "migration " + string(m.State)})
	s.board.Close(topicOf(m.ID))
	detail := fmt.Sprintf("%s %s → %s", m.VM, m.From, m.To)
	if m.State == migration.Completed {
		detail += fmt.Sprintf(": total %d ms, downtime %d ms, %d bytes on the wire", m.TotalMS, m.DowntimeMS, m.BytesOnWire)
	} else if m.Error != "" {
		detail += ": " + m.Error
	}
	s.audit.add(store.AuditEntry{Actor: "orchestrator", Action: "migration." + string(m.State), Target: m.ID, Outcome: "ok", Detail: detail})
}

// cleanup retries the agent actions left over from finished migrations
// whose agents were away.
func (s *Server) cleanup(ctx context.Context) {
	all, err := s.st.Migrations()
	if err != nil {
		return
	}
	for _, m := range all {
		for _, c := range m.Cleanup {
			op, host, ok := cutCleanup(c)
			if !ok || s.sessionByHost(host) == nil {
				continue
			}
			order := &migration.Order{ID: m.ID, Topic: topicOf(m.ID), VM: m.VM}
			if _, err := s.act(ctx, host, message.Action{Op: "migrate." + op, Mig: order}); err != nil {
				s.log.Warn("mmc: migration cleanup", "id", m.ID, "op", op, "host", host, "err", err)
				continue
			}
			_, _ = s.mutateMigration(m.ID, func(x *migration.Record) error {
				x.Cleanup = slices.DeleteFunc(x.Cleanup, func(e string) bool { return e == c })
				return nil
			})
		}
	}
}

func cutCleanup(c string) (op, host string, ok bool) {
	for i := 0; i < len(c); i++ {
		if c[i] == ':' {
			op, host = c[:i], c[i+1:]
			return op, host, (op == "finish" || op == "abort") && host != ""
		}
	}
	return "", "", false
}

// specOf is VM vm's definition if the MMC created it, else its spec as
// host last reported it (a VM the agent adopted); false if host does
// not report it.
func (s *Server) specOf(vm, host string) (hypervisor.Spec, bool) {
	for _, v := range s.vms() {
		if v.ID == vm && v.Host == host {
			if def, err := s.st.VM(vm); err == nil {
				return def, true
			}
			return hypervisor.Spec{Name: v.ID, Memory: v.Memory, VCPUs: v.VCPUs}, true
		}
	}
	return hypervisor.Spec{}, false
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func errText(err error) string {
	if err == nil {
		return "reachable"
	}
	return err.Error()
}

// mutateMigration applies fn to the stored record and writes it back
// conditional on the version read, reading again if another write came
// first.
func (s *Server) mutateMigration(id string, fn func(*migration.Record) error) (migration.Record, error) {
	for {
		m, err := s.st.Migration(id)
		if err != nil {
			return m, err
		}
		v := m.Version
		if err := fn(&m); err != nil {
			return m, err
		}
		m, err = s.st.UpdateMigration(m, v)
		if !errors.Is(err, store.ErrStale) {
			return m, err
		}
	}
}
