package store

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/migration"
)

var bucketMigrations = []byte("migrations")

// ErrOpenMigration is a MigrationCreate for a VM with an open migration.
var ErrOpenMigration = fmt.Errorf("%w: open migration", ErrConflict)

// Migration commands. The orchestrator writes a migration only through
// MigrationUpdate, conditional on the version it read; an
// administrator's cancel is MigrationCancel, checked against the stored
// record. So a cancel that lands between the orchestrator's read and its
// write makes that write stale, and the orchestrator decides again with
// the cancel in view: nothing is written past a cancel unseen.

// MigrationCreate stores a new migration with the next id ("m1", "m2",
// …), version 1, on condition that its VM has no open migration and,
// for a record naming its source's agent (FromAgent), that the VM is on
// record placed on that agent.
type MigrationCreate struct {
	Record migration.Record `json:"record"`
}

// MigrationUpdate replaces a migration's record on condition that the
// stored version is IfVersion (ErrStale otherwise) and its outcome is
// not yet decided (ErrConflict); the stored version becomes IfVersion+1.
// The update that moves the record to switch-over (the commit) also
// places the VM on the destination's agent in the inventory, in the same
// transaction: there is no moment at which the migration is committed
// and the inventory still names the source.
type MigrationUpdate struct {
	Record    migration.Record `json:"record"`
	IfVersion uint64           `json:"if_version"`
}

// MigrationCancel records an administrator's cancel on condition that
// migration.CheckCancel allows it (ErrConflict wrapping its reason).
type MigrationCancel struct {
	ID string    `json:"id"`
	At time.Time `json:"at"`
}

// MigrationCleanupDone removes one entry from a migration's cleanups
// (the agent carried it out).
type MigrationCleanupDone struct {
	ID    string `json:"id"`
	Entry string `json:"entry"`
}

// MigrationSetRate changes an open migration's bandwidth cap (bytes/s,
// 0: none) before its transfer has ended; the orchestrator passes it on
// to the source.
type MigrationSetRate struct {
	ID      string    `json:"id"`
	MaxRate float64   `json:"max_bandwidth"`
	At      time.Time `json:"at"`
}

// Kind implements Command.
func (*MigrationSetRate) Kind() CommandKind { return "migration.set-bandwidth" }

func (c *MigrationSetRate) apply(tx *bolt.Tx) (any, error) {
	if c.MaxRate < 0 || math.IsNaN(c.MaxRate) || math.IsInf(c.MaxRate, 0) {
		return nil, fmt.Errorf("%w: a bandwidth cap is a non-negative number of bytes/s, not %v", ErrConflict, c.MaxRate)
	}
	m, err := getMigration(tx, c.ID)
	if err != nil {
		return nil, err
	}
	switch {
	case !m.State.Open():
		return nil, fmt.Errorf("%w: migration %s has ended (%s)", ErrConflict, m.ID, m.State)
	case m.Armed() || (m.State != migration.Planned && m.State != migration.Preparing && m.State != migration.Transferring):
		return nil, fmt.Errorf("%w: migration %s is past its transfer (%s)", ErrConflict, m.ID, m.State)
	}
	m.MaxRate, m.Updated = c.MaxRate, c.At
	m.Version++
	return m, putMigration(tx, m)
}

// SetMigrationRate applies MigrationSetRate.
func (s *Store) SetMigrationRate(id string, rate float64, at time.Time) (migration.Record, error) {
	return applyAs[migration.Record](s, &MigrationSetRate{ID: id, MaxRate: rate, At: at})
}

func init() {
	register(func() Command { return &MigrationSetRate{} })
	register(func() Command { return &MigrationCreate{} })
	register(func() Command { return &MigrationUpdate{} })
	register(func() Command { return &MigrationCancel{} })
	register(func() Command { return &MigrationCleanupDone{} })
}

// Kind implements Command.
func (*MigrationCreate) Kind() CommandKind      { return "migration.create" }
func (*MigrationUpdate) Kind() CommandKind      { return "migration.update" }
func (*MigrationCancel) Kind() CommandKind      { return "migration.cancel" }
func (*MigrationCleanupDone) Kind() CommandKind { return "migration.cleanup-done" }

func (c *MigrationCreate) apply(tx *bolt.Tx) (any, error) {
	m := c.Record
	b, err := tx.CreateBucketIfNotExists(bucketMigrations)
	if err != nil {
		return nil, err
	}
	if err := b.ForEach(func(_, v []byte) error {
		var o migration.Record
		if err := json.Unmarshal(v, &o); err != nil {
			return err
		}
		if o.VM == m.VM && o.State.Open() {
			return fmt.Errorf("%w: VM %s already has one (%s)", ErrOpenMigration, m.VM, o.ID)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if m.FromAgent != "" {
		v, err := getVM(tx, m.VM)
		if err != nil {
			return nil, fmt.Errorf("%w: VM %s: %w", ErrConflict, m.VM, err)
		}
		if v.Agent != m.FromAgent {
			return nil, fmt.Errorf("%w: VM %s is placed on %q, not on the source's agent %s", ErrConflict, m.VM, v.Agent, m.FromAgent)
		}
	}
	n, err := b.NextSequence()
	if err != nil {
		return nil, err
	}
	m.ID, m.Version = fmt.Sprintf("m%d", n), 1
	return m, putMigration(tx, m)
}

func (c *MigrationUpdate) apply(tx *bolt.Tx) (any, error) {
	cur, err := getMigration(tx, c.Record.ID)
	if err != nil {
		return nil, err
	}
	if cur.Version != c.IfVersion {
		return nil, fmt.Errorf("%w: migration %s is at version %d, not %d", ErrStale, cur.ID, cur.Version, c.IfVersion)
	}
	if !cur.State.Open() {
		// An outcome is final: nothing rewrites it.
		return nil, fmt.Errorf("%w: migration %s is %s", ErrConflict, cur.ID, cur.State)
	}
	m := c.Record
	m.Version = cur.Version + 1
	if m.State == migration.SwitchOver && cur.State != migration.SwitchOver {
		if err := placeOnCommit(tx, m); err != nil {
			return nil, err
		}
	}
	return m, putMigration(tx, m)
}

func (c *MigrationCancel) apply(tx *bolt.Tx) (any, error) {
	m, err := getMigration(tx, c.ID)
	if err != nil {
		return nil, err
	}
	if err := migration.CheckCancel(m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	m.CancelRequested, m.Updated = true, c.At
	m.Version++
	return m, putMigration(tx, m)
}

func (c *MigrationCleanupDone) apply(tx *bolt.Tx) (any, error) {
	m, err := getMigration(tx, c.ID)
	if err != nil {
		return nil, err
	}
	kept := m.Cleanup[:0:0]
	for _, e := range m.Cleanup {
		if e != c.Entry {
			kept = append(kept, e)
		}
	}
	m.Cleanup = kept
	m.Version++
	return m, putMigration(tx, m)
}

func putMigration(tx *bolt.Tx, m migration.Record) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketMigrations).Put([]byte(m.ID), raw)
}

// CreateMigration applies MigrationCreate.
func (s *Store) CreateMigration(m migration.Record) (migration.Record, error) {
	return applyAs[migration.Record](s, &MigrationCreate{Record: m})
}

// UpdateMigration applies MigrationUpdate: m replaces the record stored
// at version ifVersion.
func (s *Store) UpdateMigration(m migration.Record, ifVersion uint64) (migration.Record, error) {
	return applyAs[migration.Record](s, &MigrationUpdate{Record: m, IfVersion: ifVersion})
}

// CancelMigration applies MigrationCancel.
func (s *Store) CancelMigration(id string, at time.Time) (migration.Record, error) {
	return applyAs[migration.Record](s, &MigrationCancel{ID: id, At: at})
}

// CleanupDone applies MigrationCleanupDone and returns the record as
// written.
func (s *Store) CleanupDone(id, entry string) (migration.Record, error) {
	return applyAs[migration.Record](s, &MigrationCleanupDone{ID: id, Entry: entry})
}

// applyAs applies c and returns its result as an R.
func applyAs[R any](s *Store, c Command) (R, error) {
	var zero R
	v, err := s.Apply(c)
	if err != nil {
		return zero, err
	}
	r, ok := v.(R)
	if !ok {
		return zero, fmt.Errorf("store: %s returned %T", c.Kind(), v)
	}
	return r, nil
}

// Migration returns one migration record.
func (s *Store) Migration(id string) (migration.Record, error) {
	var m migration.Record
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		m, err = getMigration(tx, id)
		return err
	})
	return m, err
}

func getMigration(tx *bolt.Tx, id string) (migration.Record, error) {
	var m migration.Record
	b := tx.Bucket(bucketMigrations)
	if b == nil {
		return m, fmt.Errorf("%w: migration %s", ErrNotFound, id)
	}
	raw := b.Get([]byte(id))
	if raw == nil {
		return m, fmt.Errorf("%w: migration %s", ErrNotFound, id)
	}
	return m, json.Unmarshal(raw, &m)
}

// Migrations lists every migration record.
func (s *Store) Migrations() ([]migration.Record, error) {
	var out []migration.Record
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMigrations)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var m migration.Record
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			out = append(out, m)
			return nil
		})
	})
	return out, err
}
