package mmc

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
)

// The orchestrator's driver against a real store and a scripted pair of
// agents (the protocol's decisions have their own tests in
// internal/migration): it carries the machine's commands out in order,
// every order matches the record as stored when it leaves, a migration
// found open at startup is resumed, and posting news to a drive never
// blocks.

type fakeFleet struct {
	t  *testing.T
	st *store.Store

	mu       sync.Mutex
	orders   []string // "op host"
	statuses map[string]int
	endings  []migration.Record
	resumes  int
	noteWait chan struct{} // when set, note blocks until it is closed
}

func (f *fakeFleet) order(ctx context.Context, rec migration.Record, host string, op migration.Op, o migration.Order) (*migration.Report, error) {
	cur, err := f.st.Migration(rec.ID)
	if err != nil {
		return nil, err
	}
	// What an agent is told, the record already says.
	switch op {
	case migration.OpStart:
		if cur.State != migration.Transferring || cur.CancelRequested {
			f.t.Errorf("start sent with the record %s (cancel %v)", cur.State, cur.CancelRequested)
		}
	case migration.OpArm:
		if !cur.Armed() {
			f.t.Errorf("arm sent before the armed write")
		}
	case migration.OpCommit, migration.OpFinish:
		if cur.State != migration.SwitchOver {
			f.t.Errorf("%s sent with the record %s", op, cur.State)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.orders = append(f.orders, string(op)+" "+host)
	r := &migration.Report{Phase: migration.PhaseTransferring, Status: hypervisor.MigrationStatus{State: hypervisor.MigActive, Total: 100, Remaining: 50}}
	switch {
	case op == migration.OpStatus && host == rec.From:
		// The source completes on its second status.
		f.statuses[host]++
		if f.statuses[host] >= 2 {
			r = &migration.Report{Phase: migration.PhaseCompleted, Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted, Total: 100}}
		}
	case op == migration.OpStatus && host == rec.To:
		if f.statuses[rec.From] >= 2 {
			r = &migration.Report{Phase: migration.PhaseCompleted, Status: hypervisor.MigrationStatus{State: hypervisor.MigCompleted, Verified: true, Finished: time.Now()}}
		}
	case op == migration.OpCommit:
		r = &migration.Report{Phase: migration.PhaseCommitted, At: time.Now().UnixNano()}
	}
	return r, nil
}

func (f *fakeFleet) reachable(migration.Record, string) bool { return true }
func (f *fakeFleet) introduce(context.Context, migration.Record, string, string) (time.Duration, time.Duration, string, string, error) {
	return time.Millisecond, time.Millisecond, "direct", "", nil
}
func (f *fakeFleet) upgrade(context.Context, <-chan struct{}, migration.Record, string, string, func(string)) {
}
func (f *fakeFleet) note(context.Context, string, string) {
	f.mu.Lock()
	w := f.noteWait
	f.mu.Unlock()
	if w != nil {
		<-w
	}
}
func (f *fakeFleet) env(migration.Record) migration.Env {
	return migration.Env{SrcOnline: true, DstOnline: true, Spec: &hypervisor.Spec{Name: "vm1", Memory: 1 << 20}}
}
func (f *fakeFleet) resumed(migration.Record) {
	f.mu.Lock()
	f.resumes++
	f.mu.Unlock()
}
func (f *fakeFleet) recorded(migration.Record) {}
func (f *fakeFleet) ended(_ context.Context, m migration.Record) {
	f.mu.Lock()
	f.endings = append(f.endings, m)
	f.mu.Unlock()
}

func newDriverTest(t *testing.T) (*store.Store, *fakeFleet) {
	st, err := store.Open(filepath.Join(t.TempDir(), "mmc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, &fakeFleet{t: t, st: st, statuses: map[string]int{}}
}

func runOrch(t *testing.T, st *store.Store, f *fakeFleet) *orchestrator {
	o := newOrchestrator(st, f, slog.New(slog.DiscardHandler), time.Now)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		o.mu.Lock()
		started := o.ctx != nil
		o.mu.Unlock()
		if started || time.Now().After(deadline) {
			return o
		}
	}
}

func waitOutcome(t *testing.T, st *store.Store, id string) migration.Record {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m, err := st.Migration(id); err == nil && !m.State.Open() {
			return m
		}
	}
	m, _ := st.Migration(id)
	t.Fatalf("no outcome: %+v", m)
	return m
}

func TestOrchestratorDrivesToCompletion(t *testing.T) {
	st, f := newDriverTest(t)
	o := runOrch(t, st, f)
	m, err := st.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", State: migration.Planned, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	o.launch(m.ID, false)
	done := waitOutcome(t, st, m.ID)
	if done.State != migration.Completed || !done.Verified || done.ArmedAt.IsZero() || done.CommittedAt.IsZero() {
		t.Fatalf("outcome %+v", done)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.endings) != 1 || f.endings[0].State != migration.Completed {
		t.Fatalf("ended %d times: %+v", len(f.endings), f.endings)
	}
	// The orders' order: prepare, start, …, arm, commit, finish.
	idx := func(s string) int { return slices.Index(f.orders, s) }
	for _, pair := range [][2]string{{"migrate.prepare h2", "migrate.start h1"}, {"migrate.start h1", "migrate.arm h2"},
		{"migrate.arm h2", "migrate.commit h2"}, {"migrate.commit h2", "migrate.finish h1"}} {
		if a, b := idx(pair[0]), idx(pair[1]); a < 0 || b < 0 || a > b {
			t.Fatalf("%s not before %s: %v", pair[0], pair[1], f.orders)
		}
	}
}

// A migration found open when the orchestrator starts is counted with
// the policy engine and carried on from where its record stands.
func TestOrchestratorResumesOpenMigrations(t *testing.T) {
	st, f := newDriverTest(t)
	m, err := st.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", State: migration.Planned, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	m.State, m.Started = migration.Transferring, time.Now()
	if _, err := st.UpdateMigration(m, m.Version); err != nil {
		t.Fatal(err)
	}
	runOrch(t, st, f)
	if done := waitOutcome(t, st, m.ID); done.State != migration.Completed {
		t.Fatalf("outcome %+v", done)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.resumes != 1 || slices.Contains(f.orders, "migrate.start h1") || slices.Contains(f.orders, "migrate.prepare h2") {
		t.Fatalf("resumed %d, orders %v (a transfer found running is not started again)", f.resumes, f.orders)
	}
}

// News for a drive (agents' posts, a cancel) never blocks the sender,
// even while the drive is busy carrying out a command.
func TestOrchestratorNotifyNeverBlocks(t *testing.T) {
	st, f := newDriverTest(t)
	f.noteWait = make(chan struct{})
	o := runOrch(t, st, f)
	release := sync.OnceFunc(func() { close(f.noteWait) })
	t.Cleanup(release) // before the orchestrator's own cleanup (LIFO)
	m, err := st.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", State: migration.Planned, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	// The migration is cancelled before it starts: its rollback posts a
	// note, which blocks the drive.
	if _, err := st.CancelMigration(m.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	o.launch(m.ID, false)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if cur, _ := st.Migration(m.ID); cur.State == migration.RollingBack {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no rollback")
		}
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range 10 * maxMail {
			o.notify(m.ID, migration.Posted{Host: "h1", Role: migration.Source, Phase: migration.Phase(fmt.Sprint(i))})
		}
	}()
	select {
	case <-sent:
	case <-time.After(5 * time.Second):
		t.Fatal("notify blocked on a busy drive")
	}
	release()
	if done := waitOutcome(t, st, m.ID); done.State != migration.Cancelled {
		t.Fatalf("outcome %+v", done)
	}
}
