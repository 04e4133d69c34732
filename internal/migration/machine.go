package migration

import (
	"fmt"
	"log/slog"
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

// Env is what the MMC knows of the world when a drive starts, checked
// before a planned migration changes anything.
type Env struct {
	SrcOnline, DstOnline bool
	// Spec is the VM's definition; nil if the source does not hold it.
	Spec *hypervisor.Spec
	// OtherHost is a host other than the source that reports the VM
	// ("" if none).
	OtherHost string
}

// Input is what happened.
type Input interface{ input() }

// Start begins a drive. Resumed: the migration was found open when the
// MMC started.
type Start struct {
	Resumed bool
	Env     Env
}

// Tick: the time NextTimeout asked for has come.
type Tick struct{}

// Posted: an agent, on its own authenticated session, posted its job's
// phase on the migration's topic.
type Posted struct {
	Host  string
	Role  Role
	Phase Phase
}

// Reply is the outcome of the Send numbered Seq. Report may be set with
// Err too (an agent that refused an op still says where it stands).
type Reply struct {
	Seq    uint64
	Report *Report
	Err    error
}

// Introduced is the outcome of Introduce, with the agents' round-trip
// times to the MMC measured then.
type Introduced struct {
	Err            error
	SrcRTT, DstRTT time.Duration
}

// Persisted is the outcome of Persist: the record as written; or Stale
// with the record as it now stands (another write came first); or Err.
type Persisted struct {
	Rec   Record
	Stale bool
	Err   error
}

// Changed: the record was written elsewhere (an administrator's cancel).
type Changed struct{ Rec Record }

func (Start) input()      {}
func (Tick) input()       {}
func (Posted) input()     {}
func (Reply) input()      {}
func (Introduced) input() {}
func (Persisted) input()  {}
func (Changed) input()    {}

// Command is what the driver is to do.
type Command interface{ command() }

// Persist writes Rec if the stored version is still IfVersion; its
// outcome comes back as Persisted.
type Persist struct {
	Rec       Record
	IfVersion uint64
}

// Send sends Op to Host's agent; its outcome comes back as Reply{Seq}.
type Send struct {
	Seq   uint64
	Host  string
	Op    Op
	Order Order
}

// Introduce puts the two agents in touch for the migration's link (the
// listener expects the dialer); its outcome comes back as Introduced.
type Introduce struct{ Listener, Dialer string }

// Note posts text on the migration's topic for operators.
type Note struct{ Text string }

// Log is a line for the MMC's log.
type Log struct {
	Level slog.Level
	Msg   string
	Args  []any
}

// Ended: the migration reached its outcome (Rec, as persisted): the
// driver closes its books (policy, topic, audit).
type Ended struct{ Rec Record }

func (Persist) command()   {}
func (Send) command()      {}
func (Introduce) command() {}
func (Note) command()      {}
func (Log) command()       {}
func (Ended) command()     {}

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
	wake    time.Time // NextTimeout
	seq     uint64
	pending map[uint64]sent
	out     []Command // built by a Step

	// preparing
	resumedPreparing bool
	intro            int // introNone, introAsked, introDone
	introErr         string
	srcRTT, dstRTT   time.Duration
	prepared         bool
	prepErr          string

	// transferring
	startNeeded bool // this drive entered transferring: the source is to be started
	startErr    string
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
	state State // the record's state when sent: a reply from an earlier state is stale
}

const (
	introNone = iota
	introAsked
	introDone
)

// New returns a machine for rec, as stored.
func New(rec Record) *Machine {
	return &Machine{rec: rec, pending: map[uint64]sent{}}
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
		if !m.rec.State.Open() {
			m.done = true
			return nil
		}
	case Tick:
	case Posted:
		m.posted(in)
	case Reply:
		m.reply(in, now)
	case Introduced:
		if m.intro == introAsked {
			m.intro, m.srcRTT, m.dstRTT = introDone, in.SrcRTT, in.DstRTT
			if in.Err != nil {
				m.introErr = in.Err.Error()
			}
		}
	case Persisted:
		m.persisted(in, now)
	case Changed:
		if in.Rec.ID == m.rec.ID && in.Rec.Version > m.rec.Version {
			m.rec = in.Rec
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
	m.pending[m.seq] = sent{op: op, host: host, state: m.rec.State}
	m.emit(Send{Seq: m.seq, Host: host, Op: op, Order: o})
}

func (m *Machine) inflight(host string, op Op) bool {
	for _, p := range m.pending {
		if p.host == host && p.op == op {
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
	switch {
	case in.Stale:
		if in.Rec.Version > m.rec.Version {
			m.rec = in.Rec
		}
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
	if !r.State.Open() {
		m.done = true
		m.wake = time.Time{}
		m.emit(Ended{Rec: r})
	}
}

// posted records what an agent's phase says. Only the agents of the
// migration count, each in its own role.
func (m *Machine) posted(p Posted) {
	switch {
	case p.Host == m.rec.To && p.Role == Destination && (p.Phase == PhaseCompleted || p.Phase == PhaseCommitted):
		// Its agent posts completed only with a verified image, and
		// resumes (committed) only once verified.
		if m.rec.State == Transferring {
			m.verified = true
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
	case p.op == OpStart:
		if errs != "" {
			m.startErr = errs
			return
		}
		m.startNeeded = false
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
		switch {
		case r.Failed():
			m.srcFail = "source: " + firstNonEmpty(r.Error, r.Status.Error, "failed")
		case r.Status.State == hypervisor.MigCancelled:
			m.srcFail = "source: transfer cancelled"
		case r.Phase == PhaseNone && r.Status.State == "":
			m.srcFail = "source: no migration running (agent restarted?)"
		case r.SentAll():
			m.sentAll = true // its post may have been lost (an MMC restart)
		default:
			m.live = liveOf(r, m.live)
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
				// destination holds a verified image.
				m.askDst = true
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
		if errs == "" && r != nil {
			m.srcReport, m.srcDone = r, true
			return
		}
		m.srcNext = now.Add(sourceReportRetry)
		if !now.Before(m.srcUntil) {
			m.srcDone = true // complete without its figures
		}
	case p.op == OpFinish:
		m.finishDone = true
		if errs != "" {
			m.log(slog.LevelWarn, "migration: destroying the source copy later", "host", p.host, "err", errs)
			m.cleanup = append(m.cleanup, CleanupEntry(OpFinish, p.host))
		}
	}
}

// advance decides from what the machine knows now.
func (m *Machine) advance(now time.Time) {
	m.wake = time.Time{}
	if m.writing {
		return
	}
	if !m.retryAt.IsZero() {
		if now.Before(m.retryAt) {
			m.at(m.retryAt)
			return
		}
		m.retryAt = time.Time{}
	}
	switch m.rec.State {
	case Planned:
		m.plan(now)
	case Preparing:
		m.prepare(now)
	case Transferring:
		m.transfer(now)
	case Postcopy:
		m.postcopy(now)
	case SwitchOver:
		m.switchOver(now)
	case RollingBack:
		m.rollBack(now)
	default:
		m.rollback(Failed, now, "unknown state %q", m.rec.State)
	}
}

func (m *Machine) plan(now time.Time) {
	r, e := m.rec, m.env
	switch {
	case r.CancelRequested:
		m.rollback(Cancelled, now, "cancelled before it started")
	case !e.SrcOnline || !e.DstOnline:
		m.rollback(Failed, now, "%s or %s is offline", r.From, r.To)
	case e.Spec == nil:
		m.rollback(Failed, now, "VM %s is no longer on %s", r.VM, r.From)
	case e.OtherHost != "" && e.OtherHost != r.From:
		m.rollback(Failed, now, "VM %s is reported by %s too", r.VM, e.OtherHost)
	default:
		r.State = Preparing
		m.persist(r, now)
	}
}

func (m *Machine) prepare(now time.Time) {
	r := m.rec
	switch {
	case m.resumedPreparing:
		m.rollback(Failed, now, "the MMC restarted while preparing the destination")
	case m.intro == introNone:
		m.intro = introAsked
		m.emit(Introduce{Listener: r.To, Dialer: r.From})
	case m.intro == introAsked:
	case m.introErr != "":
		m.rollback(Failed, now, "introducing the agents: %s", m.introErr)
	case m.prepErr != "":
		m.rollback(Failed, now, "preparing the destination: %s", m.prepErr)
	case !m.prepared:
		o := m.order()
		o.Spec = m.env.Spec
		m.send(r.To, OpPrepare, o)
	case r.CancelRequested:
		m.rollback(Cancelled, now, "cancelled")
	default:
		r.State, r.Started = Transferring, now
		m.persist(r, now)
	}
}

// StopAndCopy is the part of the downtime limit the source's final copy
// may take. The rest of the downtime is fixed costs, estimated from the
// agents' round-trip times to the MMC: the backlog ahead of the final
// copy (the migration stream's bounded queue), the one-way delay of the
// agents' link (half its RTT, which is about the sum of their RTTs to the
// MMC, since the MMC sits near one of them), one link RTT to repair what
// the path lost in the final copy's last round trip (at 1 % loss a final
// copy of a few hundred packets almost always loses one, and the repair
// of the last ones costs a round trip), and 30 ms for the arming's fsync,
// scheduling and the socket pairs between the agents and their
// hypervisors. The arming itself travels beside the stream's tail, so the
// destination resumes without a round trip to the MMC. It never goes
// below a sixth of the limit.
func StopAndCopy(limit, srcRTT, dstRTT time.Duration) time.Duration {
	link := srcRTT + dstRTT
	fixed := QueueDelay + link/2 + link + 30*time.Millisecond
	return max(limit-fixed, limit/6)
}

func (m *Machine) transfer(now time.Time) {
	r := m.rec
	armed := r.Armed()
	if m.progressAt.IsZero() {
		m.progressAt = now
	}
	if m.startNeeded {
		if m.startErr != "" {
			m.rollback(Failed, now, "starting the transfer: %s", m.startErr)
			return
		}
		o := m.order()
		o.Params = r.Params(StopAndCopy(r.DowntimeLimit(), m.srcRTT, m.dstRTT))
		m.send(r.From, OpStart, o)
		return
	}
	switch {
	case r.CancelRequested && !armed:
		m.rollback(Cancelled, now, "cancelled by the administrator")
		return
	case m.verified:
		// The commit: from this write on the destination is the VM.
		r.State, r.Verified, r.Progress, r.CommittedAt = SwitchOver, true, 1, now
		m.persist(r, now)
		return
	case m.dstFail != "":
		m.rollback(Failed, now, "%s", m.dstFail)
		return
	case !armed && m.srcFail != "":
		m.rollback(Failed, now, "%s", m.srcFail)
		return
	case !armed && m.sentAll:
		r.ArmedAt = now
		m.persist(r, now)
		return
	case !armed && m.switchReady:
		r.State = Postcopy
		m.persist(r, now)
		return
	case armed && !m.armSent:
		// Sent once per drive: after an MMC restart the order may not
		// have left.
		m.armSent = true
		m.send(r.To, OpArm, m.order())
	case !armed && m.live != nil && m.live.Progress-r.Progress >= progressStep:
		r.Progress = m.live.Progress
		m.persist(r, now)
		return
	}
	if now.Sub(m.progressAt) > StallTimeout {
		if armed {
			// The destination may have resumed: an agent that is away,
			// or a link that died in the last round trip, is waited for.
			m.log(slog.LevelWarn, "armed migration waits for its destination", "host", r.To, "err", errText(m.dstErr))
			m.progressAt = now
		} else {
			m.rollback(Failed, now, "no progress for %v (source: %s; destination: %s)", StallTimeout, errText(m.srcErr), errText(m.dstErr))
			return
		}
	}
	if !now.Before(m.nextPoll) {
		m.nextPoll = now.Add(PollEvery)
		m.send(r.To, OpStatus, m.order())
		if !armed {
			m.send(r.From, OpStatus, m.order())
		}
	}
	m.at(m.nextPoll)
	m.at(m.progressAt.Add(StallTimeout).Add(time.Nanosecond))
}

func (m *Machine) postcopy(now time.Time) {
	r := m.rec
	if m.switchFastUntil.IsZero() {
		m.switchFastUntil = now.Add(switchFastFor)
	}
	switch {
	case m.switchFail != "":
		m.rollback(Failed, now, "%s", m.switchFail)
		return
	case m.askDst && m.verified:
		r.State, r.Verified, r.Progress, r.CommittedAt = SwitchOver, true, 1, now
		m.persist(r, now)
		return
	case m.switched:
		r.State, r.Postcopy, r.CommittedAt, r.PausedAt = SwitchOver, true, now, m.switchedAt
		m.persist(r, now)
		return
	}
	if !now.Before(m.switchNext) {
		m.send(r.From, OpPostcopy, m.order())
		if m.askDst {
			m.send(r.To, OpStatus, m.order())
		}
	}
	if !m.inflight(r.From, OpPostcopy) {
		m.at(m.switchNext)
	}
}

func (m *Machine) switchOver(now time.Time) {
	r := m.rec
	if !m.resumed {
		if !now.Before(m.commitNext) {
			o := m.order()
			// A post-copy destination resumes as soon as it is in
			// post-copy (its agent waits for that).
			o.Params.Postcopy = r.Postcopy
			m.send(r.To, OpCommit, o)
		}
		if !m.inflight(r.To, OpCommit) {
			m.at(m.commitNext)
		}
		return
	}
	if r.Postcopy && !m.pulled {
		// The source holds the pages the destination has not pulled
		// yet. A post-copy cut off from its source pauses and waits;
		// nothing here can roll it back or forward.
		if m.pullFailed != "" {
			// Neither copy is a VM any more. Say so; destroy nothing.
			r.State, r.Finished = Failed, now
			r.Error = "post-copy failed at the destination (" + m.pullFailed +
				"): the guest's memory was split between the hosts; both copies are kept for inspection"
			m.persist(r, now)
			return
		}
		if m.pullWarn.IsZero() {
			m.pullWarn = now
		}
		if !now.Before(m.pullNext) {
			m.send(r.To, OpStatus, m.order())
		}
		if !m.inflight(r.To, OpStatus) {
			m.at(m.pullNext)
		}
		return
	}
	if !m.srcDone {
		// The source's figures (pause time, rounds, bytes) for the
		// report, read before its copy goes; an agent that is away (it
		// may not yet have noticed an MMC restart) gets a while.
		if !m.srcAsked {
			m.srcAsked, m.srcUntil = true, now.Add(SourceReportWait)
		}
		if !now.Before(m.srcNext) {
			m.send(r.From, OpStatus, m.order())
		}
		if !m.inflight(r.From, OpStatus) {
			m.at(m.srcNext)
		}
		return
	}
	if !m.finishDone {
		if !m.finishAsked {
			m.finishAsked = true
			m.send(r.From, OpFinish, m.order())
		}
		return
	}
	r.State, r.ResumedAt, r.Finished, r.VerifiedAt, r.BytesOnWire = Completed, m.resumedAt, now, m.verifiedAt, m.dstWire
	if src := m.srcReport; src != nil {
		r.PausedAt, r.Rounds, r.Transferred = src.Status.PausedAt, src.Status.Round, src.Status.Transferred
		if src.Status.State == hypervisor.MigCompleted {
			r.SentAt = src.Status.Finished
		}
		r.BytesOnWire += src.WireBytes
	}
	end := m.resumedAt
	if r.Postcopy {
		end = m.verifiedAt // the last page arrived
		r.Verified = !m.verifiedAt.IsZero()
	}
	if !r.Started.IsZero() && !end.IsZero() {
		r.TotalMS = end.Sub(r.Started).Milliseconds()
	}
	if !r.PausedAt.IsZero() {
		r.DowntimeMS = max(0, m.resumedAt.Sub(r.PausedAt).Milliseconds())
	}
	r.Cleanup = append(append([]string(nil), r.Cleanup...), m.cleanup...)
	m.persist(r, now)
}

// rollBack makes the source the running copy again and has the
// destination drop its copy. The source must answer (a copy paused after
// a complete transfer resumes only when told); the destination's abort is
// left as a cleanup if its agent is away (its copy is never resumed
// without a commit, so it is harmless until then).
func (m *Machine) rollBack(now time.Time) {
	r := m.rec
	if !m.rolledBack {
		if !now.Before(m.rollbackNext) {
			m.send(r.From, OpRollback, m.order())
		}
		if !m.inflight(r.From, OpRollback) {
			m.at(m.rollbackNext)
		}
		return
	}
	if !m.abortDone {
		if !m.abortAsked {
			m.abortAsked = true
			m.send(r.To, OpAbort, m.order())
		}
		return
	}
	r.State, r.Finished = Failed, now
	if r.Outcome == Cancelled {
		r.State = Cancelled
	}
	r.Cleanup = append(append([]string(nil), r.Cleanup...), m.cleanup...)
	m.persist(r, now)
}
