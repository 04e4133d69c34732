package mmc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/message"
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

// orchestrator tracks the running drives.
type orchestrator struct {
	mu      sync.Mutex
	ctx     context.Context // the server's, once Run started
	running map[string]*drive
	wg      sync.WaitGroup
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
	d := &drive{in: make(chan migration.Input, 16), done: make(chan struct{}), wake: make(chan struct{}, 1)}
	s.orch.running[id] = d
	s.orch.wg.Add(1)
	go func() {
		defer s.orch.wg.Done()
		defer func() {
			s.orch.mu.Lock()
			delete(s.orch.running, id)
			s.orch.mu.Unlock()
			close(d.done)
		}()
		s.drive(s.orch.ctx, id, d, resumed)
	}()
}

// notify leaves an input for migration id's drive, if one runs; it never
// blocks.
func (s *Server) notify(id string, in migration.Input) {
	s.orch.mu.Lock()
	d := s.orch.running[id]
	s.orch.mu.Unlock()
	if d != nil {
		d.post(in)
	}
}

// live returns a running migration's latest progress.
func (s *Server) live(id string) *migration.Live {
	s.orch.mu.Lock()
	d := s.orch.running[id]
	s.orch.mu.Unlock()
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.live
}

// drive steps migration id's machine until it reaches an outcome (or ctx
// ends: a later start picks it up where the record says).
func (s *Server) drive(ctx context.Context, id string, d *drive, resumed bool) {
	rec, err := s.st.Migration(id)
	if err != nil {
		s.log.Error("mmc: migration vanished", "id", id, "err", err)
		return
	}
	m := migration.New(rec)
	var queue []migration.Command
	step := func(in migration.Input) { queue = append(queue, m.Step(in, s.cfg.Now())...) }
	var env migration.Env
	if rec.State == migration.Planned {
		env = s.envOf(rec)
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
				s.log.Error("mmc: migration machine emitted commands after a write; dropped", "id", id, "dropped", len(queue))
				queue = nil
			}
			if in := s.execute(ctx, d, m.Record(), c); in != nil {
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
			timer.Reset(max(0, next.Sub(s.cfg.Now())))
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
func (s *Server) execute(ctx context.Context, d *drive, rec migration.Record, c migration.Command) migration.Input {
	topic := migration.Topic(rec.ID)
	switch c := c.(type) {
	case migration.Persist:
		out, err := s.st.UpdateMigration(c.Rec, c.IfVersion)
		if errors.Is(err, store.ErrStale) {
			cur, rerr := s.st.Migration(rec.ID)
			if rerr != nil {
				return migration.Persisted{Err: rerr}
			}
			return migration.Persisted{Rec: cur, Stale: true}
		}
		if err == nil {
			// The commit's write placed the VM on the destination's
			// agent (in its transaction): mirror that, and what the
			// record now expects of each host.
			s.noteMigration(out)
			s.refreshVM(out.VM)
		}
		return migration.Persisted{Rec: out, Err: err}
	case migration.Send:
		s.orch.wg.Add(1)
		go func() {
			defer s.orch.wg.Done()
			o := c.Order
			// To the agent the record names for the host (the one that
			// holds the copy), not to whoever holds the name now.
			r, err := s.actOn(ctx, s.agentFor(rec, c.Host), c.Host, message.Action{Op: string(c.Op), Mig: &o})
			if err == nil && r.Mig == nil {
				err = fmt.Errorf("mmc: %s sent no migration report", c.Host)
			}
			d.deliver(ctx, migration.Reply{Seq: c.Seq, Report: r.Mig, Err: err})
		}()
	case migration.Introduce:
		s.orch.wg.Add(1)
		go func() {
			defer s.orch.wg.Done()
			in := migration.Introduced{}
			listener, dialer := s.liveAgent(s.agentFor(rec, c.Listener), c.Listener), s.liveAgent(s.agentFor(rec, c.Dialer), c.Dialer)
			if err := s.Introduce(ctx, topic, listener, dialer); err != nil {
				in.Err = err
			}
			in.SrcRTT, in.DstRTT = s.rttOf(rec.FromAgent, rec.From), s.rttOf(rec.ToAgent, rec.To)
			d.deliver(ctx, in)
		}()
	case migration.Note:
		_ = s.postAsMMC(ctx, topic, board.KindNote, board.Note{Text: truncate(c.Text)})
	case migration.Log:
		s.log.Log(ctx, c.Level, "mmc: "+c.Msg, c.Args...)
	case migration.Ended:
		s.finished(ctx, c.Rec)
	}
	return nil
}

// envOf is what a planned migration's checks need from the MMC's view:
// whether its agents are online, the VM's definition if the source's
// agent reports the VM, and another host reporting it.
func (s *Server) envOf(m migration.Record) migration.Env {
	from, _ := s.migrationAgents(m)
	e := migration.Env{SrcOnline: s.sessionFor(m.FromAgent, m.From) != nil, DstOnline: s.sessionFor(m.ToAgent, m.To) != nil}
	s.invMu.Lock()
	o, reported := s.inv.Reported(from, m.VM)
	var other string
	for _, a := range s.inv.Reporters(m.VM) {
		if a != from {
			other = a
			break
		}
	}
	if other != "" {
		if a, ok := s.inv.Agent(other); ok {
			other = a.Host
		}
	}
	s.invMu.Unlock()
	if reported {
		if def, err := s.st.VM(m.VM); err == nil {
			e.Spec = &def.Spec
		} else {
			e.Spec = &hypervisor.Spec{Name: m.VM, Memory: o.Memory, VCPUs: o.VCPUs}
		}
	}
	e.OtherHost = other
	return e
}

// liveAgent is the agent id of the session orders for host go to ("" if
// offline).
func (s *Server) liveAgent(agent, host string) string {
	if ss := s.sessionFor(agent, host); ss != nil {
		return ss.id
	}
	return ""
}

// rttOf is the session's smoothed round-trip time (0 if offline).
func (s *Server) rttOf(agent, host string) time.Duration {
	if ss := s.sessionFor(agent, host); ss != nil {
		return ss.c.Stats().SmoothedRTT
	}
	return 0
}

// finished ends a migration's bookkeeping: the policy's in-flight count,
// the blackboard topic, the audit trail.
func (s *Server) finished(ctx context.Context, m migration.Record) {
	s.policyMu.Lock()
	s.engine.Finished(m.VM)
	s.policyMu.Unlock()
	topic := migration.Topic(m.ID)
	_ = s.postAsMMC(ctx, topic, board.KindNote, board.Note{Text: "migration " + string(m.State)})
	s.board.Close(topic)
	detail := fmt.Sprintf("%s %s → %s", m.VM, m.From, m.To)
	if m.State == migration.Completed {
		detail += fmt.Sprintf(": total %d ms, downtime %d ms, %d bytes on the wire", m.TotalMS, m.DowntimeMS, m.BytesOnWire)
	} else if m.Error != "" {
		detail += ": " + m.Error
	}
	s.audit.add(store.AuditEntry{Actor: "orchestrator", Action: "migration." + string(m.State), Target: m.ID, Outcome: "ok", Detail: detail})
}

// cleanup retries the orders left over from finished migrations whose
// agents were away.
func (s *Server) cleanup(ctx context.Context) {
	all, err := s.st.Migrations()
	if err != nil {
		return
	}
	for _, m := range all {
		for _, c := range m.Cleanup {
			op, host, ok := migration.ParseCleanup(c)
			agent := s.agentFor(m, host)
			if !ok || s.sessionFor(agent, host) == nil {
				continue
			}
			order := &migration.Order{ID: m.ID, Topic: migration.Topic(m.ID), VM: m.VM}
			if _, err := s.actOn(ctx, agent, host, message.Action{Op: string(op), Mig: order}); err != nil {
				s.log.Warn("mmc: migration cleanup", "id", m.ID, "op", op, "host", host, "err", err)
				continue
			}
			done, err := s.st.CleanupDone(m.ID, c)
			if err != nil {
				s.log.Warn("mmc: recording a migration cleanup", "id", m.ID, "err", err)
				continue
			}
			s.noteMigration(done)
		}
	}
}
