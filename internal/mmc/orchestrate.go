package mmc

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
)

// The migration orchestrator's driver. Every decision is
// migration.Machine's (see internal/migration/machine.go for the
// protocol and its invariant); this file only carries its commands out —
// store writes, orders to agents, introductions, notes — and feeds it
// what happened: replies, agents' posted phases, an administrator's
// cancel, the clock. One goroutine per open migration steps its machine;
// orders run on goroutines of their own, so a slow agent never holds up
// a decision (a destination's verified image is acted on while a status
// request to the source is still out).

// fleet is what the orchestrator needs of the rest of the MMC: the
// agents (orders, introductions), the blackboard, the view a start's
// checks read, and the books a migration's writes and end keep.
type fleet interface {
	// order sends op for host's copy to the agent rec names for host
	// and returns its report.
	order(ctx context.Context, rec migration.Record, host string, op migration.Op, o migration.Order) (*migration.Report, error)
	// reachable: host's agent, as rec names it, has a live session.
	reachable(rec migration.Record, host string) bool
	// introduce puts the two agents in touch for the migration's link
	// and measures their round trips to the MMC.
	introduce(ctx context.Context, rec migration.Record, listener, dialer string) (srcRTT, dstRTT time.Duration, path, note string, err error)
	// upgrade tries, now and then until done closes, to move a relayed
	// link to a direct path; moved is called once it has.
	upgrade(ctx context.Context, done <-chan struct{}, rec migration.Record, listener, dialer string, moved func(note string))
	note(ctx context.Context, topic, text string)
	env(rec migration.Record) migration.Env
	// resumed: an open migration found at startup; recorded: a write
	// landed; ended: the migration reached its outcome.
	resumed(rec migration.Record)
	recorded(rec migration.Record)
	ended(ctx context.Context, rec migration.Record)
}

// orchestrator runs one drive per open migration.
type orchestrator struct {
	st    *store.Store
	fleet fleet
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	ctx     context.Context // run's, once it started
	running map[string]*drive
	wg      sync.WaitGroup
}

func newOrchestrator(st *store.Store, f fleet, log *slog.Logger, now func() time.Time) *orchestrator {
	return &orchestrator{st: st, fleet: f, log: log, now: now, running: map[string]*drive{}}
}

// drive is one migration's driver.
type drive struct {
	in   chan migration.Input // from the drive's own order goroutines
	done chan struct{}

	mu   sync.Mutex
	live *migration.Live
	// mail holds inputs from outside the drive (agents' posted phases,
	// an administrator's cancel): posting never blocks an agent's session
	// loop on a busy drive. A machine needs only the latest of each kind
	// of news, so the box is bounded.
	mail []migration.Input
	wake chan struct{} // capacity 1: mail is waiting
}

// maxMail bounds a drive's mailbox; beyond it the oldest input goes (the
// machine also learns what posts say from its status requests).
const maxMail = 32

// post leaves in in the drive's mailbox without blocking.
func (d *drive) post(in migration.Input) {
	d.mu.Lock()
	if len(d.mail) >= maxMail {
		d.mail = d.mail[1:]
	}
	d.mail = append(d.mail, in)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// takeMail empties the mailbox.
func (d *drive) takeMail() []migration.Input {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.mail
	d.mail = nil
	return m
}

// deliver hands in to the drive; false if it has ended.
func (d *drive) deliver(ctx context.Context, in migration.Input) bool {
	select {
	case d.in <- in:
		return true
	case <-d.done:
	case <-ctx.Done():
	}
	return false
}

// run resumes the open migrations, retries pending cleanups, and waits
// for every drive when ctx ends.
func (o *orchestrator) run(ctx context.Context) {
	o.mu.Lock()
	o.ctx = ctx
	o.mu.Unlock()
	defer o.wg.Wait()
	all, err := o.st.Migrations()
	if err != nil {
		o.log.Error("mmc: loading migrations", "err", err)
	}
	for _, m := range all {
		if m.State.Open() {
			o.fleet.resumed(m)
			o.launch(m.ID, true)
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
		o.cleanup(ctx)
	}
}

// launch starts the drive of migration id unless one runs. resumed marks
// a migration found open at startup.
func (o *orchestrator) launch(id string, resumed bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ctx == nil || o.running[id] != nil || o.ctx.Err() != nil {
		return
	}
	d := &drive{in: make(chan migration.Input, 16), done: make(chan struct{}), wake: make(chan struct{}, 1)}
	o.running[id] = d
	o.wg.Add(1)
	ctx := o.ctx
	go func() {
		defer o.wg.Done()
		defer func() {
			o.mu.Lock()
			delete(o.running, id)
			o.mu.Unlock()
			close(d.done)
		}()
		o.drive(ctx, id, d, resumed)
	}()
}

// notify leaves an input for migration id's drive, if one runs; it never
// blocks.
func (o *orchestrator) notify(id string, in migration.Input) {
	o.mu.Lock()
	d := o.running[id]
	o.mu.Unlock()
	if d != nil {
		d.post(in)
	}
}

// live returns a running migration's latest progress.
func (o *orchestrator) live(id string) *migration.Live {
	o.mu.Lock()
	d := o.running[id]
	o.mu.Unlock()
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.live
}

// drive steps migration id's machine until it reaches an outcome (or ctx
// ends: a later start picks it up where the record says).
func (o *orchestrator) drive(ctx context.Context, id string, d *drive, resumed bool) {
	rec, err := o.st.Migration(id)
	if err != nil {
		o.log.Error("mmc: migration vanished", "id", id, "err", err)
		return
	}
	m := migration.New(rec)
	var queue []migration.Command
	step := func(in migration.Input) { queue = append(queue, m.Step(in, o.now())...) }
	var env migration.Env
	if rec.State == migration.Planned {
		env = o.fleet.env(rec)
	}
	step(migration.Start{Resumed: resumed, Env: env})
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		for len(queue) > 0 {
			c := queue[0]
			queue = queue[1:]
			if _, ok := c.(migration.Persist); ok && len(queue) > 0 {
				// The machine decides nothing behind a write; a batch
				// that does is a bug that could order an agent ahead of
				// the record.
				o.log.Error("mmc: migration machine emitted commands after a write; dropped", "id", id, "dropped", len(queue))
				queue = nil
			}
			if in := o.execute(ctx, d, m.Record(), c); in != nil {
				step(in)
			}
		}
		live := m.Live()
		d.mu.Lock()
		d.live = live
		d.mu.Unlock()
		if m.Done() || ctx.Err() != nil {
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		wake := timer.C
		if next := m.NextTimeout(); !next.IsZero() {
			timer.Reset(max(0, next.Sub(o.now())))
		} else {
			wake = nil
		}
		select {
		case <-ctx.Done():
			return
		case in := <-d.in:
			step(in)
		case <-d.wake:
			for _, in := range d.takeMail() {
				step(in)
			}
		case <-wake:
			step(migration.Tick{})
		}
	}
}

// execute carries out one command. A store write's outcome is returned
// at once (the machine decides nothing behind a write); orders and
// introductions report back through d.in.
func (o *orchestrator) execute(ctx context.Context, d *drive, rec migration.Record, c migration.Command) migration.Input {
	switch c := c.(type) {
	case migration.Persist:
		out, err := o.st.UpdateMigration(c.Rec, c.IfVersion)
		if errors.Is(err, store.ErrStale) {
			cur, rerr := o.st.Migration(rec.ID)
			if rerr != nil {
				return migration.Persisted{Err: rerr}
			}
			return migration.Persisted{Rec: cur, Stale: true}
		}
		if err == nil {
			o.fleet.recorded(out)
		}
		return migration.Persisted{Rec: out, Err: err}
	case migration.Send:
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			r, err := o.fleet.order(ctx, rec, c.Host, c.Op, c.Order)
			d.deliver(ctx, migration.Reply{Seq: c.Seq, Report: r, Err: err})
		}()
	case migration.Introduce:
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			var in migration.Introduced
			start := time.Now()
			in.SrcRTT, in.DstRTT, in.Path, in.Note, in.Err = o.fleet.introduce(ctx, rec, c.Listener, c.Dialer)
			in.Took = time.Since(start)
			d.deliver(ctx, in)
			if in.Err == nil && in.Path == "relayed" {
				o.fleet.upgrade(ctx, d.done, rec, c.Listener, c.Dialer, func(note string) {
					d.post(migration.LinkMoved{Path: "direct", Note: note})
				})
			}
		}()
	case migration.Note:
		o.fleet.note(ctx, migration.Topic(rec.ID), c.Text)
	case migration.Log:
		o.log.Log(ctx, c.Level, "mmc: "+c.Msg, c.Args...)
	case migration.Ended:
		o.fleet.ended(ctx, c.Rec)
	}
	return nil
}

// cleanup retries the orders left over from finished migrations whose
// agents were away.
func (o *orchestrator) cleanup(ctx context.Context) {
	all, err := o.st.Migrations()
	if err != nil {
		return
	}
	for _, m := range all {
		for _, c := range m.Cleanup {
			op, host, ok := migration.ParseCleanup(c)
			if !ok || !o.fleet.reachable(m, host) {
				continue
			}
			order := migration.Order{ID: m.ID, Topic: migration.Topic(m.ID), VM: m.VM}
			if _, err := o.fleet.order(ctx, m, host, op, order); err != nil {
				o.log.Warn("mmc: migration cleanup", "id", m.ID, "op", op, "host", host, "err", err)
				continue
			}
			done, err := o.st.CleanupDone(m.ID, c)
			if err != nil {
				o.log.Warn("mmc: recording a migration cleanup", "id", m.ID, "err", err)
				continue
			}
			o.fleet.recorded(done)
		}
	}
}
