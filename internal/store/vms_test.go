package store

import (
	"errors"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
)

var vmAt = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)

// TestVMRecords: a VM is created placed on an agent, survives a reopen,
// and its name cannot be created again, on any agent; its definition
// and deletion are conditional on the agent the caller thinks holds it,
// and a VM with an open migration is not deleted.
func TestVMRecords(t *testing.T) {
	s, path := open(t)
	if _, err := s.VM("web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before any: %v", err)
	}
	spec := hypervisor.Spec{Name: "web", Memory: 512 << 20, VCPUs: 2, Machine: "q35",
		Disks: []hypervisor.Disk{{Path: "/var/lib/ferry/web.qcow2", Format: "qcow2", Boot: true}},
		NICs:  []hypervisor.NIC{{Tap: "tap0", MAC: "52:54:00:12:34:56"}}}
	want := VM{Name: "web", Agent: "a1", Spec: spec, Created: vmAt}
	if _, err := s.CreateVM(want); err != nil {
		t.Fatal(err)
	}
	for _, agent := range []string{"a1", "a2"} {
		if _, err := s.CreateVM(VM{Name: "web", Agent: agent, Spec: hypervisor.Spec{Name: "web"}, Created: vmAt}); !errors.Is(err, ErrVMExists) || !errors.Is(err, ErrConflict) {
			t.Fatalf("a second create of web on %s: %v", agent, err)
		}
	}
	if _, err := s.CreateVM(VM{Name: "x", Spec: hypervisor.Spec{Name: "x"}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a create placed nowhere: %v", err)
	}
	s.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.VM("web")
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	sized := spec
	sized.Disks = []hypervisor.Disk{{Path: "/var/lib/ferry/web.qcow2", Format: "qcow2", Boot: true, Size: 1 << 30}}
	if _, err := s2.DefineVM("web", "a2", sized); !errors.Is(err, ErrConflict) {
		t.Fatalf("define by the wrong agent: %v", err)
	}
	if got, err = s2.DefineVM("web", "a1", sized); err != nil || got.Spec.Disks[0].Size != 1<<30 || got.Agent != "a1" {
		t.Fatalf("define: %+v, %v", got, err)
	}
	if err := s2.DeleteVM("web", "a2"); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete after an order to the wrong agent: %v", err)
	}
	m, err := s2.CreateMigration(migration.Record{VM: "web", From: "h1", To: "h2", FromAgent: "a1", ToAgent: "a2", State: migration.Planned})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteVM("web", "a1"); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete during an open migration: %v", err)
	}
	m.State = migration.Failed
	if _, err := s2.UpdateMigration(m, m.Version); err != nil {
		t.Fatal(err)
	}
	if err := s2.DeleteVM("web", "a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.VM("web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s2.DeleteVM("web", "a1"); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
}

// TestLegacyVMAdoptedOnce: a "vms" entry in the old format (a bare
// spec) reads as an unplaced record; VMAdopt places it once, and a
// second adoption, by any agent, is refused and changes nothing.
func TestLegacyVMAdoptedOnce(t *testing.T) {
	s, _ := open(t)
	legacy := `{"name":"old","memory":67108864,"vcpus":1,"workload":{"cpu":0.5}}`
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketVMs)
		if err != nil {
			return err
		}
		return b.Put([]byte("old"), []byte(legacy))
	}); err != nil {
		t.Fatal(err)
	}
	v, err := s.VM("old")
	if err != nil || v.Placed() || v.Name != "old" || v.Spec.Memory != 64<<20 || v.Spec.Workload.CPU != 0.5 {
		t.Fatalf("legacy record: %+v, %v", v, err)
	}
	if all, err := s.VMs(); err != nil || len(all) != 1 || all[0].Name != "old" {
		t.Fatalf("VMs: %+v, %v", all, err)
	}
	if _, err := s.CreateVM(VM{Name: "old", Agent: "a9", Spec: hypervisor.Spec{Name: "old"}}); !errors.Is(err, ErrVMExists) {
		t.Fatalf("create over an unplaced record: %v", err)
	}
	if v, err = s.AdoptVM("old", "a1", vmAt); err != nil || v.Agent != "a1" || !v.Adopted.Equal(vmAt) {
		t.Fatalf("adopt: %+v, %v", v, err)
	}
	for _, agent := range []string{"a1", "a2"} {
		if _, err := s.AdoptVM("old", agent, vmAt.Add(time.Minute)); !errors.Is(err, ErrConflict) {
			t.Fatalf("a second adoption by %s: %v", agent, err)
		}
	}
	if v, _ = s.VM("old"); v.Agent != "a1" || v.Spec.Memory != 64<<20 {
		t.Fatalf("after the refused adoptions: %+v", v)
	}
	if _, err := s.AdoptVM("ghost", "a1", vmAt); !errors.Is(err, ErrNotFound) {
		t.Fatalf("adopting a VM not on record: %v", err)
	}
}

// TestCommitPlacesVM: a migration names its agents and is refused unless
// the VM is placed on its source's agent; the write that commits it
// (switch-over) places the VM on the destination's agent in the same
// transaction — not an earlier write, not a stale one, not a later one.
// A record from before agent ids places it on the approved holder of
// the destination's name.
func TestCommitPlacesVM(t *testing.T) {
	s, _ := open(t)
	if _, err := s.CreateVM(VM{Name: "vm1", Agent: "a1", Spec: hypervisor.Spec{Name: "vm1"}, Created: vmAt}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", FromAgent: "a3", ToAgent: "a2", State: migration.Planned}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a migration from an agent that does not hold the VM: %v", err)
	}
	if _, err := s.CreateMigration(migration.Record{VM: "ghost", From: "h1", To: "h2", FromAgent: "a1", ToAgent: "a2", State: migration.Planned}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a migration of a VM not on record: %v", err)
	}
	m, err := s.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", FromAgent: "a1", ToAgent: "a2", State: migration.Planned})
	if err != nil {
		t.Fatal(err)
	}
	placed := func() string {
		t.Helper()
		v, err := s.VM("vm1")
		if err != nil {
			t.Fatal(err)
		}
		return v.Agent
	}
	for _, st := range []migration.State{migration.Preparing, migration.Transferring, migration.Postcopy} {
		m.State = st
		if m, err = s.UpdateMigration(m, m.Version); err != nil {
			t.Fatal(err)
		}
		if a := placed(); a != "a1" {
			t.Fatalf("in %s the VM is placed on %s, want a1", st, a)
		}
	}
	commit := m
	commit.State = migration.SwitchOver
	if _, err := s.UpdateMigration(commit, m.Version-1); !errors.Is(err, ErrStale) {
		t.Fatalf("a stale commit: %v", err)
	}
	if a := placed(); a != "a1" {
		t.Fatalf("a refused commit moved the VM to %s", a)
	}
	if m, err = s.UpdateMigration(commit, m.Version); err != nil {
		t.Fatal(err)
	}
	if a := placed(); a != "a2" {
		t.Fatalf("after the commit the VM is placed on %s, want a2", a)
	}
	// Writes after the commit (the outcome) do not place it again.
	m.State, m.ToAgent = migration.Completed, "a9"
	if _, err = s.UpdateMigration(m, m.Version); err != nil {
		t.Fatal(err)
	}
	if a := placed(); a != "a2" {
		t.Fatalf("a write after the commit moved the VM to %s", a)
	}

	// A record without agent ids: the approved holder of the name.
	mustCreate(t, s, "b2", "h3")
	if _, err := s.DecideAgent(AgentDecide{ID: "b2", To: StateApproved, By: "admin", At: vmAt, Credentials: creds(2)}); err != nil {
		t.Fatal(err)
	}
	old, err := s.CreateMigration(migration.Record{VM: "vm1", From: "h2", To: "h3", State: migration.Transferring})
	if err != nil {
		t.Fatal(err)
	}
	old.State = migration.SwitchOver
	if _, err := s.UpdateMigration(old, old.Version); err != nil {
		t.Fatal(err)
	}
	if a := placed(); a != "b2" {
		t.Fatalf("a legacy commit placed the VM on %q, want b2 (holder of h3)", a)
	}
}
