package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/units"
)

// The convergence ladder, as operators know it from oVirt and vMotion:
// pre-copy rounds until the rest fits the downtime budget; auto-converge
// throttling the guest when rounds stop shrinking (QEMU does both on its
// own); and after MaxRounds passes over memory, post-copy if allowed —
// else the migration is given up with the source running on, rather than
// iterating for ever behind a guest that dirties faster than the link.
//
// The driver owns no goroutine: the checks run in MigrationStatus, which
// the migration agent polls. The switch itself is not the driver's to
// make: the status says PostcopyReady, and the MMC, which must persist
// that the destination is about to become the VM, has the agent call
// StartPostcopy.
//
// QEMU's post-copy needs the postcopy-ram capability at both ends and a
// return path (page requests flow back on the same socket pair; the
// migration agents carry both directions). It is not offered for a VM
// whose disks are mirrored: the mirror's completion is tied to the
// pre-copy's pause before the switch-over.

// migPlan is what MigrationStatus needs of an outgoing migration's
// parameters, kept in DIR/ID.migplan (an agent may restart meanwhile).
type migPlan struct {
	MaxRounds int  `json:"max_rounds"`
	Postcopy  bool `json:"postcopy"`
}

func (d *Driver) savePlan(id string, p hypervisor.MigrationParams) error {
	plan := migPlan{MaxRounds: p.MaxRounds, Postcopy: p.Postcopy}
	if plan.MaxRounds <= 0 {
		plan.MaxRounds = hypervisor.DefaultMaxRounds
	}
	b, _ := json.Marshal(plan)
	if err := os.WriteFile(d.path(id, "migplan"), b, 0o600); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	// What an earlier migration of this VM left.
	for _, ext := range []string{"postcopy", "migabort"} {
		if err := os.Remove(d.path(id, ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("qemu: %w", err)
		}
	}
	return nil
}

func (d *Driver) plan(id string) (migPlan, bool) {
	var p migPlan
	b, err := os.ReadFile(d.path(id, "migplan"))
	if err != nil || json.Unmarshal(b, &p) != nil {
		return p, false
	}
	return p, true
}

// converge applies the ladder's last step to a source whose pre-copy is
// active: past MaxRounds it reports PostcopyReady, or cancels the
// migration (recording why) when post-copy is not allowed.
func (d *Driver) converge(ctx context.Context, id string, mi migrateInfo, st *hypervisor.MigrationStatus) error {
	p, ok := d.plan(id)
	if !ok || mi.Status != "active" || mi.RAM == nil || mi.RAM.DirtySyncs <= p.MaxRounds {
		return nil
	}
	if p.Postcopy {
		st.Postcopy = hypervisor.PostcopyReady
		return nil
	}
	why := fmt.Sprintf("pre-copy did not converge in %d passes over memory (QEMU measured %s of pages dirtied per pass against %s sent) and post-copy is not allowed: migration given up, the VM runs on here",
		p.MaxRounds, units.FormatRate(8*st.DirtyRate), units.FormatRate(8*st.Rate))
	if err := os.WriteFile(d.path(id, "migabort"), []byte(why), 0o600); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	if err := d.CancelMigration(ctx, id); err != nil {
		return err
	}
	st.State, st.Error = hypervisor.MigFailed, why
	return nil
}

// abortReason is why converge gave up VM id's migration ("" if it did
// not).
func (d *Driver) abortReason(id string) string {
	b, _ := os.ReadFile(d.path(id, "migabort"))
	return string(b)
}

// StartPostcopy implements hypervisor.PostcopyMigrator.
func (d *Driver) StartPostcopy(ctx context.Context, id string) error {
	return d.qmp(ctx, id, func(q *qmpConn) error {
		var mi migrateInfo
		if err := q.run("query-migrate", nil, &mi, nil); err != nil {
			return err
		}
		switch mi.Status {
		case "postcopy-active", "postcopy-paused", "postcopy-recover", "completed":
			return nil // switched already
		case "active":
		default:
			return fmt.Errorf("qemu: VM %s: cannot switch a migration that is %q to post-copy", id, mi.Status)
		}
		if p, ok := d.plan(id); !ok || !p.Postcopy {
			return fmt.Errorf("qemu: VM %s: post-copy was not allowed for this migration", id)
		}
		// The guest stops now: the pause the downtime is counted from.
		at := strconv.FormatInt(time.Now().UnixNano(), 10)
		if err := os.WriteFile(d.path(id, "postcopy"), []byte(at), 0o600); err != nil {
			return fmt.Errorf("qemu: %w", err)
		}
		return q.run("migrate-start-postcopy", nil, nil, nil)
	})
}

// postcopyAt is when VM id's migration switched to post-copy (zero if it
// did not).
func (d *Driver) postcopyAt(id string) time.Time {
	if b, err := os.ReadFile(d.path(id, "postcopy")); err == nil {
		if ns, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			return time.Unix(0, ns)
		}
	}
	return time.Time{}
}

// postcopyOutcome says whether a migration switched to post-copy, from
// QEMU's migration and run states and whether the driver asked for the
// switch (requested); forget: the request is void and must go. Switched:
// QEMU says so, or it completed after the request. migrate-start-postcopy
// only asks (the migration thread switches at its next pass): a migration
// that failed or was cancelled before switching has the guest running
// again at the source, and the request is forgotten; one that failed
// after the switch leaves the guest stopped, and stays switched.
func postcopyOutcome(migState, runState string, requested bool) (switched, forget bool) {
	switch {
	case postcopyStatus(migState):
		return true, false
	case !requested:
		return false, false
	case migState == "completed":
		return true, false
	case migState == "failed" || migState == "cancelled":
		if runState == "running" {
			return false, true
		}
		return true, false
	}
	return false, false // asked, not switched yet
}

func postcopyStatus(s string) bool {
	switch s {
	case "postcopy-active", "postcopy-paused", "postcopy-recover":
		return true
	}
	return false
}
