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

// PutVM stores (or replaces) VM s.Name's definition.
func (s *Store) PutVM(spec hypervisor.Spec) error {
	raw, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketVMs)
		if err != nil {
			return err
		}
		return b.Put([]byte(spec.Name), raw)
	})
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

// DeleteVM forgets VM name's definition (no error if there is none).
func (s *Store) DeleteVM(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		if b == nil {
			return nil
		}
		return b.Delete([]byte(name))
	})
}
