package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketMigrations = []byte("migrations")

// Migration states. The orchestrator (issue 6) moves a migration from
// planned through preparing, transferring and switch-over to completed,
// cancelled or failed.
const (
	MigrationPlanned   = "planned"
	MigrationCancelled = "cancelled"
)

// Migration is the persisted record of one migration.
type Migration struct {
	ID       string    `json:"id"`
	VM       string    `json:"vm"`
	From     string    `json:"from"`
	To       string    `json:"to"`
	State    string    `json:"state"`
	Progress float64   `json:"progress"`
	Reason   string    `json:"reason"`
	By       string    `json:"by"` // "admin" or "policy"
	MaxRate  float64   `json:"max_bandwidth,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// CreateMigration stores a new migration with the next id ("m1", "m2", …).
func (s *Store) CreateMigration(m Migration) (Migration, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketMigrations)
		if err != nil {
			return err
		}
		n, err := b.NextSequence()
		if err != nil {
			return err
		}
		m.ID = fmt.Sprintf("m%d", n)
		raw, err := json.Marshal(m)
		if err != nil {
			return err
		}
		return b.Put([]byte(m.ID), raw)
	})
	return m, err
}

// Migrations lists every migration record.
func (s *Store) Migrations() ([]Migration, error) {
	var out []Migration
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMigrations)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var m Migration
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			out = append(out, m)
			return nil
		})
	})
	return out, err
}

// UpdateMigration applies fn to a stored migration in one transaction.
func (s *Store) UpdateMigration(id string, fn func(*Migration) error) (Migration, error) {
	var m Migration
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMigrations)
		if b == nil {
			return fmt.Errorf("%w: migration %s", ErrNotFound, id)
		}
		raw := b.Get([]byte(id))
		if raw == nil {
			return fmt.Errorf("%w: migration %s", ErrNotFound, id)
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		if err := fn(&m); err != nil {
			return err
		}
		out, err := json.Marshal(m)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), out)
	})
	return m, err
}
