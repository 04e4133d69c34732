package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// A VM copy that this agent destroys on an order (vm.delete, or a
// migration's migrate.finish/abort) stops on its way out, and a monitor
// pass that looks at that moment sees a stopped VM; an incoming copy that
// never ran may die with its migration (QEMU exits when its incoming
// stream fails). Neither is a VM that "stopped unexpectedly": operators
// page on that alarm, and would be paged for every migration. So before
// the agent destroys a copy, or starts an incoming one, it records why
// the copy may stop; the monitor raises vm-stopped only for a stop nobody
// expected (judgeVM). The record is durable, in the outbox's database
// beside the raised stops: an agent restarted between the destroy and the
// next monitor pass still knows.

// Why a VM's stop is expected.
const (
	expectDeleted  = "deleted"  // vm.delete: the MMC or an administrator removes it
	expectMigrated = "migrated" // migrate.finish: the source copy after the commit
	expectAborted  = "aborted"  // migrate.abort: the incoming copy of a rolled-back migration
	expectIncoming = "incoming" // an incoming copy that has not run (its loss is the migration's failure)
)

// destroying reports whether reason is an order to destroy the VM (so
// one found stopped is finished off), rather than a copy that may stop.
func destroying(reason string) bool { return reason != expectIncoming }

// expectKeep bounds how long a record is trusted: a destroy takes
// seconds, and an incoming copy lives as long as its migration. An older
// one is dropped, and the VM's next stop is an alarm again.
const expectKeep = 24 * time.Hour

// maxExpect bounds the records held. Each is forgotten once its VM
// is gone, so more than a host's VMs means something is wrong; the oldest
// go first.
const maxExpect = 1024

var bucketExpected = []byte("expected")

// expectedStop is why a VM's stop is expected, and since when.
type expectedStop struct {
	Reason    string    `json:"reason"`
	Migration string    `json:"migration,omitempty"`
	At        time.Time `json:"at"`
}

// expectedStops are the VMs whose stop this agent expects, and the VMs an
// action of this process is creating or destroying right now (busy) or
// has just finished with (ended): the monitor passes no judgement on
// those, whose files and process come and go under it.
type expectedStops struct {
	mu   sync.Mutex
	db   *bolt.DB // nil: memory only; shared with (and closed by) the outbox
	m    map[string]expectedStop
	busy map[string]int
	// ended is when the last action on a VM ended. A monitor pass's List
	// that began before then may have seen the VM mid-action (a copy
	// stopped by a destroy that has since completed and forgotten its
	// record): its view is stale for that VM. Pruned by settle.
	ended map[string]time.Time
}

func newExpectedStops() *expectedStops {
	return &expectedStops{m: map[string]expectedStop{}, busy: map[string]int{}, ended: map[string]time.Time{}}
}

// openExpectedStops loads the records kept in db (the outbox's).
func openExpectedStops(db *bolt.DB) (*expectedStops, error) {
	e := newExpectedStops()
	e.db = db
	if db == nil {
		return e, nil
	}
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketExpected)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var x expectedStop
			if json.Unmarshal(v, &x) != nil {
				// Unreadable: the VM's stop is an alarm again, as
				// without a record.
				return nil
			}
			e.m[string(k)] = x
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("agent: expected stops: %w", err)
	}
	return e, nil
}

// expect records, durably, why VM id may stop from now on. The record is
// kept in memory even if the database refuses it (the error says so):
// only an agent restart would then forget it.
func (e *expectedStops) expect(id, reason, migration string, now time.Time) error {
	x := expectedStop{Reason: reason, Migration: migration, At: now}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m[id] = x
	var drop []string
	for len(e.m) > maxExpect {
		oldest := ""
		for k, v := range e.m {
			if k != id && (oldest == "" || v.At.Before(e.m[oldest].At)) {
				oldest = k
			}
		}
		delete(e.m, oldest)
		drop = append(drop, oldest)
	}
	if e.db == nil {
		return nil
	}
	v, err := json.Marshal(x)
	if err != nil {
		return fmt.Errorf("agent: recording %s's expected stop: %w", id, err)
	}
	err = e.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketExpected)
		for _, k := range drop {
			if err := b.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return b.Put([]byte(id), v)
	})
	if err != nil {
		return fmt.Errorf("agent: recording %s's expected stop: %w", id, err)
	}
	return nil
}

// forget drops what was recorded about VM id: it is gone, or runs as a
// VM whose stop is an alarm again. With seen not nil it drops only that
// record: a monitor pass that judged an old one must not drop the one an
// action has written since.
func (e *expectedStops) forget(id string, seen *expectedStop) {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur, ok := e.m[id]
	if !ok || (seen != nil && !cur.At.Equal(seen.At)) {
		return
	}
	if e.db != nil {
		err := e.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketExpected).Delete([]byte(id)) })
		if err != nil {
			// Kept, so a later pass tries again: a stale record that
			// came back after a restart could silence a real stop.
			return
		}
	}
	delete(e.m, id)
}

// begin marks VM id busy: an action of this process is creating or
// destroying it. end undoes one begin.
func (e *expectedStops) begin(id string) {
	e.mu.Lock()
	e.busy[id]++
	e.mu.Unlock()
}

func (e *expectedStops) end(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.busy[id]--; e.busy[id] <= 0 {
		delete(e.busy, id)
		e.ended[id] = time.Now()
	}
}

// settle forgets the actions that ended before seen, the start of a
// monitor pass that has judged them: no later pass began earlier.
func (e *expectedStops) settle(seen time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, at := range e.ended {
		if at.Before(seen) {
			delete(e.ended, id)
		}
	}
}

// tryBegin is begin unless VM id is busy already.
func (e *expectedStops) tryBegin(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.busy[id] > 0 {
		return false
	}
	e.busy[id]++
	return true
}

// lookup returns what is known about VM id: busy says an action of this
// process is creating or destroying it, or ended one after seen.
func (e *expectedStops) lookup(id string, seen time.Time) (x *expectedStop, busy bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if v, ok := e.m[id]; ok {
		x = &v
	}
	return x, e.busy[id] > 0 || e.ended[id].After(seen)
}

// ids returns the VMs with an expectedStop.
func (e *expectedStops) ids() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, 0, len(e.m))
	for id := range e.m {
		out = append(out, id)
	}
	return out
}

// vmFate is the monitor's verdict on one VM in one pass.
type vmFate struct {
	// Alarm: it stopped and nobody expected it; raise vm-stopped (the
	// outbox raises it once per stop).
	Alarm bool
	// Clear: it runs, or is gone; a raised stop is over, and its next
	// stop is a new alarm.
	Clear bool
	// Forget: drop its expectedStop (it is gone, or the record is too old
	// to trust).
	Forget bool
	// Finish: it stopped on an order to destroy it but is still there,
	// and no destroy runs: one was cut short (an agent restart); complete
	// it.
	Finish bool
}

// judgeVM decides what a monitor pass does about one VM: the driver's
// List, begun at seen, reported it (listed) in state; x is what this
// agent expects of it (nil: nothing), and busy says an action of this
// process is creating or destroying it right now, or ended one since
// seen (so what List saw may be the middle of it). Only a VM seen stopped
// can be an alarm: paused, or migrating (a source paused after its
// completed transfer, in postmigrate; an incoming copy while it
// receives), it is where it should be.
func judgeVM(listed bool, state hypervisor.State, x *expectedStop, busy bool, seen time.Time) vmFate {
	var f vmFate
	if busy {
		// Its files and process come and go under the driver's List
		// (the simulated driver's spec file exists before its process
		// serves, and after it is gone): no verdict until the action
		// ends. The durable record covers a restart meanwhile.
		return f
	}
	if x != nil && x.At.After(seen) {
		// Recorded after the List began: what it saw may predate the
		// record's VM (an incoming copy not yet created). The next pass
		// judges.
		return f
	}
	if x != nil && seen.Sub(x.At) > expectKeep {
		x, f.Forget = nil, true
	}
	switch {
	case !listed:
		f.Clear, f.Forget = true, x != nil
	case state != hypervisor.StateStopped:
		f.Clear = true
	case x == nil:
		f.Alarm = true
	case destroying(x.Reason):
		f.Finish = true
	}
	return f
}

// judge carries out the monitor's verdict on one VM (see judgeVM).
func (a *Agent) judge(ctx context.Context, id string, listed bool, state hypervisor.State, seen time.Time) {
	x, busy := a.expect.lookup(id, seen)
	f := judgeVM(listed, state, x, busy, seen)
	if f.Forget {
		a.expect.forget(id, x)
	}
	if f.Clear {
		a.events.clearStopped(id)
	}
	if f.Alarm && a.events.raiseStopped(id) {
		a.log.Warn("agent: VM stopped unexpectedly", "vm", id)
	}
	if f.Finish {
		a.finishDestroy(ctx, id, x)
	}
}

// destroyVM destroys VM id on an order (reason; migration, if it is a
// migration's copy), having recorded why first, so that no monitor pass —
// of this process or, after a restart, of the next — takes its stop for
// a crash.
func (a *Agent) destroyVM(ctx context.Context, id, reason, migration string) error {
	a.expect.begin(id)
	defer a.expect.end(id)
	if err := a.expect.expect(id, reason, migration, time.Now()); err != nil {
		// The order matters more than the alarm: only a restart before
		// the destroy ends could now raise a false one.
		a.log.Warn("agent: destroying a VM without a durable record of why", "vm", id, "reason", reason, "err", err)
	}
	err := a.cfg.Driver.Destroy(ctx, id)
	if err == nil || errors.Is(err, hypervisor.ErrNotFound) {
		a.expect.forget(id, nil) // gone: nothing left to judge
		return err
	}
	// Not destroyed. If it still runs, its later stop is an alarm again;
	// if it stopped, the monitor finishes the destroy.
	if vms, lerr := a.cfg.Driver.List(ctx); lerr == nil {
		for _, vm := range vms {
			if vm.ID == id && vm.State != hypervisor.StateStopped {
				a.expect.forget(id, nil)
			}
		}
	}
	return err
}

// finishDestroy completes the destroy of VM id, which stopped on an order
// (x) but is still there: the destroy was cut short, by an agent restart
// or a failure after the VM had stopped.
func (a *Agent) finishDestroy(ctx context.Context, id string, x *expectedStop) {
	if !a.expect.tryBegin(id) {
		return // an action destroys it now
	}
	defer a.expect.end(id)
	a.log.Info("agent: completing an interrupted destroy", "vm", id, "reason", x.Reason, "migration", x.Migration)
	if err := a.cfg.Driver.Destroy(ctx, id); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		a.log.Warn("agent: completing an interrupted destroy", "vm", id, "err", err)
		return
	}
	a.expect.forget(id, x)
}

// createVM runs create, which brings VM id into existence (vm.create, or
// an incoming copy), with the monitor's judgement of id held off until it
// returns. An incoming copy (reason expectIncoming) is recorded first; any
// other new VM's stop is an alarm, whatever was recorded about an earlier
// VM of that name. A create that fails (the name is taken: a repeated
// order, or a copy still being destroyed) leaves what was recorded before.
func (a *Agent) createVM(id, reason, migration string, create func() error) error {
	a.expect.begin(id)
	defer a.expect.end(id)
	prev, _ := a.expect.lookup(id, time.Now())
	var x *expectedStop
	if reason != "" {
		if err := a.expect.expect(id, reason, migration, time.Now()); err != nil {
			a.log.Warn("agent: no durable record of an incoming copy", "vm", id, "err", err)
		}
		x, _ = a.expect.lookup(id, time.Now())
	}
	err := create()
	switch {
	case err != nil && prev != nil:
		if rerr := a.expect.expect(id, prev.Reason, prev.Migration, prev.At); rerr != nil {
			a.log.Warn("agent: restoring a VM's expected stop", "vm", id, "err", rerr)
		}
	case err != nil && x != nil:
		a.expect.forget(id, x) // no copy came to be
	case err == nil && x == nil:
		a.expect.forget(id, nil) // a new VM: nothing expected of it
	}
	return err
}
