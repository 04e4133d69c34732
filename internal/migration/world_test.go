package migration

import (
	"container/heap"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// A deterministic world for the Machine: a simulated clock and event
// queue, a store with version-conditional writes, and two hosts, each an
// agent (internal/agent/migrate.go, as the ops answer) over a model
// hypervisor (the contract of internal/hypervisor/migration.go, shaped
// like internal/agent/fakevm_test.go). The MMC's driver is played as
// internal/mmc/orchestrate.go does it: a Persist's outcome is stepped at
// once, orders and introductions answer later, and the machine's
// NextTimeout becomes a Tick. No goroutines, sockets or sleeps: a case is
// a few thousand events.
//
// Failures are injected as the integration matrix does
// (internal/agent/orchestrate_test.go): an agent dies (its jobs and
// links go, its VMs stay), the link is cut, the MMC restarts (the
// machine is dropped with whatever was in flight, and a new one is built
// from the stored record), an administrator cancels (the store's
// CheckCancel, then Changed). Gates hold the world at a phase.

const (
	wSrc = "h1"
	wDst = "h2"
	wVM  = "vm1"
	wID  = "m1"

	netDelay   = time.Millisecond // MMC ↔ agent, one way
	chunkEvery = 10 * time.Millisecond
	chunkBytes = 64 << 10
	chunks     = 20 // the VM's memory, in chunks
	pcTail     = 3  // chunks a post-copy source sends after it switched
	linkWait   = time.Minute
	wSrcRTT    = 10 * time.Millisecond
	wDstRTT    = 20 * time.Millisecond
	simLimit   = 10 * time.Minute
	// agentDelay / mmcDelay: how long a dead agent / a stopped MMC
	// stays away by default.
	agentAway = 600 * time.Millisecond
	mmcAway   = 800 * time.Millisecond
	releaseIn = 300 * time.Millisecond
)

// Gates, as in fakevm_test.go.
const (
	gatePrepare = "prepare" // the destination's PrepareIncoming waits
	gateEnd     = "end"     // a source waits before its last chunk (its VM still running)
	gateResume  = "resume"  // every Resume on the host waits
	gateSwitch  = "switch"  // StartPostcopy waits
	gateVerify  = "verify"  // a destination holding the whole stream waits before verifying it
	lockCommit  = "commitMu"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// ---- event queue ----

type event struct {
	at  time.Time
	seq int
	fn  func()
}

type events []*event

func (q events) Len() int { return len(q) }
func (q events) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q events) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *events) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *events) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// ---- hosts ----

// lifetime says what ends a parked operation.
type lifetime int

const (
	hvLife  lifetime = iota // the hypervisor's own work: outlives its agent
	jobLife                 // an agent job's (an armed self-commit): ends with the agent
	opLife                  // an MMC order's: ends with the agent or the MMC's session
)

type parked struct {
	life   lifetime
	mmcGen int
	fn     func()
	drop   func()
}

type vmCopy struct {
	state    hypervisor.State
	mig      hypervisor.MigrationStatus
	incoming bool
	pending  bool // incoming, never resumed
	complete bool // incoming: the whole stream (and its checksum) arrived
	sent     int  // source: chunks sent
	recv     int  // destination: chunks received
}

type job struct {
	order      Order
	role       Role
	phase      Phase
	err        string
	at         time.Time
	status     hypervisor.MigrationStatus
	armed      bool
	wire       uint64
	committing bool
	attached   bool // destination: the source's stream arrived
	stopped    bool // its watcher ended (j.stop)
}

type host struct {
	name       string
	up         bool
	agentGen   int // a new agent process (or session) each restart
	job        *job
	mayHaveRun bool // the agent's resume record: kept across restarts
	vm         *vmCopy
	held       map[string]bool
	parked     map[string][]*parked
	badImage   bool
	rate       float64 // the source transfer's cap, as set by set-bandwidth
	// alwaysMayHaveRun: an agent without a data directory, which cannot
	// keep the record and answers that every copy may have run.
	alwaysMayHaveRun bool
}

type link struct {
	up         bool
	waiting    *host // a destination job waiting for the source's stream
	waitingJob *job
}

type stream struct {
	src, dst    *vmCopy
	dstHost     *host
	postcopy    bool
	broken      bool
	done        bool
	passedEnd   bool
	parkedAtEnd bool
}

type trigger struct {
	name string
	cond func() bool
	do   func()
	done bool
}

// world is one simulation.
type world struct {
	t       *testing.T
	now     time.Time
	q       events
	seq     int
	nEvents int
	sameAt  int

	// the MMC
	store     Record
	env       Env
	mmcUp     bool
	gen       int
	m         *Machine
	timerID   int
	ended     int
	introRTT  [2]time.Duration
	cancelErr error
	cancelled bool
	// hooks
	beforePersist func(p Persist)
	failWrites    int
	// actionsOutliveMMC: an order an agent is carrying out goes on when
	// the MMC's session ends (only its answer is lost).
	actionsOutliveMMC bool
	persists          []Record
	sends             []Send
	logs              []Log

	hosts    map[string]*host
	link     *link
	stream   *stream
	triggers []*trigger

	trace []string
}

func newWorld(t *testing.T, opts Options) *world {
	t.Helper()
	w := &world{t: t, now: t0, hosts: map[string]*host{}}
	for _, n := range []string{wSrc, wDst} {
		w.hosts[n] = &host{name: n, up: true, held: map[string]bool{}, parked: map[string][]*parked{}}
	}
	w.hosts[wSrc].vm = &vmCopy{state: hypervisor.StateRunning}
	w.store = Record{ID: wID, VM: wVM, From: wSrc, To: wDst, State: Planned, By: "admin", Options: opts,
		Created: t0, Updated: t0, Version: 1}
	w.env = Env{SrcOnline: true, DstOnline: true, Spec: &hypervisor.Spec{Name: wVM, Memory: chunks * chunkBytes, VCPUs: 1}}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("WORLD_TRACE") != "" {
			n := max(0, len(w.trace)-120)
			t.Logf("world trace (last %d of %d):\n%s", len(w.trace)-n, len(w.trace), strings.Join(w.trace[n:], "\n"))
		}
	})
	return w
}

func (w *world) tracef(format string, args ...any) {
	w.trace = append(w.trace, fmt.Sprintf("%8.3fs ", w.now.Sub(t0).Seconds())+fmt.Sprintf(format, args...))
}

// violation records a broken invariant (the case goes on, to show what
// followed in the trace).
func (w *world) violation(format string, args ...any) {
	w.t.Helper()
	msg := fmt.Sprintf(format, args...)
	w.tracef("VIOLATION: %s", msg)
	w.t.Errorf("t=%v: %s", w.now.Sub(t0), msg)
}

func (w *world) after(d time.Duration, fn func()) { w.atTime(w.now.Add(d), fn) }

func (w *world) atTime(at time.Time, fn func()) {
	if at.Before(w.now) {
		at = w.now
	}
	w.seq++
	heap.Push(&w.q, &event{at: at, seq: w.seq, fn: fn})
}

// when runs do once, after the first event that makes cond true.
func (w *world) when(name string, cond func() bool, do func()) {
	w.triggers = append(w.triggers, &trigger{name: name, cond: cond, do: do})
}

func (w *world) fired(name string) bool {
	for _, tr := range w.triggers {
		if tr.name == name {
			return tr.done
		}
	}
	return false
}

// next runs one event; false if there is none before deadline.
func (w *world) next(deadline time.Time) bool {
	if len(w.q) == 0 || w.q[0].at.After(deadline) {
		return false
	}
	e := heap.Pop(&w.q).(*event)
	if e.at.Equal(w.now) {
		w.sameAt++
		if w.sameAt > 100_000 {
			w.t.Fatalf("livelock: over 100000 events at t=%v (state %s)", w.now.Sub(t0), w.store.State)
		}
	} else {
		w.sameAt = 0
	}
	w.now = e.at
	w.nEvents++
	e.fn()
	w.checkWorld()
	for _, tr := range w.triggers {
		if !tr.done && tr.cond() {
			tr.done = true
			w.tracef("inject: %s", tr.name)
			tr.do()
			w.checkWorld()
		}
	}
	return true
}

// run starts the migration and runs the world until the machine reaches
// an outcome, then a simulated minute more with the MMC's cleanup loop.
func (w *world) run() {
	w.t.Helper()
	w.begin()
	deadline := t0.Add(simLimit)
	for w.ended == 0 {
		if !w.next(deadline) {
			w.t.Fatalf("no outcome within %v of simulated time (state %s, error %q; %d events)", simLimit, w.store.State, w.store.Error, w.nEvents)
		}
	}
	w.settle(time.Minute)
}

// runFor starts the migration (if not started) and runs d of simulated
// time.
func (w *world) runFor(d time.Duration) {
	if w.m == nil && !w.mmcUp {
		w.begin()
	}
	end := w.now.Add(d)
	for w.next(end) {
	}
	w.now = end
}

// settle runs d more, retrying cleanups every 5 s as the MMC does.
func (w *world) settle(d time.Duration) {
	end := w.now.Add(d)
	for t := w.now.Add(5 * time.Second); !t.After(end); t = t.Add(5 * time.Second) {
		w.atTime(t, w.cleanups)
	}
	for w.next(end) {
	}
	w.now = end
}

func (w *world) begin() {
	w.mmcUp, w.gen = true, w.gen+1
	w.m = New(w.store)
	w.tracef("MMC starts a drive of %s (%s, v%d)", w.store.ID, w.store.State, w.store.Version)
	w.step(Start{Env: w.env})
}

// ---- the MMC: driver and store ----

func (w *world) step(in Input) {
	if !w.mmcUp || w.m == nil || w.m.Done() {
		return
	}
	q := w.stepM(in)
	for n := 0; len(q) > 0; n++ {
		if n > 10_000 {
			w.t.Fatalf("runaway: over 10000 commands from one input (%T) at t=%v: %s", in, w.now.Sub(t0), describe(q[:min(len(q), 8)]))
		}
		c := q[0]
		q = q[1:]
		if in := w.execute(c); in != nil {
			q = append(q, w.stepM(in)...)
		}
	}
	w.armTimer()
}

func (w *world) stepM(in Input) []Command {
	out := w.m.Step(in, w.now)
	checkBatch(w.t, in, out)
	return out
}

// checkBatch: nothing follows a Persist in the batch of one Step.
func checkBatch(t *testing.T, in Input, out []Command) {
	t.Helper()
	for i, c := range out {
		if _, ok := c.(Persist); ok && i != len(out)-1 {
			t.Errorf("Step(%T) emitted %T after a Persist in the same batch: %s", in, out[i+1], describe(out))
		}
	}
}

func describe(out []Command) string {
	var s []string
	for _, c := range out {
		switch c := c.(type) {
		case Persist:
			s = append(s, fmt.Sprintf("Persist(%s if v%d)", c.Rec.State, c.IfVersion))
		case Send:
			s = append(s, fmt.Sprintf("Send(%s→%s)", c.Op, c.Host))
		default:
			s = append(s, fmt.Sprintf("%T", c))
		}
	}
	return strings.Join(s, ", ")
}

func (w *world) armTimer() {
	w.timerID++
	if w.m == nil || w.m.Done() {
		return
	}
	next := w.m.NextTimeout()
	if next.IsZero() {
		return
	}
	id, gen := w.timerID, w.gen
	w.atTime(next, func() {
		if w.timerID == id && w.gen == gen {
			w.step(Tick{})
		}
	})
}

func (w *world) execute(c Command) Input {
	switch c := c.(type) {
	case Persist:
		return w.persist(c)
	case Send:
		w.checkSend(c)
		w.sends = append(w.sends, c)
		w.tracef("MMC → %s %s (seq %d)", c.Host, c.Op, c.Seq)
		h, gen, ag := w.hosts[c.Host], w.gen, 0
		if h != nil {
			ag = h.agentGen
		}
		w.after(netDelay, func() { w.agentOp(h, c, gen, ag) })
	case Introduce:
		gen := w.gen
		w.tracef("MMC introduces %s to %s", c.Dialer, c.Listener)
		w.after(netDelay, func() {
			if gen != w.gen {
				return
			}
			in := Introduced{SrcRTT: wSrcRTT, DstRTT: wDstRTT, Path: "relayed", Took: 42 * time.Millisecond}
			l, d := w.hosts[c.Listener], w.hosts[c.Dialer]
			if l == nil || d == nil || !l.up || !d.up {
				in = Introduced{Err: errors.New("mmc: agent offline")}
			} else {
				w.link = &link{up: true}
				w.introRTT = [2]time.Duration{wSrcRTT, wDstRTT}
			}
			w.after(netDelay, func() {
				if gen == w.gen {
					w.step(in)
				}
			})
		})
	case Note:
		w.tracef("note: %s", c.Text)
	case Log:
		w.logs = append(w.logs, c)
		w.tracef("log %s: %s %v", c.Level, c.Msg, c.Args)
	case Ended:
		w.ended++
		w.tracef("ended: %s", c.Rec.State)
		if w.ended > 1 {
			w.violation("Ended emitted %d times", w.ended)
		}
		if c.Rec.State != w.store.State || c.Rec.Version != w.store.Version {
			w.violation("Ended with %s v%d, the store holds %s v%d", c.Rec.State, c.Rec.Version, w.store.State, w.store.Version)
		}
	default:
		w.violation("unknown command %T", c)
	}
	return nil
}

func (w *world) persist(p Persist) Input {
	if w.beforePersist != nil {
		w.beforePersist(p)
	}
	if w.failWrites > 0 {
		w.failWrites--
		w.tracef("store: write of %s fails", p.Rec.State)
		return Persisted{Err: errors.New("store: disk full")}
	}
	if p.IfVersion != w.store.Version {
		w.tracef("store: stale write of %s (if v%d; at v%d)", p.Rec.State, p.IfVersion, w.store.Version)
		return Persisted{Rec: w.store, Stale: true}
	}
	w.checkWrite(w.store, p.Rec)
	r := p.Rec
	r.Version = p.IfVersion + 1
	w.store = r
	w.persists = append(w.persists, r)
	w.tracef("store: %s v%d armed=%v cancel=%v err=%q", r.State, r.Version, r.Armed(), r.CancelRequested, r.Error)
	return Persisted{Rec: r}
}

var legal = map[State][]State{
	Planned:      {Preparing, RollingBack},
	Preparing:    {Transferring, RollingBack},
	Transferring: {Transferring, Postcopy, SwitchOver, RollingBack},
	Postcopy:     {SwitchOver, RollingBack},
	SwitchOver:   {Completed, Failed},
	RollingBack:  {Cancelled, Failed},
}

// checkWrite: what a write says must be true of the world when it lands.
func (w *world) checkWrite(old, r Record) {
	w.t.Helper()
	if r.ID != old.ID || r.VM != old.VM || r.From != old.From || r.To != old.To {
		w.violation("a write changed the migration's identity: %+v", r)
	}
	ok := false
	for _, s := range legal[old.State] {
		ok = ok || s == r.State
	}
	if !ok {
		w.violation("illegal transition %s → %s", old.State, r.State)
	}
	src, dst := w.hosts[wSrc].vm, w.hosts[wDst].vm
	if r.Armed() && !old.Armed() {
		if r.State != Transferring || r.CancelRequested {
			w.violation("armed in state %s (cancel %v)", r.State, r.CancelRequested)
		}
		if src == nil || src.mig.State != hypervisor.MigCompleted || src.mig.Postcopy != "" {
			w.violation("armed while the source has not sent its last byte")
		}
	}
	if old.Armed() && !r.Armed() {
		w.violation("armed_at cleared")
	}
	switch {
	case r.State == Transferring && old.State == Preparing:
		if r.CancelRequested {
			w.violation("a cancelled migration starts its transfer")
		}
	case r.State == SwitchOver && old.State != SwitchOver:
		if r.Postcopy {
			if src == nil || src.mig.Postcopy != hypervisor.PostcopyActive {
				w.violation("post-copy commit while the source has not switched")
			}
		} else if dst == nil || dst.mig.State != hypervisor.MigCompleted || !dst.mig.Verified {
			w.violation("commit while the destination holds no verified image")
		}
		if r.CancelRequested && !old.Armed() && old.State == Transferring {
			w.violation("commit over a cancel on record")
		}
	case r.State == RollingBack && old.State != RollingBack:
		if old.State == Postcopy && src != nil && src.mig.Postcopy == hypervisor.PostcopyActive {
			w.violation("rollback of a source that switched to post-copy")
		}
		if old.Armed() && dst != nil && (dst.state == hypervisor.StateRunning || dst.mig.State != hypervisor.MigFailed) {
			w.violation("rollback of an armed migration whose destination copy may run (%s, %s)", dst.state, dst.mig.State)
		}
	case r.State == Completed:
		if dst == nil || dst.state != hypervisor.StateRunning {
			w.violation("completed while the destination does not run")
		}
	}
}

// checkSend: an agent is told only what the record already says.
func (w *world) checkSend(c Send) {
	w.t.Helper()
	r := w.store
	if err := c.Order.Check(); err != nil || c.Order.ID != r.ID || c.Order.VM != r.VM {
		w.violation("bad order for %s: %+v (%v)", c.Op, c.Order, err)
	}
	want := func(host string, ok bool, what string) {
		if c.Host != host {
			w.violation("%s sent to %s, not %s", c.Op, c.Host, host)
		}
		if !ok {
			w.violation("%s sent while the record is %s (armed %v): %s", c.Op, r.State, r.Armed(), what)
		}
	}
	switch c.Op {
	case OpPrepare:
		want(r.To, r.State == Preparing && c.Order.Spec != nil, "want preparing, with the spec")
	case OpStart:
		want(r.From, r.State == Transferring && !r.Armed() && !r.CancelRequested, "want transferring, not cancelled")
		if lim := StopAndCopy(r.DowntimeLimit(), w.introRTT[0], w.introRTT[1]); c.Order.Params.DowntimeLimit != lim {
			w.violation("start's downtime limit %v, want StopAndCopy = %v", c.Order.Params.DowntimeLimit, lim)
		}
		if c.Order.Params.Postcopy != r.AllowPostcopy {
			w.violation("start's post-copy %v, options %v", c.Order.Params.Postcopy, r.AllowPostcopy)
		}
	case OpArm:
		want(r.To, r.State == Transferring && r.Armed(), "want the armed write landed")
	case OpPostcopy:
		want(r.From, r.State == Postcopy, "want postcopy")
	case OpCommit:
		want(r.To, r.State == SwitchOver, "want switch-over")
		if c.Order.Params.Postcopy != r.Postcopy {
			w.violation("commit's post-copy %v, record %v", c.Order.Params.Postcopy, r.Postcopy)
		}
	case OpFinish:
		want(r.From, r.State == SwitchOver, "want switch-over")
	case OpRollback, OpCancel:
		want(r.From, r.State == RollingBack, "want rolling-back")
	case OpAbort:
		want(r.To, r.State == RollingBack, "want rolling-back")
	case OpStatus:
		if c.Host != r.From && c.Host != r.To {
			w.violation("status asked of %s", c.Host)
		}
	case OpSetBandwidth:
		want(r.From, r.State == Transferring && !r.Armed(), "want transferring, not armed")
		if c.Order.Params.MaxBandwidth != r.MaxRate {
			w.violation("set-bandwidth to %v, the record's cap is %v", c.Order.Params.MaxBandwidth, r.MaxRate)
		}
	default:
		w.violation("unknown op %s", c.Op)
	}
}

// checkWorld: never two running copies.
func (w *world) checkWorld() {
	if n := w.running(); n > 1 {
		w.violation("%d running copies of the VM", n)
	}
}

func (w *world) running() int {
	n := 0
	for _, h := range w.hosts {
		if h.vm != nil && h.vm.state == hypervisor.StateRunning {
			n++
		}
	}
	return n
}

// cancel is an administrator's cancel: the store's check, then the
// drive is told (mmc/migrations.go).
func (w *world) cancel() {
	if err := CheckCancel(w.store); err != nil {
		w.cancelErr = err
		w.tracef("cancel refused: %v", err)
		return
	}
	w.store.CancelRequested, w.store.Updated = true, w.now
	w.store.Version++
	w.cancelled = true
	w.tracef("cancel recorded (v%d)", w.store.Version)
	rec, gen := w.store, w.gen
	w.after(0, func() {
		if gen == w.gen {
			w.step(Changed{Rec: rec})
		}
	})
}

// setRate is an administrator's change of the cap (mmc/migrations.go):
// the record changes, then the drive is told.
func (w *world) setRate(rate float64) {
	w.store.MaxRate, w.store.Updated = rate, w.now
	w.store.Version++
	w.tracef("cap %v recorded (v%d)", rate, w.store.Version)
	rec, gen := w.store, w.gen
	w.after(0, func() {
		if gen == w.gen {
			w.step(Changed{Rec: rec})
		}
	})
}

// cleanups is the MMC's loop over orders left for agents that were away.
func (w *world) cleanups() {
	for _, c := range append([]string(nil), w.store.Cleanup...) {
		op, name, ok := ParseCleanup(c)
		h := w.hosts[name]
		if !ok || h == nil {
			w.violation("bad cleanup entry %q", c)
			continue
		}
		if !h.up {
			continue
		}
		var res error = errors.New("pending")
		done := func(err error) { res = err }
		o := Order{ID: w.store.ID, Topic: Topic(w.store.ID), VM: w.store.VM}
		switch op {
		case OpFinish:
			w.finishOp(h, o, done)
		case OpAbort:
			w.abortOp(h, o, done)
		}
		w.tracef("cleanup %s: %v", c, res)
		if res == nil {
			kept := []string{}
			for _, e := range w.store.Cleanup {
				if e != c {
					kept = append(kept, e)
				}
			}
			w.store.Cleanup = kept
			w.store.Version++
		}
	}
}

// stopMMC: the MMC goes, and with it its machine, whatever it had in
// flight, and the agents' sessions (their actions are cancelled).
func (w *world) stopMMC() {
	w.tracef("MMC stops")
	w.mmcUp, w.m = false, nil
	w.gen++
	if w.actionsOutliveMMC {
		return
	}
	for _, h := range w.hosts {
		w.dropParked(h, func(p *parked) bool { return p.life == opLife })
	}
}

// startMMC: a new MMC finds the migration open.
func (w *world) startMMC() {
	w.mmcUp, w.gen = true, w.gen+1
	w.m = New(w.store)
	w.tracef("MMC restarts: a drive of %s (%s, v%d)", w.store.ID, w.store.State, w.store.Version)
	env := Env{}
	if w.store.State == Planned {
		env = w.env
	}
	w.step(Start{Resumed: true, Env: env})
}

// ---- agents ----

func (w *world) hold(name, gate string) { w.hosts[name].held[gate] = true }

func (w *world) release(name, gate string) {
	h := w.hosts[name]
	h.held[gate] = false
	ps := h.parked[gate]
	h.parked[gate] = nil
	w.tracef("%s: gate %s released (%d waiting)", name, gate, len(ps))
	for _, p := range ps {
		p.fn()
	}
}

func (w *world) atGate(name, gate string) bool { return len(w.hosts[name].parked[gate]) > 0 }

// park holds fn at gate if the gate is held.
func (w *world) park(h *host, gate string, life lifetime, fn, drop func()) bool {
	if !h.held[gate] {
		return false
	}
	w.wait(h, gate, life, fn, drop)
	return true
}

func (w *world) wait(h *host, gate string, life lifetime, fn, drop func()) {
	w.tracef("%s: waits at %s", h.name, gate)
	h.parked[gate] = append(h.parked[gate], &parked{life: life, mmcGen: w.gen, fn: fn, drop: drop})
}

func (w *world) wake(h *host, gate string) {
	ps := h.parked[gate]
	h.parked[gate] = nil
	for _, p := range ps {
		p.fn()
	}
}

func (w *world) dropParked(h *host, which func(*parked) bool) {
	var dropped []*parked
	for g, ps := range h.parked {
		kept := ps[:0:0]
		for _, p := range ps {
			if which(p) {
				dropped = append(dropped, p)
			} else {
				kept = append(kept, p)
			}
		}
		h.parked[g] = kept
	}
	for _, p := range dropped {
		if p.drop != nil {
			p.drop()
		}
	}
}

// kill ends h's agent as a crash would: its jobs and sessions go, its
// link closes (a stream that breaks fails an active source, which
// resumes its VM, and an incomplete destination); its VMs stay.
func (w *world) kill(name string) {
	h := w.hosts[name]
	w.tracef("agent %s dies", name)
	h.up = false
	h.agentGen++
	w.dropParked(h, func(p *parked) bool { return p.life != hvLife })
	h.job = nil
	w.closeLink()
	w.incomingLost(h)
}

func (w *world) restart(name string) {
	h := w.hosts[name]
	w.tracef("agent %s starts", name)
	h.up = true
	h.agentGen++
}

// cutLink cuts the migration's link; false if there is none.
func (w *world) cutLink() bool {
	if w.link == nil || !w.link.up {
		return false
	}
	w.tracef("link cut")
	w.closeLink()
	return true
}

func (w *world) closeLink() {
	l := w.link
	if l == nil || !l.up {
		return
	}
	l.up = false
	w.breakStream()
	if h := l.waiting; h != nil && h.job == l.waitingJob {
		l.waiting = nil
		w.incomingLost(h)
	}
}

func (w *world) breakStream() {
	s := w.stream
	if s == nil || s.done || s.broken {
		return
	}
	s.broken = true
	if !s.parkedAtEnd {
		w.srcFail(s.src, "migration stream broken")
	}
	if s.dstHost != nil && s.dstHost.vm == s.dst {
		w.incomingLost(s.dstHost)
	}
}

// incomingLost: an incoming copy whose stream ends before its last byte
// fails.
func (w *world) incomingLost(h *host) {
	v := h.vm
	if v == nil || !v.incoming || v.complete || v.mig.State != hypervisor.MigActive {
		return
	}
	v.mig.State, v.mig.Error = hypervisor.MigFailed, "stream closed before the end"
	w.tracef("%s: incoming copy failed (%s)", h.name, v.mig.Error)
	w.watch(h)
}

func (w *world) srcFail(v *vmCopy, why string) {
	h := w.hosts[wSrc]
	if v == nil || h.vm != v || v.mig.State != hypervisor.MigActive {
		return
	}
	v.mig.State, v.mig.Error = hypervisor.MigFailed, why
	if v.mig.Postcopy != hypervisor.PostcopyActive {
		v.state = hypervisor.StateRunning // resumes itself: the image is incomplete
	}
	w.tracef("%s: outgoing migration failed (%s); VM %s", h.name, why, v.state)
	w.watch(h)
}

// srcStep sends the source's next chunk.
func (w *world) srcStep(s *stream) {
	h := w.hosts[wSrc]
	v := s.src
	if h.vm != v || v.mig.State != hypervisor.MigActive || s.done {
		return
	}
	if s.postcopy && v.mig.Postcopy == "" && v.sent == chunks-pcTail {
		// Offer post-copy instead of stopping for the last chunks; wait
		// for the switch (or a break).
		v.mig.Postcopy = hypervisor.PostcopyReady
		w.tracef("%s: offers post-copy", h.name)
		w.watch(h)
		return
	}
	last := v.sent == chunks-1
	if last && v.mig.Postcopy == "" {
		if !s.passedEnd {
			if w.park(h, gateEnd, hvLife, func() { s.parkedAtEnd, s.passedEnd = false, true; w.srcStep(s) }, nil) {
				s.parkedAtEnd = true
				return
			}
			s.passedEnd = true
		}
		if s.broken {
			w.srcFail(v, "migration stream broken")
			return
		}
		v.state, v.mig.PausedAt = hypervisor.StatePaused, w.now // stop-and-copy
		w.tracef("%s: pauses for the final copy", h.name)
	}
	if s.broken || s.dst == nil {
		w.srcFail(v, "migration stream broken")
		return
	}
	v.sent++
	s.dst.recv++
	v.mig.Transferred, v.mig.StreamBytes = uint64(v.sent*chunkBytes), uint64(v.sent*chunkBytes)
	v.mig.Remaining, v.mig.Rate = uint64((chunks-v.sent)*chunkBytes), chunkBytes/chunkEvery.Seconds()
	s.dst.mig.Transferred = uint64(s.dst.recv * chunkBytes)
	if j := h.job; j != nil {
		j.wire = uint64(v.sent*chunkBytes) + 1000
	}
	if j := s.dstHost.job; j != nil && s.dstHost.vm == s.dst {
		j.wire = uint64(s.dst.recv * 100)
	}
	if v.sent == chunks {
		s.done = true
		v.mig.State, v.mig.Finished = hypervisor.MigCompleted, w.now // postmigrate: stays paused
		s.dst.complete = true
		w.tracef("%s: sent its last byte", h.name)
		w.watch(h)
		w.verify(s.dstHost, s.dst)
		return
	}
	w.watch(h)
	w.watch(s.dstHost)
	w.after(chunkEvery, func() { w.srcStep(s) })
}

// verify is the destination's check of a complete image.
func (w *world) verify(h *host, v *vmCopy) {
	if w.park(h, gateVerify, hvLife, func() { w.verify(h, v) }, nil) {
		return
	}
	if h.vm != v || v.mig.State != hypervisor.MigActive {
		return
	}
	if h.badImage {
		h.badImage = false
		v.mig.State, v.mig.Error = hypervisor.MigFailed, "image does not verify"
	} else {
		v.mig.State, v.mig.Verified, v.mig.Remaining, v.mig.Finished = hypervisor.MigCompleted, true, 0, w.now
		if v.state != hypervisor.StateRunning {
			v.state = hypervisor.StatePaused
		}
	}
	w.tracef("%s: image %s", h.name, v.mig.State)
	w.watch(h)
}

// watch is the agent's job watcher: it moves the job's phase on what
// the hypervisor says, posts it, and resumes an armed destination once
// verified.
func (w *world) watch(h *host) {
	if h == nil || !h.up || h.job == nil || h.job.stopped || h.vm == nil {
		return
	}
	j := h.job
	st := h.vm.mig
	j.status = st
	phase, next, why := j.phase, j.phase, ""
	switch st.State {
	case hypervisor.MigCompleted:
		if (phase == PhasePreparing || phase == PhaseTransferring) && (j.role == Source || st.Verified) {
			next = PhaseCompleted
		}
	case hypervisor.MigFailed:
		if !phase.Final() && phase != PhaseCompleted {
			next, why = PhaseFailed, st.Error
		}
	case hypervisor.MigCancelled:
		if !phase.Final() {
			next = PhaseCancelled
		}
	}
	if next == phase {
		return
	}
	w.setPhase(h, j, next, why)
	if next == PhaseCompleted && j.role == Destination && j.armed {
		w.commitOp(h, j.order, jobLife, func(err error) {
			if err != nil {
				w.tracef("%s: resuming the armed copy: %v", h.name, err)
			}
		}, nil)
	}
}

func (w *world) setPhase(h *host, j *job, p Phase, err string) {
	if j.phase == p {
		return
	}
	j.phase, j.err, j.at = p, err, w.now
	w.tracef("%s: %s job %s", h.name, j.role, p)
	w.post(h, Posted{Host: h.name, Role: j.role, Phase: p})
}

func (w *world) post(h *host, p Posted) {
	if !w.mmcUp || !h.up {
		return
	}
	gen, ag := w.gen, h.agentGen
	w.after(netDelay, func() {
		if gen == w.gen && ag == h.agentGen {
			w.step(p)
		}
	})
}

// report is migReport.
func (w *world) report(h *host) *Report {
	r := &Report{}
	if j := h.job; j == nil {
		r.Phase = PhaseNone
		if h.vm != nil {
			r.Status = h.vm.mig
		} else {
			r.Error = hypervisor.ErrNotFound.Error() + ": " + wVM
		}
	} else {
		r.Phase, r.Error, r.Status, r.At, r.WireBytes = j.phase, j.err, j.status, j.at.UnixNano(), j.wire
	}
	r.MayHaveRun = h.mayHaveRun || h.alwaysMayHaveRun
	return r
}

// agentOp is an order arriving at h (actMigrate).
func (w *world) agentOp(h *host, c Send, gen, agentGen int) {
	if gen != w.gen {
		return // sent on a session that is gone, to an MMC that is gone
	}
	reply := func(rep *Report, err error) {
		w.after(netDelay, func() {
			if gen == w.gen {
				w.step(Reply{Seq: c.Seq, Report: rep, Err: err})
			}
		})
	}
	if h == nil || !h.up || h.agentGen != agentGen {
		reply(nil, fmt.Errorf("mmc: host offline: %s", c.Host))
		return
	}
	done := func(err error) {
		w.tracef("%s: %s → %v", h.name, c.Op, err)
		reply(w.report(h), err)
	}
	lost := func() { reply(nil, fmt.Errorf("mmc: %s on %s: session lost", c.Op, c.Host)) }
	o := c.Order
	switch c.Op {
	case OpPrepare:
		w.prepareOp(h, o, done, lost)
	case OpStart:
		w.startOp(h, o, done)
	case OpStatus:
		w.watch(h)
		done(nil)
	case OpRollback, OpCancel:
		w.rollbackOp(h, o, done, lost)
	case OpPostcopy:
		w.postcopyOp(h, o, done, lost)
	case OpArm:
		w.armOp(h, o, done, lost)
	case OpCommit:
		w.commitOp(h, o, opLife, done, lost)
	case OpFinish:
		w.finishOp(h, o, done)
	case OpAbort:
		w.abortOp(h, o, done)
	case OpSetBandwidth:
		if h.job == nil || h.job.role != Source || h.vm == nil || h.vm.mig.State != hypervisor.MigActive {
			done(errors.New("agent: no outgoing migration running here"))
			return
		}
		h.rate = o.Params.MaxBandwidth
		done(nil)
	default:
		done(fmt.Errorf("unknown op %s", c.Op))
	}
}

var errNotFound = fmt.Errorf("%w: %s", hypervisor.ErrNotFound, wVM)

// prepareOp creates a paused incoming copy and a job waiting for the
// source's stream on the link.
func (w *world) prepareOp(h *host, o Order, done func(error), lost func()) {
	if o.Spec == nil {
		done(errors.New("agent: missing the VM's spec"))
		return
	}
	if h.job != nil {
		done(nil)
		return
	}
	if w.park(h, gatePrepare, opLife, func() { w.prepareOp(h, o, done, lost) }, lost) {
		return
	}
	if h.vm != nil {
		done(errors.New("agent: prepare incoming: exists"))
		return
	}
	h.vm = &vmCopy{state: hypervisor.StateMigrating, incoming: true, pending: true,
		mig: hypervisor.MigrationStatus{State: hypervisor.MigActive, Total: chunks * chunkBytes, Started: w.now}}
	j := &job{order: o, role: Destination, phase: PhasePreparing, at: w.now}
	h.job = j
	if w.link != nil && w.link.up {
		w.link.waiting, w.link.waitingJob = h, j
	} else {
		w.after(linkWait, func() {
			if h.job == j && !j.attached {
				w.incomingLost(h)
			}
		})
	}
	done(nil)
}

// startOp begins the source's transfer over the link.
func (w *world) startOp(h *host, o Order, done func(error)) {
	if h.job != nil {
		done(nil)
		return
	}
	if w.link == nil || !w.link.up {
		done(fmt.Errorf("agent: no link for %s (the MMC introduces the agents first)", o.Topic))
		return
	}
	v := h.vm
	if v == nil {
		done(errNotFound)
		return
	}
	if v.state != hypervisor.StateRunning || v.mig.State == hypervisor.MigActive {
		done(errors.New("agent: migrate: not migratable now"))
		return
	}
	v.mig = hypervisor.MigrationStatus{State: hypervisor.MigActive, Round: 1, Total: chunks * chunkBytes,
		Remaining: chunks * chunkBytes, Started: w.now}
	v.sent = 0
	s := &stream{src: v, postcopy: o.Params.Postcopy}
	if d := w.link.waiting; d != nil && d.job == w.link.waitingJob && d.up && d.job.phase == PhasePreparing {
		s.dst, s.dstHost = d.vm, d
		d.job.attached = true
		w.link.waiting = nil
		w.setPhase(d, d.job, PhaseTransferring, "")
	}
	w.stream = s
	j := &job{order: o, role: Source, phase: PhaseTransferring, at: w.now}
	h.job = j
	w.post(h, Posted{Host: h.name, Role: Source, Phase: PhaseTransferring})
	w.after(chunkEvery, func() { w.srcStep(s) })
	done(nil)
}

// rollbackOp cancels an active transfer or resumes a completed (paused)
// source; it refuses a source that switched to post-copy.
func (w *world) rollbackOp(h *host, o Order, done func(error), lost func()) {
	v := h.vm
	if v == nil {
		done(errNotFound)
		return
	}
	if v.mig.Postcopy == hypervisor.PostcopyActive {
		done(fmt.Errorf("agent: %s switched to post-copy: the destination is the VM, this copy cannot run again", o.VM))
		return
	}
	end := func() {
		w.stopJob(h)
		w.endJob(h, PhaseRolledBack)
		done(nil)
	}
	switch v.mig.State {
	case hypervisor.MigActive:
		v.mig.State, v.state = hypervisor.MigCancelled, hypervisor.StateRunning
		w.tracef("%s: transfer cancelled; VM running", h.name)
		if w.stream != nil && w.stream.src == v && !w.stream.done {
			w.stream.broken = true // the destination reads the end of a short stream
			if d := w.stream.dstHost; d != nil && d.vm == w.stream.dst {
				w.incomingLost(d)
			}
		}
		w.watch(h)
	case hypervisor.MigCompleted:
		w.resume(h, v, opLife, func(err error) {
			if err != nil {
				done(err)
				return
			}
			end()
		}, lost)
		return
	}
	end()
}

// postcopyOp switches a source whose status says post-copy ready.
func (w *world) postcopyOp(h *host, o Order, done func(error), lost func()) {
	if w.park(h, gateSwitch, opLife, func() { w.postcopyOp(h, o, done, lost) }, lost) {
		return
	}
	v := h.vm
	if v == nil {
		done(errNotFound)
		return
	}
	switch {
	case v.mig.Postcopy == hypervisor.PostcopyActive:
		done(nil)
		return
	case v.mig.State != hypervisor.MigActive || v.mig.Postcopy != hypervisor.PostcopyReady:
		done(fmt.Errorf("cannot switch a migration that is %s to post-copy", v.mig.State))
		return
	}
	v.state, v.mig.Postcopy, v.mig.PausedAt = hypervisor.StatePaused, hypervisor.PostcopyActive, w.now
	w.tracef("%s: switched to post-copy", h.name)
	s := w.stream
	if s != nil && s.src == v {
		if s.dst != nil && s.dstHost.vm == s.dst && s.dst.mig.State == hypervisor.MigActive {
			s.dst.mig.Postcopy = hypervisor.PostcopyActive // the switch mark
			w.watch(s.dstHost)
		}
		w.after(chunkEvery, func() { w.srcStep(s) })
	}
	w.watch(h)
	if j := h.job; j != nil {
		j.status = v.mig
	}
	done(nil)
}

// armOp: the destination resumes by itself once verified (now, if it
// is).
func (w *world) armOp(h *host, o Order, done func(error), lost func()) {
	j := h.job
	if j == nil || j.role != Destination {
		done(fmt.Errorf("agent: no incoming migration %s to arm", o.ID))
		return
	}
	j.armed = true
	if j.phase == PhaseCompleted {
		w.commitOp(h, o, opLife, done, lost)
		return
	}
	done(nil)
}

// commitOp resumes a verified (or post-copy-active) destination, having
// recorded that it may run.
func (w *world) commitOp(h *host, o Order, life lifetime, done func(error), lost func()) {
	j := h.job
	if j != nil {
		if j.committing {
			w.wait(h, lockCommit, life, func() { w.commitOp(h, o, life, done, lost) }, lost)
			return
		}
		if j.phase == PhaseCommitted {
			done(nil)
			return
		}
	}
	v := h.vm
	if v == nil {
		done(errNotFound)
		return
	}
	st := v.mig
	postcopy := o.Params.Postcopy
	if postcopy && st.Postcopy != hypervisor.PostcopyActive && st.State == hypervisor.MigActive {
		// The agent waits up to 20 s for the switch; here a switched
		// source has switched its destination at once.
		done(fmt.Errorf("agent: %s did not switch to post-copy", o.VM))
		return
	}
	switch {
	case st.State == hypervisor.MigCompleted && st.Verified:
		postcopy = false
	case postcopy && st.Postcopy == hypervisor.PostcopyActive && st.State == hypervisor.MigActive:
	default:
		done(fmt.Errorf("agent: %s is not a verified incoming copy (state %s)", o.VM, st.State))
		return
	}
	h.mayHaveRun = true // markResuming
	if j != nil {
		j.committing = true
	}
	unlock := func() {
		if j != nil {
			j.committing = false
		}
		w.wake(h, lockCommit)
	}
	w.resume(h, v, life, func(err error) {
		if err != nil {
			unlock()
			done(err)
			return
		}
		if !postcopy {
			w.endJob(h, PhaseCommitted)
		} else if j != nil && h.job == j {
			w.setPhase(h, j, PhaseCommitted, "")
		}
		unlock()
		done(nil)
	}, func() {
		unlock()
		if lost != nil {
			lost()
		}
	})
}

// resume is the hypervisor's Resume: an incoming copy only with a
// verified image or in post-copy; a source that switched never.
func (w *world) resume(h *host, v *vmCopy, life lifetime, then func(error), lost func()) {
	if w.park(h, gateResume, life, func() { w.resume(h, v, life, then, lost) }, lost) {
		return
	}
	if h.vm != v || v == nil {
		then(errNotFound)
		return
	}
	if v.pending && !(v.mig.State == hypervisor.MigCompleted && v.mig.Verified) && v.mig.Postcopy != hypervisor.PostcopyActive {
		then(errors.New("incoming VM without a verified image"))
		return
	}
	if !v.incoming && v.mig.Postcopy == hypervisor.PostcopyActive {
		then(errors.New("a source that switched to post-copy cannot run"))
		return
	}
	v.pending = false
	v.state = hypervisor.StateRunning
	w.tracef("%s: VM resumed", h.name)
	w.checkWorld()
	then(nil)
}

// finishOp destroys a completed (paused) source.
func (w *world) finishOp(h *host, o Order, done func(error)) {
	v := h.vm
	if v == nil {
		done(nil)
		return
	}
	if v.mig.State != hypervisor.MigCompleted {
		done(fmt.Errorf("agent: refusing to destroy %s: its migration is %s, not completed", o.VM, v.mig.State))
		return
	}
	w.stopJob(h)
	w.destroy(h)
	w.endJob(h, PhaseFinished)
	done(nil)
}

// abortOp destroys a destination copy that does not run.
func (w *world) abortOp(h *host, o Order, done func(error)) {
	w.stopJob(h)
	if v := h.vm; v != nil {
		if v.state == hypervisor.StateRunning {
			done(fmt.Errorf("agent: refusing to destroy %s: it is running (committed?)", o.VM))
			return
		}
		w.destroy(h)
	}
	w.endJob(h, PhaseAborted)
	done(nil)
}

func (w *world) destroy(h *host) {
	w.tracef("%s: VM destroyed", h.name)
	if h.name == wSrc {
		if d := w.hosts[wDst].vm; d == nil || d.mig.State != hypervisor.MigCompleted || !d.mig.Verified {
			w.violation("the source copy destroyed while the destination does not hold the whole image")
		}
	} else if w.hosts[wSrc].vm == nil {
		w.violation("the destination copy destroyed after the source copy")
	}
	h.vm = nil
}

func (w *world) stopJob(h *host) {
	if j := h.job; j != nil && !j.stopped {
		j.stopped = true
		if s := w.stream; s != nil && !s.done && (s.src == h.vm || s.dst == h.vm) {
			w.breakStream()
		}
	}
}

func (w *world) endJob(h *host, p Phase) {
	if j := h.job; j != nil {
		w.setPhase(h, j, p, "")
	}
	w.closeLink()
}

// ---- assertions ----

// expectOutcome: the record's outcome, one Ended, and exactly one copy
// of the VM, running, on the side the outcome names, none on the other.
func (w *world) expectOutcome(want State) {
	w.t.Helper()
	if w.store.State != want {
		w.t.Fatalf("outcome %s (%q), want %s", w.store.State, w.store.Error, want)
	}
	if w.ended != 1 {
		w.t.Errorf("Ended emitted %d times", w.ended)
	}
	home, other := wSrc, wDst
	if want == Completed {
		home, other = wDst, wSrc
	}
	if v := w.hosts[home].vm; v == nil || v.state != hypervisor.StateRunning {
		w.t.Errorf("no running copy on %s (the outcome is %s): %+v", home, want, v)
	}
	if v := w.hosts[other].vm; v != nil {
		w.t.Errorf("a copy is left on %s (%s) after %s; cleanups %v", other, v.state, want, w.store.Cleanup)
	}
	if n := w.running(); n != 1 {
		w.t.Errorf("%d running copies at the end, want 1", n)
	}
	if len(w.store.Cleanup) > 0 {
		w.t.Errorf("cleanups left: %v", w.store.Cleanup)
	}
	if want == Completed {
		r := w.store
		if !r.Verified || r.TotalMS <= 0 || r.BytesOnWire == 0 || r.ResumedAt.IsZero() || r.CommittedAt.IsZero() {
			w.t.Errorf("completed without a full report: %+v", r)
		}
		if r.Path != "relayed" || r.LinkMS != 42 {
			w.t.Errorf("the record's link: path %q in %d ms, not the introduction's (relayed, 42 ms)", r.Path, r.LinkMS)
		}
		if !w.hosts[wDst].mayHaveRun {
			w.t.Error("the destination resumed without its resume record")
		}
	}
}

func (w *world) sentOp(op Op) int {
	n := 0
	for _, s := range w.sends {
		if s.Op == op {
			n++
		}
	}
	return n
}

func (w *world) loggedAt(level slog.Level, contains string) bool {
	for _, l := range w.logs {
		if l.Level == level && strings.Contains(l.Msg, contains) {
			return true
		}
	}
	return false
}
