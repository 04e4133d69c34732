package mmc

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// Migration records: planned by hand or by the policy engine in auto
// mode, carried out by the orchestrator (orchestrate.go).

// ErrBusy is a migration request for a VM that already has one open.
var ErrBusy = fmt.Errorf("%w: VM already has an open migration", ErrConflict)

// migrationOptions are a migration's parameters as requested.
type migrationOptions struct {
	MaxRate       float64 // bytes/s, 0: no cap
	AllowPostcopy bool
	MaxRounds     int
	DowntimeLimit time.Duration // 0: defaultDowntimeLimit
	Compress      bool
}

// planMigration records a planned migration of vm to host to.
func (s *Server) planMigration(vm, to, reason, by string, o migrationOptions) (store.Migration, error) {
	from, ok := s.hostOfVM(vm)
	if !ok {
		return store.Migration{}, fmt.Errorf("%w: VM %s is on no online host", store.ErrNotFound, vm)
	}
	if from == to {
		return store.Migration{}, fmt.Errorf("%w: VM %s is already on %s", ErrConflict, vm, to)
	}
	if s.sessionByHost(to) == nil {
		return store.Migration{}, fmt.Errorf("%w: %s", ErrHostOffline, to)
	}
	for _, v := range s.vms() {
		if v.ID == vm && v.Host == to {
			return store.Migration{}, fmt.Errorf("%w: %s already has a VM named %s", ErrConflict, to, vm)
		}
	}
	s.migMu.Lock()
	defer s.migMu.Unlock()
	all, err := s.st.Migrations()
	if err != nil {
		return store.Migration{}, err
	}
	for _, m := range all {
		if m.VM == vm && store.MigrationOpen(m.State) {
			return store.Migration{}, ErrBusy
		}
	}
	now := s.cfg.Now()
	m, err := s.st.CreateMigration(store.Migration{VM: vm, From: from, To: to, State: store.MigrationPlanned,
		Reason: reason, By: by, MaxRate: o.MaxRate, AllowPostcopy: o.AllowPostcopy, MaxRounds: o.MaxRounds,
		DowntimeLimitMS: o.DowntimeLimit.Milliseconds(), Compress: o.Compress, Created: now, Updated: now})
	if err != nil {
		return m, err
	}
	s.policyMu.Lock()
	s.engine.Started(vm, now)
	s.policyMu.Unlock()
	s.audit.add(store.AuditEntry{Actor: by, Action: "migration.plan", Target: m.ID, Outcome: "ok", Detail: fmt.Sprintf("%s %s → %s: %s", vm, from, to, reason)})
	s.log.Info("mmc: migration planned", "id", m.ID, "vm", vm, "from", from, "to", to, "by", by, "reason", reason)
	s.launch(m.ID, false)
	return m, nil
}

// cancelMigrationWait bounds how long a cancel request waits for the
// rollback to finish before answering with the record as it stands.
const cancelMigrationWait = 30 * time.Second

// cancelMigration asks the orchestrator to roll an open migration back
// and waits (bounded) for the outcome. A migration past its commit
// (switch-over), or armed for it, cannot be cancelled: the destination
// is, or is about to be, the VM.
func (s *Server) cancelMigration(ctx context.Context, id, by string) (store.Migration, error) {
	s.migMu.Lock()
	m, err := s.st.UpdateMigration(id, func(m *store.Migration) error {
		switch {
		case !store.MigrationOpen(m.State):
			return fmt.Errorf("%w: migration %s is %s", ErrConflict, id, m.State)
		case m.State == store.MigrationSwitchOver:
			return fmt.Errorf("%w: migration %s is committed (switch-over): too late to cancel", ErrConflict, id)
		case !m.ArmedAt.IsZero() && m.State == store.MigrationTransferring:
			return fmt.Errorf("%w: migration %s has sent its last byte and its destination resumes once verified: too late to cancel", ErrConflict, id)
		case m.State == store.MigrationPostcopy:
			return fmt.Errorf("%w: migration %s is switching to post-copy: too late to cancel", ErrConflict, id)
		case m.CancelRequested:
			return fmt.Errorf("%w: migration %s is already being cancelled", ErrConflict, id)
		}
		m.CancelRequested, m.Updated = true, s.cfg.Now()
		return nil
	})
	s.migMu.Unlock()
	if err != nil {
		return m, err
	}
	s.audit.add(store.AuditEntry{Actor: by, Action: "migration.cancel", Target: id, Outcome: "ok"})
	s.poke(id, eventNone)
	ctx, cancel := context.WithTimeout(ctx, cancelMigrationWait)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if m, err = s.st.Migration(id); err != nil || !store.MigrationOpen(m.State) {
			return m, err
		}
		select {
		case <-ctx.Done():
			return m, nil
		case <-t.C:
		}
	}
}

func (s *Server) migrations() ([]store.Migration, error) {
	all, err := s.st.Migrations()
	slices.SortFunc(all, func(a, b store.Migration) int {
		x, _ := strconv.Atoi(strings.TrimPrefix(a.ID, "m"))
		y, _ := strconv.Atoi(strings.TrimPrefix(b.ID, "m"))
		return x - y
	})
	return all, err
}
