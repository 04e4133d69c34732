package migration

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// The orchestrator keeps one invariant: at every moment exactly one copy
// of the VM is authoritative, and which one is decided by the state on
// record. Up to and including transferring it is the source: the
// destination copy is never resumed, and its agent destroys it on
// rollback. The commit is the write of switch-over, made only once the
// destination reports its image complete and verified — which also means
// the source sent its last byte and paused itself for good (a source
// never resumes on its own after that). From switch-over on it is the
// destination, and the orchestrator only rolls forward: resume the
// destination, destroy the source, retrying agents that are away until
// they are back.
//
// Arming takes the commit's round trip out of the downtime. When the
// source reports its transfer complete, the machine records armed_at and
// tells the destination's agent to resume its copy by itself the moment
// the image verifies; the order overtakes the stream's tail. From the
// armed write on, the copy that is the VM is the destination's as soon
// as it verifies, which only its agent knows: the machine rolls back only
// on the destination's own report that its copy failed (such a copy
// cannot run), a cancel is refused (CheckCancel), and a destination that
// is away is waited for rather than rolled back on a stall.
//
// Post-copy moves the commit earlier: a transfer whose pre-copy did not
// converge, with post-copy allowed, enters postcopy, in which the source's
// hypervisor is told to switch (it stops the guest and hands the device
// state over; the destination then runs and pulls the pages it lacks).
// In that state the authoritative copy is what the source's hypervisor
// says: until it switched, the source; once it has, the destination, and
// that is the commit. A post-copy switch-over resumes the destination at
// once but destroys the source only once the destination holds every
// page.
//
// After an MMC restart every open migration is picked up where the record
// says: planned starts, preparing (whose orders' outcome is unknown)
// rolls back, transferring re-attaches to the agents (the transfer went
// on without the MMC; armed stays armed, and the arm order is sent
// again), switch-over and rolling-back continue.
//
// Writes come first, orders after: the machine never emits anything
// behind a Persist in the same batch, and what follows a write is
// decided once its result (Persisted) is in — an agent is told only what
// the record already says. Every write is conditional on the version
// the machine holds, so a cancel that landed meanwhile makes it stale and
// the machine decides again with the cancel in view.

// Timings.
const (
	// PollEvery is how often a transfer's progress is read (phases the
	// agents post act at once).
	PollEvery = 500 * time.Millisecond
	// StallTimeout rolls back a transfer whose agents show no progress
	// (unreachable, or the transfer stuck) for this long.
	StallTimeout = 2 * time.Minute
	// RetryEvery paces orders to agents that are away, and failed writes.
	RetryEvery = 2 * time.Second
	// SourceReportWait is how long a switch-over waits for an absent
	// source to report its figures before completing without them.
	SourceReportWait = time.Minute
	// sourceReportRetry paces that wait's status requests.
	sourceReportRetry = RetryEvery / 4
	// finalFiguresWait bounds how long a switch-over asks again for the
	// figures of a source whose agent has not yet seen its transfer end.
	finalFiguresWait = 2 * time.Second
	// switchFastPoll/switchFastFor: right after entering postcopy the
	// source is asked often (its agent sees the switch within a fast
	// poll).
	switchFastPoll = 20 * time.Millisecond
	switchFastFor  = 5 * time.Second
	// pullPoll is how often a post-copy destination is asked whether it
	// holds every page; pullWarnEvery how often a long pull is logged.
	pullPoll      = PollEvery / 5
	pullWarnEvery = 30 * time.Second
	// QueueDelay is the migration agent's bound on its stream's unsent
	// backlog (the final copy's bytes wait behind it).
	QueueDelay = 30 * time.Millisecond
	// progressStep: live progress is persisted in steps of this size.
	progressStep = 0.05
)

// Machine is one migration's orchestration: the record as last persisted
// and what the drive has learnt since it started. It is not safe for
// concurrent use; one driver goroutine steps it.
type Machine struct {
	rec     Record
	env     Env
	started bool
	done    bool
	writing bool      // a Persist is out: nothing is decided until its outcome
	retryAt time.Time // a failed write is decided again then
	// bestEffort: the write out only records progress; its failure
	// holds nothing up.
	bestEffort   bool
	progressNext time.Time // a failed progress write is tried again then
	wake         time.Time // NextTimeout
	seq          uint64
	pending      map[uint64]sent
	out          []Command // built by a Step

	// preparing
	resumedPreparing bool
	intro            int       // introNone, introAsked, introDone
	introAt          time.Time // when Introduce was emitted
	firstByteAt      time.Time // the destination's first stream byte (its report)
	introErr         string
	srcRTT, dstRTT   time.Duration
	linkPath         string        // Introduced.Path
	linkTook         time.Duration // Introduced.Took
	linkNote         string        // Introduced.Note
	prepared         bool
	prepErr          string

	// transferring
	startNeeded bool // this drive entered transferring: the source is to be started
	// startUnsure: this drive took over a transferring record, and no
	// report has shown the source's transfer yet. The previous leader
	// may have died between recording the state and its start reaching
	// the source: a source with no transfer is then started (a start is
	// idempotent), once, instead of failing the migration.
	startUnsure bool
	startErr    string
	// rateApplied is the bandwidth cap the source's transfer runs with,
	// as far as this drive knows (NaN: unknown — a drive that took over
	// a running transfer sends the record's once).
	rateApplied float64
	sentAll     bool // the source sent its last byte (posted or reported)
	verified    bool // the destination holds a verified image
	armSent     bool
	srcFail     string // a source report that rolls back
	dstFail     string // a destination report that rolls back
	srcErr      string // the last status request's error, for the stall message
	dstErr      string
	dstWarned   bool
	nextPoll    time.Time
	lastMoved   uint64
	progressAt  time.Time
	live        *Live
	switchReady bool // the source's pre-copy asks to switch to post-copy

	// postcopy
	switchFastUntil time.Time
	switchNext      time.Time
	switchedAt      time.Time // the source's pause, once it switched
	switched        bool
	askDst          bool // the pre-copy finished on its own: the destination decides
	askDstSince     time.Time
	switchFail      string

	// switch-over
	resumed     bool
	resumedAt   time.Time
	dstWire     uint64
	verifiedAt  time.Time
	commitNext  time.Time
	pulled      bool // a post-copy destination holds every page
	pullNext    time.Time
	pullWarn    time.Time
	pullFailed  string
	srcReport   *Report
	srcAsked    bool
	srcDone     bool
	srcUntil    time.Time
	srcNext     time.Time
	finishAsked bool
	finishDone  bool
	cleanup     []string

	// rolling back
	rolledBack   bool
	rollbackNext time.Time
	abortAsked   bool
	abortDone    bool
}

type sent struct {
	op    Op
	host  string
	state State   // the record's state when sent: a reply from an earlier state is stale
	rate  float64 // the order's bandwidth cap (OpStart, OpSetBandwidth)
}

const (
	introNone = iota
	introAsked
	introDone
)

// New returns a machine for rec, as stored.
func New(rec Record) *Machine {
	return &Machine{rec: rec, pending: map[uint64]sent{}, rateApplied: math.NaN()}
}

// Record is the record as last persisted (or read).
func (m *Machine) Record() Record { return m.rec }

// Done reports whether the migration reached its outcome.
func (m *Machine) Done() bool { return m.done }

// Live is the transfer's latest progress (nil before the first report).
func (m *Machine) Live() *Live {
	if m.live == nil {
		return nil
	}
	l := *m.live
	return &l
}

// NextTimeout is when the machine wants a Tick (zero: only on an input).
func (m *Machine) NextTimeout() time.Time { return m.wake }

// Step feeds the machine one input at time now and returns what to do, in
// order.
func (m *Machine) Step(in Input, now time.Time) []Command {
	m.out = nil
	if m.done {
		return nil
	}
	switch in := in.(type) {
	case Start:
		if m.started {
			break
		}
		m.started, m.env = true, in.Env
		m.resumedPreparing = in.Resumed && m.rec.State == Preparing
		m.startUnsure = in.Resumed && m.rec.State == Transferring && !m.rec.Armed()
		if !m.rec.State.Open() {
			m.done = true
			return nil
		}
	case Tick:
	case Posted:
		m.posted(in, now)
	case Reply:
		m.reply(in, now)
	case Introduced:
		if m.intro == introAsked {
			m.intro, m.srcRTT, m.dstRTT, m.linkPath, m.linkTook, m.linkNote = introDone, in.SrcRTT, in.DstRTT, in.Path, in.Took, in.Note
			if in.Err != nil {
				m.introErr = in.Err.Error()
			}
		}
	case LinkMoved:
		if m.intro == introDone && in.Path != "" {
			m.linkPath, m.linkNote = in.Path, in.Note
		}
	case Persisted:
		m.persisted(in, now)
	case Changed:
		if in.Rec.ID == m.rec.ID && in.Rec.Version > m.rec.Version && !m.writing {
			// (While a write is out it comes back stale with this record.)
			prev := m.rec
			m.rec = in.Rec
			m.entered(prev, now)
		}
	}
	if m.started && !m.done {
		m.advance(now)
	}
	return m.out
}

func (m *Machine) emit(c ...Command) { m.out = append(m.out, c...) }

func (m *Machine) log(level slog.Level, msg string, args ...any) {
	m.emit(Log{Level: level, Msg: msg, Args: append([]any{"id", m.rec.ID, "vm", m.rec.VM}, args...)})
}

// at asks for a Tick at t.
func (m *Machine) at(t time.Time) {
	if m.wake.IsZero() || t.Before(m.wake) {
		m.wake = t
	}
}

func (m *Machine) order() Order { return Order{ID: m.rec.ID, Topic: Topic(m.rec.ID), VM: m.rec.VM} }

// send emits op for host unless one is already out.
func (m *Machine) send(host string, op Op, o Order) {
	if m.inflight(host, op) {
		return
	}
	m.seq++
	m.pending[m.seq] = sent{op: op, host: host, state: m.rec.State, rate: o.Params.MaxBandwidth}
	m.emit(Send{Seq: m.seq, Host: host, Op: op, Order: o})
}

// sendWhenDue sends op to host once next has come (unless one is out),
// and otherwise asks for a Tick then.
func (m *Machine) sendWhenDue(host string, op Op, o Order, next, now time.Time) {
	if !now.Before(next) {
		m.send(host, op, o)
	}
	if !m.inflight(host, op) {
		m.at(next)
	}
}

func (m *Machine) inflight(host string, op Op) bool {
	for _, p := range m.pending {
		if p.host == host && p.op == op && p.state == m.rec.State {
			return true
		}
	}
	return false
}

// persist writes r (conditional on the version held).
func (m *Machine) persist(r Record, now time.Time) {
	r.Updated = now
	m.writing = true
	m.emit(Persist{Rec: r, IfVersion: m.rec.Version})
}

// rollback persists the move to rolling-back.
func (m *Machine) rollback(outcome State, now time.Time, format string, args ...any) {
	r := m.rec
	r.State, r.Outcome, r.Error = RollingBack, outcome, fmt.Sprintf(format, args...)
	m.persist(r, now)
}

func (m *Machine) persisted(in Persisted, now time.Time) {
	if !m.writing {
		return
	}
	m.writing = false
	bestEffort := m.bestEffort
	m.bestEffort = false
	switch {
	case in.Stale && in.Rec.Version > m.rec.Version:
		// Someone wrote first (a cancel) — or, where a write's outcome
		// was reported lost, this machine's own write landed: either
		// way what is on record now is what to act from.
		prev := m.rec
		m.rec = in.Rec
		m.entered(prev, now)
	case in.Stale:
		// A re-read that is not newer: decide again later, not in a
		// tight loop.
		m.retryAt = now.Add(RetryEvery)
	case in.Err != nil && bestEffort:
		// A progress figure: tried again later; nothing waits for it.
		m.progressNext = now.Add(RetryEvery)
	case in.Err != nil:
		m.log(slog.LevelError, "migration: persisting", "state", m.rec.State, "err", in.Err)
		m.retryAt = now.Add(RetryEvery)
	default:
		prev := m.rec
		m.rec = in.Rec
		m.entered(prev, now)
	}
}

// entered acts on a write that landed.
func (m *Machine) entered(prev Record, now time.Time) {
	r := m.rec
	if r.State == prev.State {
		return
	}
	switch r.State {
	case Transferring:
		m.startNeeded = true
	case Postcopy:
		m.switchFastUntil = now.Add(switchFastFor)
		m.log(slog.LevelInfo, "migration switching to post-copy")
	case SwitchOver:
		if r.Postcopy {
			m.log(slog.LevelInfo, "migration committed in post-copy", "to", r.To)
		} else {
			m.log(slog.LevelInfo, "migration committed", "to", r.To)
		}
	case RollingBack:
		m.log(slog.LevelWarn, "migration rolling back", "reason", r.Error)
		m.emit(Note{Text: "rolling back: " + r.Error})
	case Completed:
		m.log(slog.LevelInfo, "migration completed", "from", r.From, "to", r.To,
			"total_ms", r.TotalMS, "downtime_ms", r.DowntimeMS, "bytes_on_wire", r.BytesOnWire)
	case Cancelled, Failed:
		if prev.State == RollingBack {
			m.log(slog.LevelInfo, "migration rolled back", "outcome", r.State, "reason", r.Error)
		} else {
			m.log(slog.LevelError, "migration failed", "err", r.Error)
		}
	}
	if !r.State.Open() && prev.State.Open() {
		m.done = true
		m.wake = time.Time{}
		m.emit(Ended{Rec: r})
	}
}

// posted records what an agent's phase says. Only the agents of the
// migration count, each in its own role.
func (m *Machine) posted(p Posted, now time.Time) {
	switch {
	case p.Host == m.rec.To && p.Role == Destination && (p.Phase == PhaseCompleted || p.Phase == PhaseCommitted):
		// Its agent posts completed only with a verified image, and
		// resumes (committed) only once verified.
		if m.rec.State == Transferring || (m.rec.State == Postcopy && m.askDst) {
			m.verified = true
			if m.verifiedAt.IsZero() {
				// When the MMC learnt it: the destination's own time
				// replaces it if a later report carries one (the
				// commit's), but the commit may come first and its
				// report may not say (libvirt's job state between its
				// Finish and the resume), and the timeline must not
				// lack the step.
				m.verifiedAt = now
			}
		}
	case p.Host == m.rec.From && p.Role == Source && p.Phase == PhaseCompleted:
		m.sentAll = true
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func errText(s string) string {
	if s == "" {
		return "reachable"
	}
	return s
}

func (m *Machine) reply(in Reply, now time.Time) {
	p, ok := m.pending[in.Seq]
	if !ok {
		return
	}
	delete(m.pending, in.Seq)
	if r := in.Report; r != nil && p.host == m.rec.To && r.FirstByteAt != 0 && m.firstByteAt.IsZero() {
		m.firstByteAt = time.Unix(0, r.FirstByteAt)
	}
	errs := ""
	if in.Err != nil {
		errs = in.Err.Error()
	}
	r := in.Report
	if p.op == OpArm {
		if in.Err != nil {
			// A destination that did not get it is committed the usual
			// way once it reports its image verified.
			m.log(slog.LevelWarn, "migration: arming the destination", "host", p.host, "err", errs)
		}
		return
	}
	if p.state != m.rec.State {
		return // an answer for a state left since
	}
	switch m.rec.State {
	case Preparing:
		if p.op == OpPrepare {
			m.prepared = in.Err == nil
			m.prepErr = errs
		}
	case Transferring:
		m.transferReply(p, r, errs, now)
	case Postcopy:
		m.switchReply(p, r, errs, now)
	case SwitchOver:
		m.switchOverReply(p, r, errs, now)
	case RollingBack:
		switch p.op {
		case OpRollback:
			if in.Err == nil {
				m.rolledBack = true
			} else {
				m.log(slog.LevelWarn, "migration: rolling back the source", "host", p.host, "err", errs)
				m.rollbackNext = now.Add(RetryEvery)
			}
		case OpAbort:
			m.abortDone = true
			if in.Err != nil {
				m.log(slog.LevelWarn, "migration: dropping the destination copy later", "host", p.host, "err", errs)
				m.cleanup = append(m.cleanup, CleanupEntry(OpAbort, p.host))
			}
		}
	}
}

func (m *Machine) transferReply(p sent, r *Report, errs string, now time.Time) {
	switch {
	case p.op == OpSetBandwidth:
		// Tried once per value: a driver that cannot change a running
		// cap (or an older agent) keeps the one it started with.
		m.rateApplied = p.rate
		if errs != "" {
			m.log(slog.LevelWarn, "migration: changing the bandwidth cap", "host", p.host, "max_bandwidth", p.rate, "err", errs)
		} else {
			m.log(slog.LevelInfo, "migration bandwidth cap changed", "max_bandwidth", p.rate)
		}
	case p.op == OpStart:
		if errs != "" {
			m.startErr = errs
			return
		}
		m.rateApplied = p.rate
		m.startNeeded = false
		m.progressAt = now // the stall clock runs from the transfer's start
		m.log(slog.LevelInfo, "migration transferring", "from", m.rec.From, "to", m.rec.To)
	case p.op != OpStatus:
	case p.host == m.rec.To:
		if errs != "" || r == nil {
			m.dstErr = firstNonEmpty(errs, "no migration report")
			return
		}
		m.dstErr = ""
		switch {
		case r.VerifiedImage():
			m.verified = true
			if m.verifiedAt.IsZero() {
				m.verifiedAt = r.Status.Finished
			}
		case r.Phase == PhaseFailed:
			// Armed or not: the destination's job saw its copy fail
			// before it verified (it never moves to failed after), so
			// the copy never ran.
			m.dstFail = "destination: " + firstNonEmpty(r.Error, r.Status.Error, "failed")
		case r.Status.State == hypervisor.MigFailed && (!m.rec.Armed() || !r.MayHaveRun):
			// A copy its agent never recorded resuming never ran.
			m.dstFail = "destination: " + firstNonEmpty(r.Error, r.Status.Error, "failed")
		case r.Status.State == hypervisor.MigFailed && !m.dstWarned:
			// Armed, and no job to say what happened (the agent
			// restarted) but a record that it may have resumed the copy:
			// a copy that is gone may have run first. Only an operator
			// can tell; the VM stays paused.
			m.log(slog.LevelError, "armed migration's destination copy is gone and its agent cannot say whether it ran; the VM stays paused at the source",
				"host", m.rec.To, "err", firstNonEmpty(r.Error, r.Status.Error))
			m.dstWarned = true
		}
	case p.host == m.rec.From:
		if m.rec.Armed() {
			return // once armed only the destination decides
		}
		if errs != "" || r == nil {
			m.srcErr = firstNonEmpty(errs, "no migration report")
			return
		}
		m.srcErr = ""
		unsure := m.startUnsure
		m.startUnsure = false
		switch {
		case r.Failed():
			m.srcFail = "source: " + firstNonEmpty(r.Error, r.Status.Error, "failed")
		case r.Status.State == hypervisor.MigCancelled:
			m.srcFail = "source: transfer cancelled"
		case r.Phase == PhaseNone && r.Status.State == "" && unsure:
			m.log(slog.LevelInfo, "migration: the source has no transfer (the previous leader's start may not have reached it): starting it", "host", p.host)
			m.startNeeded = true
		case r.Phase == PhaseNone && r.Status.State == "":
			m.srcFail = "source: no migration running (agent restarted?)"
		case r.SentAll():
			m.sentAll = true // its post may have been lost (an MMC restart)
		default:
			m.live = liveOf(r, m.live, now)
			if r.Status.Postcopy != "" && m.rec.AllowPostcopy {
				m.switchReady = true
				return
			}
			if moved := r.Status.StreamBytes + r.Status.Transferred; moved != m.lastMoved {
				m.lastMoved, m.progressAt = moved, now
			}
		}
	}
}

func (m *Machine) switchReply(p sent, r *Report, errs string, now time.Time) {
	switch {
	case p.op == OpPostcopy:
		if r != nil {
			st := r.Status
			switch {
			case st.State == hypervisor.MigCompleted && st.Postcopy == "":
				// The pre-copy finished on its own before the switch
				// (QEMU went on iterating meanwhile): the source is
				// paused for good, and the usual commit applies once the
				// destination holds a verified image. Its copy is paused:
				// ask the destination now, not at the next retry.
				if !m.askDst {
					m.askDst, m.askDstSince = true, now
					m.switchNext = now
					return
				}
			case st.Postcopy == hypervisor.PostcopyActive:
				m.switched, m.switchedAt = true, st.PausedAt
			case r.Phase == PhaseFailed || st.State == hypervisor.MigFailed || st.State == hypervisor.MigCancelled:
				m.switchFail = "source, switching to post-copy: " + firstNonEmpty(r.Error, st.Error, st.State)
			}
		}
		wait := RetryEvery
		if errs == "" && now.Before(m.switchFastUntil) {
			wait = switchFastPoll
		} else if errs != "" {
			m.log(slog.LevelWarn, "migration: switching to post-copy", "host", p.host, "err", errs)
		}
		m.switchNext = now.Add(wait)
	case p.op == OpStatus && p.host == m.rec.To && errs == "" && r != nil:
		switch {
		case r.VerifiedImage():
			m.verified = true
		case r.Failed():
			m.switchFail = "destination: " + firstNonEmpty(r.Error, r.Status.Error, "failed")
		}
	}
}

func (m *Machine) switchOverReply(p sent, r *Report, errs string, now time.Time) {
	switch {
	case p.op == OpCommit:
		if errs != "" || r == nil {
			m.log(slog.LevelWarn, "migration: resuming the destination", "host", p.host, "err", firstNonEmpty(errs, "no migration report"))
			m.commitNext = now.Add(RetryEvery)
			return
		}
		m.resumed, m.resumedAt, m.dstWire = true, r.AtTime(), r.WireBytes
		if m.resumedAt.IsZero() {
			m.resumedAt = now
		}
		if r.Status.Verified {
			m.verifiedAt = r.Status.Finished
		}
	case p.op == OpStatus && p.host == m.rec.To:
		m.pullNext = now.Add(pullPoll)
		if errs == "" && r != nil {
			switch r.Status.State {
			case hypervisor.MigCompleted:
				m.pulled, m.verifiedAt, m.dstWire = true, r.Status.Finished, r.WireBytes
				return
			case hypervisor.MigFailed:
				m.pullFailed = firstNonEmpty(r.Error, r.Status.Error, "failed")
				return
			}
		}
		if now.Sub(m.pullWarn) > pullWarnEvery {
			m.pullWarn = now
			m.log(slog.LevelWarn, "migration: post-copy still pulling pages", "err", errs)
		}
	case p.op == OpStatus && p.host == m.rec.From:
		switch {
		case errs == "" && r != nil && r.Phase == PhaseTransferring && r.Status.State != hypervisor.MigCompleted &&
			now.Before(m.srcUntil.Add(finalFiguresWait-SourceReportWait)):
			// Its agent has not yet seen its hypervisor finish (a short
			// migration can be committed before the source's watcher
			// polls): its figures are not final yet; ask again shortly,
			// for a while (a source that never says, completes without).
			m.srcNext = now.Add(switchFastPoll)
		case errs == "" && r != nil:
			m.srcReport, m.srcDone = r, true
		default:
			m.srcNext = now.Add(sourceReportRetry)
			if !now.Before(m.srcUntil) {
				m.srcDone = true // complete without its figures
			}
		}
	case p.op == OpFinish:
		m.finishDone = true
		if errs != "" {
			m.log(slog.LevelWarn, "migration: destroying the source copy later", "host", p.host, "err", errs)
			m.cleanup = append(m.cleanup, CleanupEntry(OpFinish, p.host))
		}
	}
}
