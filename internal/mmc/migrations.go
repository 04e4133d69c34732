package mmc

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ferry-vm/ferry/internal/store"
)

// Migration records. This issue plans them (by hand or by the policy
// engine in auto mode) and keeps them across restarts; the orchestrator
// that carries them out arrives with issue 6.

// ErrBusy is a migration request for a VM that already has one open.
var ErrBusy = fmt.Errorf("%w: VM already has an open migration", ErrConflict)

// planMigration records a planned migration of vm to host to.
func (s *Server) planMigration(vm, to, reason, by string, maxRate float64) (store.Migration, error) {
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
	s.migMu.Lock()
	defer s.migMu.Unlock()
	all, err := s.st.Migrations()
	if err != nil {
		return store.Migration{}, err
	}
	for _, m := range all {
		if m.VM == vm && open(m.State) {
			return store.Migration{}, ErrBusy
		}
	}
	now := s.cfg.Now()
	m, err := s.st.CreateMigration(store.Migration{VM: vm, From: from, To: to, State: store.MigrationPlanned,
		Reason: reason, By: by, MaxRate: maxRate, Created: now, Updated: now})
	if err != nil {
		return m, err
	}
	s.policyMu.Lock()
	s.engine.Started(vm, now)
	s.policyMu.Unlock()
	s.audit.add(store.AuditEntry{Actor: by, Action: "migration.plan", Target: m.ID, Outcome: "ok", Detail: fmt.Sprintf("%s %s → %s: %s", vm, from, to, reason)})
	s.log.Info("mmc: migration planned", "id", m.ID, "vm", vm, "from", from, "to", to, "by", by, "reason", reason)
	return m, nil
}

// cancelMigration cancels an open migration.
func (s *Server) cancelMigration(id, by string) (store.Migration, error) {
	s.migMu.Lock()
	defer s.migMu.Unlock()
	m, err := s.st.UpdateMigration(id, func(m *store.Migration) error {
		if !open(m.State) {
			return fmt.Errorf("%w: migration %s is %s", ErrConflict, id, m.State)
		}
		m.State, m.Updated = store.MigrationCancelled, s.cfg.Now()
		return nil
	})
	if err != nil {
		return m, err
	}
	s.policyMu.Lock()
	s.engine.Finished(m.VM)
	s.policyMu.Unlock()
	s.audit.add(store.AuditEntry{Actor: by, Action: "migration.cancel", Target: id, Outcome: "ok"})
	return m, nil
}

func open(state string) bool {
	return state != store.MigrationCancelled && state != "completed" && !strings.HasPrefix(state, "failed")
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
