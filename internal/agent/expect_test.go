package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/message"
)

func TestJudgeVM(t *testing.T) {
	seen := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	rec := func(reason string, age time.Duration) *expectedStop {
		return &expectedStop{Reason: reason, Migration: "m1", At: seen.Add(-age)}
	}
	const (
		running   = hypervisor.StateRunning
		paused    = hypervisor.StatePaused
		migrating = hypervisor.StateMigrating
		stopped   = hypervisor.StateStopped
	)
	tests := []struct {
		name   string
		listed bool
		state  hypervisor.State
		x      *expectedStop
		busy   bool
		want   vmFate
	}{
		{"running", true, running, nil, false, vmFate{Clear: true}},
		{"paused by an order", true, paused, nil, false, vmFate{Clear: true}},
		{"source paused in postmigrate after its transfer", true, migrating, nil, false, vmFate{Clear: true}},
		{"incoming copy paused while it receives", true, migrating, rec(expectIncoming, time.Second), false, vmFate{Clear: true}},
		{"failed incoming copy, paused for good", true, paused, rec(expectIncoming, time.Minute), false, vmFate{Clear: true}},
		{"killed", true, stopped, nil, false, vmFate{Alarm: true}},
		{"stopped while deleted", true, stopped, rec(expectDeleted, 0), false, vmFate{Finish: true}},
		{"source stopped while destroyed after the commit", true, stopped, rec(expectMigrated, time.Second), false, vmFate{Finish: true}},
		{"incoming copy stopped while aborted", true, stopped, rec(expectAborted, time.Second), false, vmFate{Finish: true}},
		{"incoming copy died with its migration", true, stopped, rec(expectIncoming, time.Minute), false, vmFate{}},
		{"destroy running now", true, stopped, rec(expectMigrated, 0), true, vmFate{}},
		{"being created: spec written, process not serving yet", true, stopped, nil, true, vmFate{}},
		{"destroyed", false, "", rec(expectDeleted, time.Second), false, vmFate{Clear: true, Forget: true}},
		{"gone, nothing recorded", false, "", nil, false, vmFate{Clear: true}},
		{"incoming copy not created yet", false, "", rec(expectIncoming, 0), true, vmFate{}},
		{"recorded after the List began", false, "", rec(expectIncoming, -time.Millisecond), false, vmFate{}},
		{"stopped long after an order nobody carried out", true, stopped, rec(expectDeleted, expectKeep+time.Second), false, vmFate{Alarm: true, Forget: true}},
		{"running long after a failed destroy", true, running, rec(expectDeleted, expectKeep+time.Second), false, vmFate{Clear: true, Forget: true}},
	}
	for _, tt := range tests {
		if got := judgeVM(tt.listed, tt.state, tt.x, tt.busy, seen); got != tt.want {
			t.Errorf("%s: judgeVM = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// vmStub is a driver of VMs that only have a state. A destroy cut short
// stops the VM and fails, leaving it there, as an agent killed between
// the simulated driver's stopping a VM process and removing its files
// would.
type vmStub struct {
	mu        sync.Mutex
	vms       map[string]hypervisor.State
	cutShort  bool
	destroyed []string
	// during, if set, runs inside Create and Destroy (a monitor pass in
	// the middle of one).
	during func()
}

var errCutShort = errors.New("stub: the agent died mid-destroy")

func newVMStub(ids ...string) *vmStub {
	s := &vmStub{vms: map[string]hypervisor.State{}}
	for _, id := range ids {
		s.vms[id] = hypervisor.StateRunning
	}
	return s
}

func (s *vmStub) set(id string, st hypervisor.State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vms[id] = st
}

func (s *vmStub) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.vms[id]
	return ok
}

func (s *vmStub) Name() string { return "stub" }

func (s *vmStub) List(context.Context) ([]hypervisor.VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []hypervisor.VM
	for id, st := range s.vms {
		out = append(out, hypervisor.VM{ID: id, Name: id, State: st})
	}
	return out, nil
}

func (s *vmStub) Create(_ context.Context, sp hypervisor.Spec) (hypervisor.VM, error) {
	if s.has(sp.Name) {
		return hypervisor.VM{}, fmt.Errorf("stub: VM %s already exists", sp.Name)
	}
	// As the simulated driver: the VM is listed (stopped) before it runs.
	s.set(sp.Name, hypervisor.StateStopped)
	if s.during != nil {
		s.during()
	}
	s.set(sp.Name, hypervisor.StateRunning)
	return hypervisor.VM{ID: sp.Name, Name: sp.Name, State: hypervisor.StateRunning}, nil
}

func (s *vmStub) Stats(context.Context, string) (hypervisor.Stats, error) {
	return hypervisor.Stats{}, nil
}
func (s *vmStub) SetWorkload(context.Context, string, hypervisor.Workload) error { return nil }
func (s *vmStub) Pause(context.Context, string) error                            { return nil }
func (s *vmStub) Resume(context.Context, string) error                           { return nil }

func (s *vmStub) Destroy(_ context.Context, id string) error {
	if !s.has(id) {
		return fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	s.set(id, hypervisor.StateStopped)
	if s.during != nil {
		s.during()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cutShort {
		return errCutShort
	}
	delete(s.vms, id)
	s.destroyed = append(s.destroyed, id)
	return nil
}

// monitorAgent is an agent with just what its monitor uses, keeping its
// state in dir as a real one does.
func monitorAgent(t *testing.T, dir string, d hypervisor.Driver) *Agent {
	t.Helper()
	o, err := openOutbox(filepath.Join(dir, OutboxFile))
	if err != nil {
		t.Fatal(err)
	}
	x, err := openExpectedStops(o.db)
	if err != nil {
		t.Fatal(err)
	}
	return &Agent{cfg: Config{DataDir: dir, Driver: d, HostStats: func() message.HostStats { return message.HostStats{} }},
		log: slog.New(slog.DiscardHandler), events: o, expect: x}
}

// stopAlarms are the vm-stopped alarms in a's outbox.
func stopAlarms(a *Agent) []string {
	a.events.mu.Lock()
	defer a.events.mu.Unlock()
	var out []string
	for _, e := range a.events.pending {
		if e.Kind == "vm-stopped" {
			out = append(out, e.Message)
		}
	}
	return out
}

// An agent that dies while it destroys a VM on an order (the VM's
// process stopped, its files still there) raises no alarm for it after
// the restart: the reason was on disk before the destroy began. The
// restarted agent completes the destroy and forgets the record; a VM that
// is then killed is one alarm, across passes and restarts.
func TestExpectedStopAcrossRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := newVMStub("web", "db")
	a := monitorAgent(t, dir, d)
	a.report(ctx)

	d.cutShort = true
	if err := a.destroyVM(ctx, "web", expectMigrated, "m1"); !errors.Is(err, errCutShort) {
		t.Fatalf("destroy cut short: %v", err)
	}
	a.events.close() // the agent dies

	d.cutShort = false
	a = monitorAgent(t, dir, d)
	defer func() { a.events.close() }()
	for range 2 {
		a.report(ctx)
	}
	if got := stopAlarms(a); len(got) != 0 {
		t.Fatalf("alarms after a restart mid-destroy: %q", got)
	}
	if d.has("web") || len(d.destroyed) != 1 {
		t.Fatalf("the interrupted destroy was not completed: destroyed %v", d.destroyed)
	}
	if ids := a.expect.ids(); len(ids) != 0 {
		t.Fatalf("expected stops kept after the VM went: %v", ids)
	}

	d.set("db", hypervisor.StateStopped) // killed
	a.report(ctx)
	a.report(ctx)
	a.events.close()
	a = monitorAgent(t, dir, d)
	a.report(ctx)
	if got := stopAlarms(a); len(got) != 1 || got[0] != "VM db stopped unexpectedly" {
		t.Fatalf("alarms for a killed VM: %q, want exactly one for db", got)
	}
	if ids := a.expect.ids(); len(ids) != 0 {
		t.Fatalf("expected stops after the restart: %v (web's record came back)", ids)
	}
}

// A monitor pass in the middle of a create or a destroy on an order sees
// the VM stopped (the simulated driver lists a VM from its spec file,
// which is there before the process serves and after it is gone): no
// alarm. A VM of the same name created later is watched again.
func TestNoAlarmMidCreateOrDestroy(t *testing.T) {
	ctx := context.Background()
	d := newVMStub()
	a := monitorAgent(t, t.TempDir(), d)
	defer a.events.close()
	d.during = func() { a.report(ctx) }
	if _, err := a.actVM(ctx, message.Action{Op: "vm.create", Spec: &hypervisor.Spec{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.actVM(ctx, message.Action{Op: "vm.delete", VM: "web"}); err != nil {
		t.Fatal(err)
	}
	if got := stopAlarms(a); len(got) != 0 {
		t.Fatalf("alarms for a create and a delete: %q", got)
	}
	d.during = nil
	if _, err := a.actVM(ctx, message.Action{Op: "vm.create", Spec: &hypervisor.Spec{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	d.set("web", hypervisor.StateStopped)
	a.report(ctx)
	if got := stopAlarms(a); len(got) != 1 {
		t.Fatalf("alarms for the new web's stop: %q, want one", got)
	}

	// A copy whose destroy was cut short is still there, stopped, when an
	// incoming copy of the same name is ordered: the prepare fails, and
	// what was recorded about the old copy stays.
	d.cutShort = true
	if err := a.destroyVM(ctx, "web", expectDeleted, ""); !errors.Is(err, errCutShort) {
		t.Fatalf("destroy cut short: %v", err)
	}
	d.cutShort = false
	err := a.createVM("web", expectIncoming, "m2", func() error {
		_, err := d.Create(ctx, hypervisor.Spec{Name: "web"})
		return err
	})
	if err == nil {
		t.Fatal("created a VM over a stopped one")
	}
	if x, _ := a.expect.lookup("web", time.Now()); x == nil || x.Reason != expectDeleted {
		t.Fatalf("record after the failed prepare: %+v, want the deletion's", x)
	}
	a.report(ctx)
	if got := stopAlarms(a); len(got) != 1 || d.has("web") {
		t.Fatalf("after the failed prepare: alarms %q, web there %v; want the one old alarm and web destroyed", got, d.has("web"))
	}
}

// A monitor pass whose List saw a VM stopped by a destroy that has
// completed (and forgotten its record) before the pass judged it raises
// no alarm: its view of that VM predates the action's end. The next pass
// forgets the action, and a later VM of that name is watched again.
func TestNoAlarmForStaleListAcrossDestroy(t *testing.T) {
	ctx := context.Background()
	d := newVMStub("web")
	a := monitorAgent(t, t.TempDir(), d)
	defer a.events.close()
	seen := time.Now()
	if err := a.destroyVM(ctx, "web", expectDeleted, ""); err != nil {
		t.Fatal(err)
	}
	// What the pass's List returned while the destroy ran.
	a.judge(ctx, "web", true, hypervisor.StateStopped, seen)
	if got := stopAlarms(a); len(got) != 0 {
		t.Fatalf("alarm from a List that began before the destroy ended: %q", got)
	}
	a.report(ctx)
	a.expect.mu.Lock()
	kept := len(a.expect.ended)
	a.expect.mu.Unlock()
	if kept != 0 {
		t.Fatalf("%d ended actions kept after a later pass", kept)
	}
	if _, err := a.actVM(ctx, message.Action{Op: "vm.create", Spec: &hypervisor.Spec{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // the next pass begins after the create ended
	d.set("web", hypervisor.StateStopped)
	a.report(ctx)
	if got := stopAlarms(a); len(got) != 1 {
		t.Fatalf("alarms for the new web's stop: %q, want one", got)
	}
}

// The records are bounded in number, the oldest going first (also on
// disk), and forgotten once their VMs are gone.
func TestExpectedStopsBounded(t *testing.T) {
	dir := t.TempDir()
	a := monitorAgent(t, dir, newVMStub())
	t0 := time.Now().Add(-time.Hour)
	for i := range maxExpect + 10 {
		if err := a.expect.expect(fmt.Sprintf("vm%d", i), expectDeleted, "", t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(a.expect.ids()); n != maxExpect {
		t.Fatalf("%d records, want %d", n, maxExpect)
	}
	if x, _ := a.expect.lookup("vm9", time.Now()); x != nil {
		t.Fatal("the oldest records were kept")
	}
	if x, _ := a.expect.lookup(fmt.Sprintf("vm%d", maxExpect+9), time.Now()); x == nil {
		t.Fatal("the newest record was dropped")
	}
	a.events.close()
	a = monitorAgent(t, dir, newVMStub())
	defer a.events.close()
	if n := len(a.expect.ids()); n != maxExpect {
		t.Fatalf("%d records after a restart, want %d", n, maxExpect)
	}
	a.report(context.Background()) // none of them is there
	if n := len(a.expect.ids()); n != 0 {
		t.Fatalf("%d records of VMs that are gone", n)
	}
}
