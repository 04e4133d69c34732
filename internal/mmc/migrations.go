package mmc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ferry-vm/ferry/internal/inventory"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/units"
)

// Migration records: planned by hand or by the policy engine in auto
// mode, carried out by the orchestrator (orchestrate.go).

// ErrBusy is a migration request for a VM that already has one open.
var ErrBusy = fmt.Errorf("%w: VM already has an open migration", ErrConflict)

// ErrInvalid is a request no migration can be made of.
var ErrInvalid = errors.New("mmc: invalid request")

// planMigration records a planned migration of vm to host to. The source
// is where the inventory places the VM (not which host reports it), and
// the record names both hosts' agents: its orders go to them, and its
// commit places the VM on the destination's.
func (s *Server) planMigration(vm, to, reason, by string, o migration.Options) (migration.Record, error) {
	return s.planGroupMigration(vm, to, reason, by, "", o, time.Time{})
}

// planGroupMigration is planMigration for a migration that is part of
// group (an evacuation's id; "" for none).
func (s *Server) planGroupMigration(vm, to, reason, by, group string, o migration.Options, startAt time.Time) (migration.Record, error) {
	if err := o.Check(); err != nil {
		return migration.Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	s.invMu.Lock()
	v, known := s.inv.VM(vm)
	reporters := s.inv.Reporters(vm)
	s.invMu.Unlock()
	switch {
	case !known:
		return migration.Record{}, fmt.Errorf("%w: VM %s is not in the inventory", store.ErrNotFound, vm)
	case v.State == inventory.StateUnplaced:
		return migration.Record{}, fmt.Errorf("%w: VM %s is not placed yet (a record from before the inventory, placed at its host's first report)", ErrConflict, vm)
	case v.State == inventory.StateUnmanaged:
		return migration.Record{}, fmt.Errorf("%w: VM %s is unmanaged (the agent of %s was revoked)", ErrConflict, vm, v.Host)
	case s.reg.session(v.Agent) == nil:
		return migration.Record{}, fmt.Errorf("%w: %s (source of %s)", ErrHostOffline, v.Host, vm)
	}
	from, fromAgent := v.Host, v.Agent
	toAgent, ok := s.reg.holder(to)
	if !ok || s.reg.session(toAgent) == nil {
		return migration.Record{}, fmt.Errorf("%w: %s", ErrHostOffline, to)
	}
	if toAgent == fromAgent {
		return migration.Record{}, fmt.Errorf("%w: VM %s is already on %s", ErrConflict, vm, to)
	}
	if slices.Contains(reporters, toAgent) {
		return migration.Record{}, fmt.Errorf("%w: %s already has a VM named %s", ErrConflict, to, vm)
	}
	now := s.cfg.Now()
	// The store refuses a second open migration of the VM.
	m, err := s.st.CreateMigration(migration.Record{VM: vm, From: from, To: to, FromAgent: fromAgent, ToAgent: toAgent,
		State: migration.Planned, Reason: reason, By: by, Group: group, StartAt: startAt, Options: o, Created: now, Updated: now})
	if errors.Is(err, store.ErrOpenMigration) {
		return m, ErrBusy
	}
	if errors.Is(err, store.ErrConflict) {
		return m, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	if err != nil {
		return m, err
	}
	s.noteMigration(m)
	s.metrics.migStarted.WithLabelValues(by).Inc()
	s.pol.started(vm, now)
	s.audit.add(store.AuditEntry{Actor: by, Action: "migration.plan", Target: m.ID, Outcome: "ok", Detail: fmt.Sprintf("%s %s → %s: %s", vm, from, to, reason)})
	s.log.Info("mmc: migration planned", "id", m.ID, "vm", vm, "from", from, "to", to, "by", by, "reason", reason)
	s.orch.launch(m.ID, false)
	return m, nil
}

// cancelMigrationWait bounds how long a cancel request waits for the
// rollback to finish before answering with the record as it stands.
const cancelMigrationWait = 30 * time.Second

// cancelMigration asks the orchestrator to roll an open migration back
// and waits (bounded) for the outcome. A migration past its commit
// (switch-over), or armed for it, cannot be cancelled: the destination
// is, or is about to be, the VM.
func (s *Server) cancelMigration(ctx context.Context, id, by string) (migration.Record, error) {
	m, err := s.requestCancel(id, by)
	if err != nil {
		return m, err
	}
	ctx, cancel := context.WithTimeout(ctx, cancelMigrationWait)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if m, err = s.st.Migration(id); err != nil || !m.State.Open() {
			return m, err
		}
		select {
		case <-ctx.Done():
			return m, nil
		case <-t.C:
		}
	}
}

func (s *Server) migrations() ([]migration.Record, error) {
	all, err := s.st.Migrations()
	slices.SortFunc(all, func(a, b migration.Record) int { return bySequence(a.ID, b.ID) })
	return all, err
}

// bySequence orders ids made of a letter and a store sequence number
// ("m2" before "m10").
func bySequence(a, b string) int {
	x, _ := strconv.Atoi(a[min(1, len(a)):])
	y, _ := strconv.Atoi(b[min(1, len(b)):])
	return x - y
}

// conflict is a request refused for the state things are in; its text
// is the reason alone.
type conflict struct{ reason error }

func (c conflict) Error() string        { return c.reason.Error() }
func (c conflict) Unwrap() error        { return c.reason }
func (c conflict) Is(target error) bool { return target == ErrConflict }

// requestCancel records the cancel of an open migration and hands it to
// the orchestrator, without waiting for the rollback.
// setMigrationRate changes an open migration's bandwidth cap (bytes/s,
// 0: none): on record first, then the migration's drive tells the
// source (at once while it transfers; with the start order before).
func (s *Server) setMigrationRate(id string, rate float64, by string) (migration.Record, error) {
	m, err := s.st.SetMigrationRate(id, rate, s.cfg.Now())
	if errors.Is(err, store.ErrConflict) {
		return m, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	if err != nil {
		return m, err
	}
	s.noteMigration(m)
	detail := "no cap"
	if rate > 0 {
		detail = units.FormatRate(8 * rate)
	}
	s.audit.add(store.AuditEntry{Actor: by, Action: "migration.bandwidth", Target: id, Outcome: "ok", Detail: detail})
	s.orch.notify(id, migration.Changed{Rec: m})
	return m, nil
}

func (s *Server) requestCancel(id, by string) (migration.Record, error) {
	m, err := s.st.CancelMigration(id, s.cfg.Now())
	if nc := (*migration.NotCancellable)(nil); errors.As(err, &nc) {
		return m, conflict{nc}
	}
	if err != nil {
		return m, err
	}
	s.noteMigration(m)
	s.audit.add(store.AuditEntry{Actor: by, Action: "migration.cancel", Target: id, Outcome: "ok"})
	s.orch.notify(id, migration.Changed{Rec: m})
	return m, nil
}
