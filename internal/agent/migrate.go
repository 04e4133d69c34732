package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/board"
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
	// a closed one would leave QEMU postcopy-paused.
	postcopyIdleTimeout = 10 * time.Minute
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

// prepareIncoming starts the destination VM waiting for the stream and a
// job that joins it to the link once the source opens its stream.
func (a *Agent) prepareIncoming(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	if o.Spec == nil {
		return errMissing("the VM's spec")
	}
	if j := a.migs.get(o.ID); j != nil {
		return nil
	}
	// The copy is recorded as incoming before it exists: until it runs,
	// its stop (QEMU exits when its stream fails) is the migration's
	// failure, not a VM's crash.
	var vm hypervisor.VM
	var conn net.Conn
	err := a.createVM(o.Spec.Name, expectIncoming, o.ID, func() (err error) {
		vm, conn, err = mig.PrepareIncoming(ctx, *o.Spec)
		return err
	})
	if err != nil {
		return fmt.Errorf("agent: prepare incoming %s: %w", o.VM, err)
	}
	j := &job{order: o, role: migration.Destination, mig: mig, conn: conn, phase: migration.PhasePreparing, at: time.Now()}
	j.order.VM = vm.ID
	if old, err := a.migs.add(j); old != nil || err != nil {
		conn.Close()
		return err
	}
	// One acceptor takes the link's streams as the source opens them: the
	// migration stream goes to the job, disk channels (QEMU's NBD mirror)
	// to the driver's disk socket.
	type accepted struct {
		s   *sudp.Stream
		c   *sudp.Conn
		err error
	}
	migStream := make(chan accepted, 1)
	acceptor := func(ctx context.Context) {
		l, err := a.waitLink(ctx, o.Topic)
		if err != nil {
			migStream <- accepted{err: err}
			return
		}
		sent := false
		for {
			s, err := l.c.AcceptStream(ctx)
			if err != nil {
				if !sent {
					migStream <- accepted{err: err}
				}
				return
			}
			kind, err := readStreamKind(ctx, s)
			switch {
			case err != nil:
				a.log.Warn("agent: migration link stream", "id", o.ID, "err", err)
				s.Reset(1)
			case kind == streamMigration && !sent:
				sent = true
				migStream <- accepted{s: s, c: l.c}
			case kind == streamDisk:
				a.serveDiskStream(ctx, j, s)
			default:
				a.log.Warn("agent: unexpected stream on a migration link", "id", o.ID, "kind", kind)
				s.Reset(1)
			}
		}
	}
	a.runJob(j, func(ctx context.Context) (io.ReadWriteCloser, *sudp.Conn, error) {
		select {
		case r := <-migStream:
			return r.s, r.c, r.err
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}, acceptor)
	return nil
}

// Each stream of a migration link starts with one byte saying what it
// carries (protocol.md §16.2).
const (
	streamMigration byte = 'M' // the hypervisor's migration stream
	streamDisk      byte = 'D' // one connection of the disk channel
)

func readStreamKind(ctx context.Context, s *sudp.Stream) (byte, error) {
	var b [1]byte
	rctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
	defer cancel()
	stop := context.AfterFunc(rctx, func() { s.Reset(1) })
	defer stop()
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return 0, fmt.Errorf("reading the stream's kind: %w", err)
	}
	return b[0], nil
}

// serveDiskStream joins one disk-channel stream to the incoming VM's disk
// socket (destination).
func (a *Agent) serveDiskStream(ctx context.Context, j *job, s *sudp.Stream) {
	dm, ok := j.mig.(hypervisor.DiskMover)
	path := ""
	if ok {
		path = dm.IncomingDiskSocket(j.order.VM)
	}
	if path == "" {
		a.log.Warn("agent: a disk stream for a VM that receives no disk", "id", j.order.ID, "vm", j.order.VM)
		s.Reset(1)
		return
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		a.log.Warn("agent: connecting a disk stream", "id", j.order.ID, "err", err)
		s.Reset(1)
		return
	}
	a.migs.wg.Add(1)
	go func() {
		defer a.migs.wg.Done()
		if err := pump(ctx, s, conn, func() {}); err != nil && ctx.Err() == nil {
			a.log.Warn("agent: disk stream", "id", j.order.ID, "err", err)
		}
	}()
}

// serveDiskChannel (source) accepts the hypervisor's disk-channel
// connections on ln and carries each over a new stream of the link,
// until ctx ends.
func (a *Agent) serveDiskChannel(ctx context.Context, id string, ln net.Listener, lc *sudp.Conn) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
		s, err := lc.OpenStreamPriority(sctx, sudp.PriorityBulk)
		cancel()
		if err == nil {
			_, err = s.Write([]byte{streamDisk})
		}
		if err != nil {
			a.log.Warn("agent: opening a disk stream", "id", id, "err", err)
			conn.Close()
			continue
		}
		a.migs.wg.Add(1)
		go func() {
			defer a.migs.wg.Done()
			if err := pump(ctx, s, conn, func() {}); err != nil && ctx.Err() == nil {
				a.log.Warn("agent: disk stream", "id", id, "err", err)
			}
		}()
	}
}

// startOutgoing starts the hypervisor's migration of the VM and a job
// carrying it over the link.
func (a *Agent) startOutgoing(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	if j := a.migs.get(o.ID); j != nil {
		return nil
	}
	l := a.peers.link(o.Topic)
	if l == nil {
		return fmt.Errorf("agent: no link for %s (the MMC introduces the agents first)", o.Topic)
	}
	sctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
	s, err := l.c.OpenStreamPriority(sctx, sudp.PriorityBulk)
	cancel()
	if err != nil {
		return fmt.Errorf("agent: open migration stream: %w", err)
	}
	// The hypervisor times its stop-and-copy by how fast the stream takes
	// its bytes: they must not pile up in a send buffer (16 MiB is over a
	// second at 100 Mbit/s, all of it downtime once the guest is paused).
	s.SetMaxQueueDelay(streamQueueDelay)
	if _, err := s.Write([]byte{streamMigration}); err != nil {
		s.Reset(1)
		return fmt.Errorf("agent: migration stream: %w", err)
	}
	// A VM with local disks: the driver copies them first, over a disk
	// channel this agent serves on a Unix socket and carries over the
	// link.
	// The channel is served from before the driver starts: QEMU connects
	// its NBD client while the driver sets the mirrors up.
	var conn net.Conn
	stopDisks := func() {}
	if dm, ok := mig.(hypervisor.DiskMover); ok && dm.MovesDisks(o.VM) {
		path := filepath.Join(a.cfg.DataDir, "migrations", o.ID+".disk")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			s.Reset(1)
			return fmt.Errorf("agent: %w", err)
		}
		_ = os.Remove(path)
		ln, err := net.Listen("unix", path)
		if err != nil {
			s.Reset(1)
			return fmt.Errorf("agent: disk channel: %w", err)
		}
		a.migs.mu.Lock()
		dctx, cancel := context.WithCancel(a.migs.ctx)
		a.migs.mu.Unlock()
		stopDisks = cancel
		a.migs.wg.Add(1)
		go func() {
			defer a.migs.wg.Done()
			a.serveDiskChannel(dctx, o.ID, ln, l.c)
		}()
		conn, err = dm.MigrateOutDisks(ctx, o.VM, o.Params, path)
		if err != nil {
			stopDisks()
			s.Reset(1)
			return fmt.Errorf("agent: migrate %s: %w", o.VM, err)
		}
	} else if conn, err = mig.MigrateOut(ctx, o.VM, o.Params); err != nil {
		s.Reset(1)
		return fmt.Errorf("agent: migrate %s: %w", o.VM, err)
	}
	j := &job{order: o, role: migration.Source, mig: mig, conn: conn, phase: migration.PhaseTransferring, at: time.Now(), link: l.c}
	if old, err := a.migs.add(j); old != nil || err != nil {
		conn.Close()
		stopDisks()
		s.Reset(1)
		return err
	}
	// The disk channel ends with the job (the memory migration is over,
	// and the mirrors were completed before it).
	a.runJob(j, func(context.Context) (io.ReadWriteCloser, *sudp.Conn, error) { return s, l.c, nil }, func(ctx context.Context) {
		select {
		case <-j.done:
		case <-ctx.Done():
		}
		stopDisks()
	})
	return nil
}

// waitLink waits for the direct link of topic to come up.
func (a *Agent) waitLink(ctx context.Context, topic string) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, linkWait)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if l := a.peers.link(topic); l != nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent: no link for %s: %w", topic, ctx.Err())
		case <-t.C:
		}
	}
}

// runJob starts j's goroutines: one joins the stream (from getStream) to
// the hypervisor's descriptor, one watches the hypervisor's progress, and
// side (if not nil) serves the link's other streams; all stop with the job.
func (a *Agent) runJob(j *job, getStream func(context.Context) (io.ReadWriteCloser, *sudp.Conn, error), side func(context.Context)) {
	a.migs.mu.Lock()
	ctx := a.migs.ctx
	a.migs.mu.Unlock()
	ctx, stop := context.WithCancel(ctx)
	j.stop = stop
	if side != nil {
		a.migs.wg.Add(1)
		go func() {
			defer a.migs.wg.Done()
			side(ctx)
		}()
	}
	a.migs.wg.Add(2)
	pumped := make(chan error, 1)
	go func() {
		defer a.migs.wg.Done()
		s, lc, err := getStream(ctx)
		if err == nil {
			j.mu.Lock()
			j.link = lc
			if j.phase == migration.PhasePreparing {
				j.phase, j.at = migration.PhaseTransferring, time.Now()
			}
			j.mu.Unlock()
			a.postPhase(j)
			err = pump(ctx, s, j.conn, j.kickWatch)
		} else {
			j.conn.Close()
		}
		pumped <- err
	}()
	go func() {
		defer a.migs.wg.Done()
		defer close(j.done)
		a.watchJob(ctx, j, pumped, j.kick)
		if ph, _ := j.get(); ph == migration.PhaseCommitted {
			// A post-copy destination, committed while it still pulled
			// pages: now it has them all.
			a.peers.closeLink(j.order.Topic)
		}
	}()
}

// pump carries bytes both ways between the link stream s and the
// hypervisor's descriptor conn until the hypervisor's side ends (or
// either side fails), then closes both. ended is called as each
// direction ends: the hypervisor has likely reached its outcome, and the
// watcher should look now rather than at its next poll (downtime).
func pump(ctx context.Context, s io.ReadWriteCloser, conn net.Conn, ended func()) error {
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(s, conn) // hypervisor → link
		if cw, ok := s.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
		done <- err
	}()
	go func() {
		_, err := io.Copy(conn, s) // link → hypervisor
		if cw, ok := conn.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
		done <- err
	}()
	var err error
	for n := 0; n < 2 && err == nil; n++ {
		select {
		case err = <-done:
			ended()
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		// A failure either way ends the migration: unblock the copies.
		conn.Close()
		s.Close()
		return err
	}
	conn.Close()
	if st, ok := s.(*sudp.Stream); ok {
		// Let the last bytes and FIN reach the peer before closing.
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = st.Flush(fctx)
		cancel()
	}
	s.Close()
	return nil
}

// watchJob polls the hypervisor's progress, moves the job's phase and
// posts phases and progress, until the job reaches a final phase or the
// agent stops.
func (a *Agent) watchJob(ctx context.Context, j *job, pumped <-chan error, kick <-chan struct{}) {
	t := time.NewTimer(migPoll)
	defer t.Stop()
	var lastPost time.Time
	var pumpErr error
	pumpDone := false
	// Once a stream direction ends the outcome is imminent (the
	// destination verifies the last bytes it was handed; the downtime
	// runs meanwhile): look often until the hypervisor reports it.
	var fastUntil, ended time.Time
	var last hypervisor.MigrationStatus
	longIdle := false
	limit := j.order.Params.DowntimeLimit // as the driver was given it
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-pumped:
			pumpDone, pumpErr = true, err
			pumped = nil
			fastUntil = time.Now().Add(migFastPollFor)
		case <-kick:
			fastUntil = time.Now().Add(migFastPollFor)
		case <-t.C:
		}
		switch {
		case time.Now().Before(fastUntil):
			t.Reset(migFastPoll)
		case nearSwitchOver(last):
			t.Reset(migNearPoll)
		default:
			t.Reset(migPoll)
		}
		st, err := j.mig.MigrationStatus(ctx, j.order.VM)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("agent: migration status", "id", j.order.ID, "vm", j.order.VM, "err", err)
			continue
		}
		if st.State != hypervisor.MigActive && st.State != "" && st.Finished.IsZero() {
			// A hypervisor that does not say when it finished (QEMU's
			// destination): when this job first saw it, within a
			// fast poll.
			if ended.IsZero() {
				ended = time.Now()
			}
			st.Finished = ended
		}
		last = st
		j.mu.Lock()
		j.status = st
		phase := j.phase
		link := j.link
		j.mu.Unlock()
		if st.Postcopy == hypervisor.PostcopyActive && !longIdle && link != nil {
			longIdle = true
			link.SetIdleTimeout(postcopyIdleTimeout)
			a.log.Info("agent: migration in post-copy", "id", j.order.ID, "role", j.role, "vm", j.order.VM, "link_idle_timeout", postcopyIdleTimeout)
		}
		if j.role == migration.Source && st.State == hypervisor.MigActive && st.Postcopy == "" && link != nil {
			ls := link.Stats()
			limit = a.tuneDowntimeLimit(ctx, j, ls.SmoothedRTT, ls.MinRTT, limit)
		}
		if j.role == migration.Source && time.Since(lastPost) >= progressEvery {
			lastPost = time.Now()
			a.postProgress(j, st)
		}
		var streamErr error
		if pumpDone {
			streamErr = pumpErr
		}
		next, why := migration.JobPhase(j.role, phase, st, streamErr)
		if j.movePhase(phase, next, why) {
			a.log.Info("agent: migration phase", "id", j.order.ID, "role", j.role, "vm", j.order.VM, "phase", next, "err", why)
			a.postPhase(j)
			if j.role == migration.Source {
				a.postProgress(j, st)
			}
			if migration.ResumeOnVerify(j.role, phase, next, j.isArmed()) {
				if err := a.commitDestination(ctx, j.mig, j.order); err != nil {
					// The MMC's commit retries it.
					a.log.Warn("agent: resuming the armed copy", "id", j.order.ID, "vm", j.order.VM, "err", err)
				}
			}
		}
		// The job's work is done once the stream is over and the
		// hypervisor has reached an outcome; commit/rollback come as
		// separate actions.
		if pumpDone && st.State != hypervisor.MigActive {
			return
		}
	}
}

// limitStep is how far the queue-aware downtime limit must move before
// the hypervisor is told (each change is a QMP round trip).
const limitStep = 10 * time.Millisecond

// tuneDowntimeLimit keeps the hypervisor's stop-and-copy limit at
// queueAwareLimit for the link's current queue (its smoothed and minimum
// RTTs), if the driver can change it mid-migration; it returns the limit
// it last asked for (cur if unchanged).
func (a *Agent) tuneDowntimeLimit(ctx context.Context, j *job, srtt, minRTT, cur time.Duration) time.Duration {
	ds, ok := j.mig.(hypervisor.DowntimeSetter)
	budget := j.order.Params.DowntimeLimit
	if !ok || budget <= 0 {
		return cur
	}
	want := queueAwareLimit(budget, srtt, minRTT)
	if d := want - cur; d > -limitStep && d < limitStep {
		return cur
	}
	if err := ds.SetDowntimeLimit(ctx, j.order.VM, want); err != nil {
		// Not retried for this value (the watcher polls every 5–200 ms
		// and would log and block on each try); a later move retries.
		a.log.Warn("agent: setting the downtime limit", "id", j.order.ID, "vm", j.order.VM, "limit", want, "err", err)
		return want
	}
	a.log.Debug("agent: downtime limit", "id", j.order.ID, "vm", j.order.VM, "limit", want, "budget", budget,
		"link_queue", srtt-minRTT)
	return want
}

// queueAwareLimit is the stop-and-copy limit for a migration whose
// budget was computed (by the MMC, from its sessions' round trips) for an
// empty link, when the link's smoothed RTT stands above its minimum: that
// is the queue ahead of the final copy, whose bytes wait behind it (a
// BBR-paced bulk stream keeps up to about one BDP queued). It never goes
// below a third of the budget, so a noisy RTT cannot stop the migration
// from converging.
func queueAwareLimit(budget, srtt, minRTT time.Duration) time.Duration {
	if budget <= 0 || minRTT <= 0 || srtt <= minRTT {
		return budget
	}
	return max(budget-(srtt-minRTT), budget/3)
}

// nearSwitchOver: a transfer whose remaining memory would take under a
// second to send.
func nearSwitchOver(st hypervisor.MigrationStatus) bool {
	return st.State == hypervisor.MigActive && st.ExpectedDowntime > 0 && st.ExpectedDowntime < time.Second
}

func (a *Agent) postPhase(j *job) {
	j.mu.Lock()
	p := board.MigrationPhase{Role: j.role, Phase: j.phase, Error: truncate(j.err, 1000)}
	j.mu.Unlock()
	a.post(j.order.Topic, board.KindMigrationPhase, p)
}

func (a *Agent) postProgress(j *job, st hypervisor.MigrationStatus) {
	var wire uint64
	j.mu.Lock()
	link := j.link
	j.mu.Unlock()
	if link != nil {
		ls := link.Stats()
		wire = ls.BytesSent
		// The transport's view beside the hypervisor's, for finding
		// where a slow migration's time goes.
		a.log.Debug("agent: migration link", "id", j.order.ID, "round", st.Round, "remaining", st.Remaining, "transferred", st.Transferred,
			"wire_sent", ls.BytesSent, "retransmitted", ls.RetransmittedBytes, "lost_packets", ls.PacketsLost,
			"app_limited", ls.AppLimited, "srtt", ls.SmoothedRTT, "min_rtt", ls.MinRTT, "cwnd", ls.CongestionWindow, "pacing_bps", int64(ls.PacingRate*8),
			"inflight", ls.BytesInFlight, "cc_state", ls.Controller.State, "btlbw_bps", int64(ls.Controller.BtlBw*8),
			"ceiling", ls.Controller.InflightCeiling, "congestion_events", ls.Controller.CongestionEvents,
			"random_loss", ls.Controller.RandomLoss)
	}
	a.post(j.order.Topic, board.KindMigrationProgress, board.MigrationProgress{Round: st.Round, Total: st.Total,
		Remaining: st.Remaining, Transferred: st.Transferred, WireBytes: wire, DirtyRate: st.DirtyRate, Rate: st.Rate,
		ExpectedDowntime: st.ExpectedDowntime.Microseconds(), Throttle: st.Throttle})
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// rollbackSource makes the source copy the running VM again: it cancels
// a transfer in progress, or resumes a VM paused after a completed one
// (the MMC decided against the commit).
func (a *Agent) rollbackSource(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	st, err := mig.MigrationStatus(ctx, o.VM)
	if err != nil {
		return err
	}
	verb, err := migration.RollbackVerb(st)
	if err != nil {
		return fmt.Errorf("agent: %s: %w", o.VM, err)
	}
	switch verb {
	case migration.CancelTransfer:
		if err := mig.CancelMigration(ctx, o.VM); err != nil {
			return err
		}
	case migration.ResumeCopy:
		if err := a.cfg.Driver.Resume(ctx, o.VM); err != nil {
			return err
		}
	}
	if j := a.migs.get(o.ID); j != nil {
		j.stop()
		<-j.done
	}
	a.endJob(o, migration.PhaseRolledBack)
	return nil
}

// endJob records migration o's final phase on this agent (posting it
// once) and closes its link.
func (a *Agent) endJob(o migration.Order, phase migration.Phase) {
	if j := a.migs.get(o.ID); j != nil && j.setPhase(phase, "") {
		a.postPhase(j)
	}
	a.peers.closeLink(o.Topic)
}

// startPostcopy switches the source's migration to post-copy: the MMC
// has recorded that it may (the source's hypervisor stops the guest for
// good and the destination becomes the VM once this succeeds).
func (a *Agent) startPostcopy(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	pm, ok := mig.(hypervisor.PostcopyMigrator)
	if !ok {
		return errors.New("agent: this hypervisor driver has no post-copy")
	}
	if err := pm.StartPostcopy(ctx, o.VM); err != nil {
		return err
	}
	if j := a.migs.get(o.ID); j != nil {
		j.kickWatch() // the report that follows should show the switch
		if st, err := mig.MigrationStatus(ctx, o.VM); err == nil {
			j.mu.Lock()
			j.status = st
			j.mu.Unlock()
		}
	}
	return nil
}

// commitDestination resumes the destination copy: the MMC has recorded
// the switch-over. After pre-copy the copy must be complete and verified;
// in post-copy it must have switched (it pulls the rest as it runs, so
// its job and link go on until it has every page).
func (a *Agent) commitDestination(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	j := a.migs.get(o.ID)
	if j != nil {
		j.commitMu.Lock()
		defer j.commitMu.Unlock()
		if ph, _ := j.get(); ph == migration.PhaseCommitted {
			return nil // resumed already (armed, or a repeated order)
		}
	}
	st, err := mig.MigrationStatus(ctx, o.VM)
	if err != nil {
		return err
	}
	pulling, wait, err := migration.CommitCheck(st, o.Params.Postcopy)
	for deadline := time.Now().Add(migration.PostcopyCommitWait); wait; pulling, wait, err = migration.CommitCheck(st, o.Params.Postcopy) {
		if time.Now().After(deadline) {
			return fmt.Errorf("agent: %s did not switch to post-copy in %v", o.VM, migration.PostcopyCommitWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(migFastPoll):
		}
		if st, err = mig.MigrationStatus(ctx, o.VM); err != nil {
			return err
		}
	}
	if err != nil {
		return fmt.Errorf("agent: %s: %w", o.VM, err)
	}
	if err := a.markResuming(o.ID); err != nil {
		return err // not resumed: what may have run must be on record first
	}
	// From here the copy is the VM: its stop is an alarm.
	a.expect.forget(o.VM, nil)
	if err := a.cfg.Driver.Resume(ctx, o.VM); err != nil {
		return err
	}
	if !pulling {
		a.endJob(o, migration.PhaseCommitted)
		return nil
	}
	if j != nil && j.setPhase(migration.PhaseCommitted, "") {
		a.postPhase(j)
	}
	return nil
}

// armDestination: the MMC recorded that the source's transfer completed
// (migrate.arm). The copy resumes the moment its image verifies — now,
// if it already has — without waiting for the commit to come back from
// the MMC. Without a job (this agent restarted since) there is nothing
// to arm: the MMC commits once it sees the image verified.
func (a *Agent) armDestination(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	j := a.migs.get(o.ID)
	if j == nil || j.role != migration.Destination {
		return fmt.Errorf("agent: no incoming migration %s to arm", o.ID)
	}
	j.mu.Lock()
	j.armed = true
	verified := j.phase == migration.PhaseCompleted
	j.mu.Unlock()
	if verified {
		return a.commitDestination(ctx, mig, o)
	}
	return nil
}

// finishSource destroys the source copy after the commit. It refuses a
// VM that is running: only a copy paused after a completed transfer may
// go.
func (a *Agent) finishSource(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	st, err := mig.MigrationStatus(ctx, o.VM)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return nil // already gone
	}
	if err != nil {
		return err
	}
	if err := migration.FinishCheck(st); err != nil {
		return fmt.Errorf("agent: %s: %w", o.VM, err)
	}
	if j := a.migs.get(o.ID); j != nil && j.stop != nil {
		j.stop() // its watcher must not poll a VM that is about to go
		<-j.done
	}
	if err := a.destroyVM(ctx, o.VM, expectMigrated, o.ID); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		return err
	}
	a.endJob(o, migration.PhaseFinished)
	return nil
}

// abortDestination destroys the destination copy of a migration that was
// rolled back. It refuses a copy that runs (it was committed).
func (a *Agent) abortDestination(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	if j := a.migs.get(o.ID); j != nil {
		j.stop()
		<-j.done
	}
	vms, err := a.cfg.Driver.List(ctx)
	if err != nil {
		return err
	}
	for _, vm := range vms {
		if vm.ID != o.VM {
			continue
		}
		if err := migration.AbortCheck(vm.State); err != nil {
			return fmt.Errorf("agent: %s: %w", o.VM, err)
		}
		if err := a.destroyVM(ctx, o.VM, expectAborted, o.ID); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			return err
		}
	}
	a.endJob(o, migration.PhaseAborted)
	return nil
}
