package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
)

// The MMC's inventory of VMs: for each VM its definition (memory, vCPUs,
// machine, disks, NICs) and its placement — the agent whose host holds
// the VM. Placement is the MMC's own record: it is written by the VM
// life-cycle commands (VMCreate, VMDelete), moved by a committed
// migration (MigrationUpdate, in the commit's own transaction), and set
// once for a record from before placements existed (VMAdopt). What an
// agent reports never moves it; the MMC checks reports against it.
//
// Hosts are named here by agent id, not by host name: a name is what an
// agent claims, and another agent may hold it after a revocation.

var bucketVMs = []byte("vms")

// VM is one VM's record.
type VM struct {
	Name string `json:"name"`
	// Agent is the id of the agent whose host holds the VM; "" for a
	// record written before placements existed (a bare hypervisor.Spec
	// in the database), until VMAdopt places it.
	Agent   string          `json:"agent,omitempty"`
	Spec    hypervisor.Spec `json:"spec"`
	Created time.Time       `json:"created,omitzero"`
	// Adopted is when VMAdopt placed a legacy record (zero otherwise).
	Adopted time.Time `json:"adopted,omitzero"`
}

// Placed reports whether the record names a host.
func (v VM) Placed() bool { return v.Agent != "" }

// ErrVMExists is a VMCreate for a name already on record.
var ErrVMExists = fmt.Errorf("%w: a VM of that name is on record", ErrConflict)

// VMCreate records a new VM placed on Agent, on condition that no VM of
// that name is on record (placed or not): two creations of one name
// racing, the first wins, and the second's order is never sent.
type VMCreate struct {
	VM VM `json:"vm"`
}

// VMDefine replaces VM Name's definition (e.g. with the disk sizes the
// driver found) on condition that it is on record placed on IfAgent.
type VMDefine struct {
	Name    string          `json:"name"`
	IfAgent string          `json:"if_agent"`
	Spec    hypervisor.Spec `json:"spec"`
}

// VMDelete forgets VM Name, on condition that it has no open migration
// and, if IfAgent is set, that it is placed on IfAgent (the agent the
// delete order went to: if a migration moved it meanwhile, the record
// stays). No error if there is no record.
type VMDelete struct {
	Name    string `json:"name"`
	IfAgent string `json:"if_agent,omitempty"`
}

// VMAdopt places a record from before placements existed on Agent, on
// condition that it is not placed yet: one time only, whatever reports
// come later.
type VMAdopt struct {
	Name  string    `json:"name"`
	Agent string    `json:"agent"`
	At    time.Time `json:"at"`
}

// The kind "vm.put" (a bare definition, no placement) is retired: never
// reuse it.

func init() {
	register(func() Command { return &VMCreate{} })
	register(func() Command { return &VMDefine{} })
	register(func() Command { return &VMDelete{} })
	register(func() Command { return &VMAdopt{} })
}

// Kind implements Command.
func (*VMCreate) Kind() CommandKind { return "vm.create" }
func (*VMDefine) Kind() CommandKind { return "vm.define" }
func (*VMDelete) Kind() CommandKind { return "vm.delete" }
func (*VMAdopt) Kind() CommandKind  { return "vm.adopt" }

func (c *VMCreate) apply(tx *bolt.Tx) (any, error) {
	v := c.VM
	if v.Name == "" || v.Name != v.Spec.Name || v.Agent == "" {
		return nil, fmt.Errorf("%w: a VM needs a name, its spec's, and an agent", ErrConflict)
	}
	b, err := tx.CreateBucketIfNotExists(bucketVMs)
	if err != nil {
		return nil, err
	}
	if b.Get([]byte(v.Name)) != nil {
		return nil, fmt.Errorf("%w: %s", ErrVMExists, v.Name)
	}
	return v, putVM(b, v)
}

func (c *VMDefine) apply(tx *bolt.Tx) (any, error) {
	v, err := getVM(tx, c.Name)
	if err != nil {
		return nil, err
	}
	if v.Agent != c.IfAgent || c.Spec.Name != c.Name {
		return nil, fmt.Errorf("%w: VM %s is placed on %q, not %q", ErrConflict, c.Name, v.Agent, c.IfAgent)
	}
	v.Spec = c.Spec
	return v, putVM(tx.Bucket(bucketVMs), v)
}

func (c *VMDelete) apply(tx *bolt.Tx) (any, error) {
	v, err := getVM(tx, c.Name)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if c.IfAgent != "" && v.Agent != c.IfAgent {
		return nil, fmt.Errorf("%w: VM %s is placed on %q, not %q", ErrConflict, c.Name, v.Agent, c.IfAgent)
	}
	if id, open, err := openMigrationOf(tx, c.Name); err != nil {
		return nil, err
	} else if open {
		return nil, fmt.Errorf("%w: VM %s has an open migration (%s)", ErrConflict, c.Name, id)
	}
	return nil, tx.Bucket(bucketVMs).Delete([]byte(c.Name))
}

func (c *VMAdopt) apply(tx *bolt.Tx) (any, error) {
	v, err := getVM(tx, c.Name)
	if err != nil {
		return nil, err
	}
	if v.Placed() {
		return nil, fmt.Errorf("%w: VM %s is already placed on %s", ErrConflict, c.Name, v.Agent)
	}
	if c.Agent == "" {
		return nil, fmt.Errorf("%w: adopting %s by no agent", ErrConflict, c.Name)
	}
	v.Agent, v.Adopted = c.Agent, c.At
	return v, putVM(tx.Bucket(bucketVMs), v)
}

// placeOnCommit is the inventory's part of a migration's commit, run in
// the transaction of the MigrationUpdate that moves m to switch-over:
// from then on the destination's copy is the VM. The agent is the
// record's ToAgent, or (a record from before agent ids) the approved
// agent holding the name To. A VM not on record stays so.
func placeOnCommit(tx *bolt.Tx, m migration.Record) error {
	v, err := getVM(tx, m.VM)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	to := m.ToAgent
	if to == "" {
		holder, ok, err := nameHolder(tx, m.To, "")
		if err != nil || !ok {
			return err
		}
		to = holder
	}
	v.Agent = to
	return putVM(tx.Bucket(bucketVMs), v)
}

// openMigrationOf finds an open migration of vm.
func openMigrationOf(tx *bolt.Tx, vm string) (string, bool, error) {
	b := tx.Bucket(bucketMigrations)
	if b == nil {
		return "", false, nil
	}
	var id string
	err := b.ForEach(func(_, raw []byte) error {
		var o migration.Record
		if err := json.Unmarshal(raw, &o); err != nil {
			return err
		}
		if id == "" && o.VM == vm && o.State.Open() {
			id = o.ID
		}
		return nil
	})
	return id, id != "", err
}

func putVM(b *bolt.Bucket, v VM) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(v.Name), raw)
}

func getVM(tx *bolt.Tx, name string) (VM, error) {
	b := tx.Bucket(bucketVMs)
	if b == nil {
		return VM{}, fmt.Errorf("%w: VM %s", ErrNotFound, name)
	}
	raw := b.Get([]byte(name))
	if raw == nil {
		return VM{}, fmt.Errorf("%w: VM %s", ErrNotFound, name)
	}
	return decodeVM(name, raw)
}

// decodeVM reads a record in either format: a VM (it has a "spec"), or
// the bare hypervisor.Spec written before placements existed, which
// becomes an unplaced record.
func decodeVM(name string, raw []byte) (VM, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return VM{}, fmt.Errorf("store: VM %s: %w", name, err)
	}
	if spec, ok := probe["spec"]; ok && !bytes.Equal(spec, []byte("null")) {
		var v VM
		if err := json.Unmarshal(raw, &v); err != nil {
			return VM{}, fmt.Errorf("store: VM %s: %w", name, err)
		}
		return v, nil
	}
	var spec hypervisor.Spec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return VM{}, fmt.Errorf("store: VM %s (legacy definition): %w", name, err)
	}
	return VM{Name: name, Spec: spec}, nil
}

// CreateVM applies VMCreate.
func (s *Store) CreateVM(v VM) (VM, error) { return applyAs[VM](s, &VMCreate{VM: v}) }

// DefineVM applies VMDefine.
func (s *Store) DefineVM(name, ifAgent string, spec hypervisor.Spec) (VM, error) {
	return applyAs[VM](s, &VMDefine{Name: name, IfAgent: ifAgent, Spec: spec})
}

// AdoptVM applies VMAdopt.
func (s *Store) AdoptVM(name, agent string, at time.Time) (VM, error) {
	return applyAs[VM](s, &VMAdopt{Name: name, Agent: agent, At: at})
}

// VM returns VM name's record (ErrNotFound if there is none).
func (s *Store) VM(name string) (VM, error) {
	var v VM
	err := s.view(func(tx *bolt.Tx) (err error) {
		v, err = getVM(tx, name)
		return err
	})
	return v, err
}

// VMs returns every VM record.
func (s *Store) VMs() ([]VM, error) {
	var out []VM
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, raw []byte) error {
			v, err := decodeVM(string(k), raw)
			if err != nil {
				return err
			}
			out = append(out, v)
			return nil
		})
	})
	return out, err
}

// DeleteVM applies VMDelete.
func (s *Store) DeleteVM(name, ifAgent string) error {
	_, err := s.Apply(&VMDelete{Name: name, IfAgent: ifAgent})
	return err
}
