package store

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// VM definitions: what a VM is made of (memory, vCPUs, machine, disks,
// NICs), kept by the MMC from its creation to its deletion, so that a
// migration's destination starts its copy from the definition rather
// than from what the source host happens to report.

var bucketVMs = []byte("vms")

// VMPut stores (or replaces) VM Spec.Name's definition.
type VMPut struct {
	Spec hypervisor.Spec `json:"spec"`
}

// VMDelete forgets VM Name's definition (no error if there is none).
type VMDelete struct {
	Name string `json:"name"`
}

func init() {
	register(func() Command { return &VMPut{} })
	register(func() Command { return &VMDelete{} })
}

// Kind implements Command.
func (*VMPut) Kind() CommandKind    { return "vm.put" }
func (*VMDelete) Kind() CommandKind { return "vm.delete" }

func (c *VMPut) apply(tx *bolt.Tx) (any, error) {
	raw, err := json.Marshal(c.Spec)
	if err != nil {
		return nil, err
	}
	b, err := tx.CreateBucketIfNotExists(bucketVMs)
	if err != nil {
		return nil, err
	}
	return nil, b.Put([]byte(c.Spec.Name), raw)
}

func (c *VMDelete) apply(tx *bolt.Tx) (any, error) {
	b := tx.Bucket(bucketVMs)
	if b == nil {
		return nil, nil
	}
	return nil, b.Delete([]byte(c.Name))
}

// PutVM applies VMPut.
func (s *Store) PutVM(spec hypervisor.Spec) error {
	_, err := s.Apply(&VMPut{Spec: spec})
	return err
}

// VM returns VM name's definition (ErrNotFound if there is none).
func (s *Store) VM(name string) (hypervisor.Spec, error) {
	var spec hypervisor.Spec
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		if b == nil {
			return ErrNotFound
		}
		raw := b.Get([]byte(name))
		if raw == nil {
			return ErrNotFound
		}
		if err := json.Unmarshal(raw, &spec); err != nil {
			return fmt.Errorf("store: VM %s: %w", name, err)
		}
		return nil
	})
	return spec, err
}

// DeleteVM applies VMDelete.
func (s *Store) DeleteVM(name string) error {
	_, err := s.Apply(&VMDelete{Name: name})
	return err
}
