package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
)

// The end verbs: what an order does to a VM copy once the MMC decided
// (the decisions themselves are internal/migration/job.go's).

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

// setBandwidth changes the cap of this agent's running outgoing
// migration o (an operator's change, or a new MMC leader re-applying
// the record's).
func (a *Agent) setBandwidth(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	j := a.migs.get(o.ID)
	if j == nil || j.role != migration.Source {
		return fmt.Errorf("agent: no outgoing migration %s here", o.ID)
	}
	if ph, _ := j.get(); ph.Final() {
		return fmt.Errorf("agent: migration %s has ended here (%s)", o.ID, ph)
	}
	bs, ok := mig.(hypervisor.BandwidthSetter)
	if !ok {
		return errors.New("agent: this hypervisor driver cannot change a running migration's bandwidth")
	}
	if err := bs.SetMaxBandwidth(ctx, o.VM, o.Params.MaxBandwidth); err != nil {
		return err
	}
	a.log.Info("agent: migration bandwidth cap changed", "id", o.ID, "vm", o.VM, "max_bandwidth", o.Params.MaxBandwidth)
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
