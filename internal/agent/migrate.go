package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// The migration role (MA). The hypervisor produces and consumes the
// migration stream itself, through a file descriptor; the MA carries the
// bytes between that descriptor and a bulk stream on the direct SUDP link
// the MMC introduced for the migration, watches the hypervisor's
// progress, and posts phases and progress on the migration's blackboard
// topic. What happens to the VM copies after the transfer — which one is
// resumed and which destroyed — the MA does only when the MMC says so
// (migrate.commit/finish or migrate.rollback/abort): the MMC's persisted
// decision is the single source of truth for which copy is authoritative.
//
// A job belongs to the agent process, not to the MMC session: a transfer
// keeps going while the MMC is away. An agent that restarts has lost its
// jobs (and with them the stream: the hypervisor sees the descriptor
// close); it answers for the migration from the hypervisor's own status.

const (
	// linkWait bounds how long a job waits for the direct link (the
	// destination for the source's stream, the source for the link the
	// MMC's introduction opened).
	linkWait = time.Minute
	// migPoll is how often a job reads the hypervisor's progress;
	// progressEvery how often it posts it on the board.
	migPoll       = 200 * time.Millisecond
	progressEvery = time.Second
	// After a stream direction ends a job looks every migFastPoll, for
	// up to migFastPollFor: the outcome is due and the VM is paused.
	migFastPoll    = 5 * time.Millisecond
	migFastPollFor = 3 * time.Second
	// migNearPoll: the hypervisor expects to stop the guest within a
	// second, and a driver may need this agent's poll at that moment
	// (QEMU with disks pauses before the switch-over until its mirrors
	// are completed).
	migNearPoll = 20 * time.Millisecond
	// streamQueueDelay bounds the migration stream's unsent backlog.
	streamQueueDelay = 30 * time.Millisecond
	// postcopyIdleTimeout is the migration link's idle timeout once the
	// migration is in post-copy (both agents raise theirs). Before the
	// switch a dead link should end the migration soon, the source still
	// running; after it neither copy is whole, and a link that outlives
	// an outage lets the transport resume the transfer by itself, where
	// a closed one would leave QEMU postcopy-paused. 10 minutes of
	// total silence must be survivable: the idle timer counts from the
	// last packet before the outage, and the first one after it may come
	// up to one re-handshake retry interval (5 s) late, hence the margin.
	// (The transport's key hard limit no longer ends the link first: an
	// expired key waits for a re-handshake, sudp/core
	// TestOutageRekeyOnReturn.)
	postcopyIdleTimeout = 11 * time.Minute
)

type job struct {
	order migration.Order
	role  migration.Role
	mig   hypervisor.Migrator
	conn  net.Conn // the hypervisor's stream, the MA's end
	stop  context.CancelFunc
	done  chan struct{}
	// kick makes the watcher look at the hypervisor now, and often for a
	// while (the outcome, or a switch, is due).
	kick chan struct{}

	// commitMu serialises resuming the destination copy: the MMC's
	// migrate.commit and an armed job's own resume may meet.
	commitMu sync.Mutex

	mu     sync.Mutex
	phase  migration.Phase
	err    string
	at     time.Time // when phase was reached (local clock)
	status hypervisor.MigrationStatus
	link   *sudp.Conn
	// firstByte: a destination's migration stream brought its first
	// byte (local clock; zero before).
	firstByte time.Time
	// armed: the MMC recorded that the source completed; this
	// destination resumes its copy as soon as the image verifies.
	armed bool
}

func (j *job) setPhase(phase migration.Phase, err string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.phase == phase {
		return false
	}
	j.phase, j.err, j.at = phase, err, time.Now()
	return true
}

// movePhase is setPhase only if the phase is still from: the watcher
// decides on a phase it read before polling the hypervisor, and an
// action (a commit, a rollback) may have moved it meanwhile.
func (j *job) movePhase(from, to migration.Phase, err string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.phase != from || from == to {
		return false
	}
	j.phase, j.err, j.at = to, err, time.Now()
	return true
}

func (j *job) isArmed() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.armed
}

func (j *job) kickWatch() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

func (j *job) get() (phase migration.Phase, st hypervisor.MigrationStatus) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.phase, j.status
}

// migrations are the agent's jobs, by migration id.
type migrations struct {
	mu   sync.Mutex
	ctx  context.Context // the agent's: jobs outlive MMC sessions
	jobs map[string]*job
	wg   sync.WaitGroup
	// opening holds the migrations whose job a prepare or a start is
	// creating now; the channel closes when it is done. A new MMC leader
	// repeats a start or a prepare that its predecessor sent just before
	// it died, and the agent may still be carrying out the first: the
	// repeat waits for it rather than starting a second transfer of the
	// same VM.
	opening map[string]chan struct{}
}

// maxJobs bounds concurrent migration jobs on one agent.
const maxJobs = 16

func (m *migrations) start(ctx context.Context) {
	m.mu.Lock()
	m.ctx = ctx
	m.jobs = map[string]*job{}
	m.mu.Unlock()
}

// wait returns once every job's goroutines have ended (after the context
// given to start is done).
func (m *migrations) wait() { m.wg.Wait() }

func (m *migrations) get(id string) *job {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.jobs[id]
}

// open claims migration id for creating its job, after any prepare or
// start of it under way ends. done releases the claim.
func (m *migrations) open(ctx context.Context, id string) (done func(), err error) {
	for {
		m.mu.Lock()
		busy, ok := m.opening[id]
		if !ok {
			if m.opening == nil {
				m.opening = map[string]chan struct{}{}
			}
			ch := make(chan struct{})
			m.opening[id] = ch
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.opening, id)
				m.mu.Unlock()
				close(ch)
			}, nil
		}
		m.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, fmt.Errorf("agent: migration %s is being set up: %w", id, ctx.Err())
		}
	}
}

// add registers j unless a job with its id exists (returned instead).
func (m *migrations) add(j *job) (*job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil {
		return nil, errors.New("agent: not running")
	}
	if old := m.jobs[j.order.ID]; old != nil {
		return old, nil
	}
	n := 0
	for _, o := range m.jobs {
		if ph, _ := o.get(); !ph.Final() {
			n++
		}
	}
	if n >= maxJobs {
		return nil, fmt.Errorf("agent: %d migrations already running", n)
	}
	// Forget finished jobs beyond the bound (their outcome is at the MMC).
	if len(m.jobs) >= 4*maxJobs {
		for id, o := range m.jobs {
			if ph, _ := o.get(); ph.Final() {
				delete(m.jobs, id)
			}
		}
	}
	if err := m.ctx.Err(); err != nil {
		return nil, fmt.Errorf("agent: stopping: %w", err)
	}
	j.done = make(chan struct{})
	j.kick = make(chan struct{}, 1)
	m.jobs[j.order.ID] = j
	return nil, nil
}

// migrator returns the driver's migration interface.
func (a *Agent) migrator() (hypervisor.Migrator, error) {
	m, ok := a.cfg.Driver.(hypervisor.Migrator)
	if !ok {
		return nil, errors.New("this agent's hypervisor driver cannot migrate")
	}
	return m, nil
}

// actMigrate carries out a migrate.* action and reports the migration as
// this agent sees it. Every op is idempotent: the MMC repeats them after
// losing a result (its restart, a lost session).
func (a *Agent) actMigrate(ctx context.Context, act message.Action) (*migration.Report, error) {
	o := act.Mig
	if o == nil {
		return nil, errMissing("a migration order")
	}
	mig, err := a.migrator()
	if err != nil {
		return nil, err
	}
	switch act.Op {
	case "migrate.prepare":
		err = a.prepareIncoming(ctx, mig, *o)
	case "migrate.start":
		err = a.startOutgoing(ctx, mig, *o)
	case "migrate.status":
	case "migrate.cancel", "migrate.rollback":
		err = a.rollbackSource(ctx, mig, *o)
	case "migrate.postcopy":
		err = a.startPostcopy(ctx, mig, *o)
	case "migrate.arm":
		err = a.armDestination(ctx, mig, *o)
	case "migrate.commit":
		err = a.commitDestination(ctx, mig, *o)
	case "migrate.finish":
		err = a.finishSource(ctx, mig, *o)
	case "migrate.abort":
		err = a.abortDestination(ctx, mig, *o)
	case "migrate.set-bandwidth":
		err = a.setBandwidth(ctx, mig, *o)
	default:
		return nil, errMissing("a known op, not " + act.Op)
	}
	rep := a.migReport(ctx, mig, *o)
	return &rep, err
}

// migReport describes migration o on this agent, in the MMC's clock.
func (a *Agent) migReport(ctx context.Context, mig hypervisor.Migrator, o migration.Order) migration.Report {
	off := a.clock.offset()
	j := a.migs.get(o.ID)
	var rep migration.Report
	if j == nil {
		rep.Phase = migration.PhaseNone
		if st, err := mig.MigrationStatus(ctx, o.VM); err == nil {
			rep.Status = st
		} else {
			rep.Error = err.Error()
		}
	} else {
		j.mu.Lock()
		rep.Phase, rep.Error, rep.Status = j.phase, j.err, j.status
		rep.At = j.at.Add(off).UnixNano()
		if j.link != nil {
			rep.WireBytes = j.link.Stats().BytesSent
		}
		if !j.firstByte.IsZero() {
			rep.FirstByteAt = j.firstByte.Add(off).UnixNano()
		}
		j.mu.Unlock()
	}
	rep.MayHaveRun = a.mayHaveResumed(o.ID)
	for _, t := range []*time.Time{&rep.Status.PausedAt, &rep.Status.Started, &rep.Status.Finished} {
		if !t.IsZero() {
			*t = t.Add(off)
		}
	}
	return rep
}
