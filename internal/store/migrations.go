package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketMigrations = []byte("migrations")

// Migration states. The orchestrator moves a migration from planned
// through preparing (destination VM waiting for the stream), transferring
// and switch-over (the commit: from here on the destination is the
// authoritative copy) to completed; before switch-over any failure or a
// cancel rolls it back (rolling-back, then cancelled or failed), with the
// source the authoritative copy throughout.
const (
	MigrationPlanned      = "planned"
	MigrationPreparing    = "preparing"
	MigrationTransferring = "transferring"
	MigrationPostcopy     = "postcopy"
	MigrationSwitchOver   = "switch-over"
	MigrationRollingBack  = "rolling-back"
	MigrationCompleted    = "completed"
	MigrationCancelled    = "cancelled"
	MigrationFailed       = "failed"
)

// MigrationOpen reports whether a migration in state is still in progress.
func MigrationOpen(state string) bool {
	switch state {
	case MigrationCompleted, MigrationCancelled, MigrationFailed:
		return false
	}
	return true
}

// Migration is the persisted record of one migration.
type Migration struct {
	ID       string  `json:"id"`
	VM       string  `json:"vm"`
	From     string  `json:"from"`
	To       string  `json:"to"`
	State    string  `json:"state"`
	Progress float64 `json:"progress"`
	Reason   string  `json:"reason"`
	By       string  `json:"by"` // "admin" or "policy"
	MaxRate  float64 `json:"max_bandwidth,omitempty"`
	// AllowPostcopy lets a pre-copy that has not converged after
	// MaxRounds passes (0: the hypervisor's default) switch to post-copy;
	// without it such a migration is given up.
	AllowPostcopy bool `json:"allow_postcopy,omitempty"`
	MaxRounds     int  `json:"max_rounds,omitempty"`
	// DowntimeLimitMS is the downtime aimed at (0: 300 ms).
	DowntimeLimitMS int64 `json:"downtime_limit_ms,omitempty"`
	// Compress: pages sent again go as deltas or compressed.
	Compress bool      `json:"compress,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`

	// Set by the orchestrator.
	Error string `json:"error,omitempty"` // why it failed or was rolled back
	// CancelRequested makes a cancel survive an MMC restart between the
	// request and the rollback.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// Outcome is the final state a rollback ends in (cancelled or failed).
	Outcome   string    `json:"outcome,omitempty"`
	Started   time.Time `json:"started,omitzero"`    // transfer started
	PausedAt  time.Time `json:"paused_at,omitzero"`  // source paused for the final copy (MMC clock)
	ResumedAt time.Time `json:"resumed_at,omitzero"` // destination resumed (MMC clock)
	// The switch-over's timeline between PausedAt and ResumedAt, for
	// finding where downtime goes (MMC clock): the source wrote the
	// stream's last byte, the destination verified the image, the MMC
	// recorded the commit.
	SentAt time.Time `json:"sent_at,omitzero"`
	// ArmedAt: the source's transfer had completed (its copy paused for
	// good) and the destination was told to resume by itself once its
	// image verifies. From this write on the orchestrator rolls back only
	// on the destination's own report that its copy failed.
	ArmedAt     time.Time `json:"armed_at,omitzero"`
	VerifiedAt  time.Time `json:"verified_at,omitzero"`
	CommittedAt time.Time `json:"committed_at,omitzero"`
	// Postcopy: the migration switched to post-copy (the destination ran
	// from CommittedAt while it pulled the rest of the memory).
	Postcopy bool      `json:"postcopy,omitempty"`
	Finished time.Time `json:"finished,omitzero"`
	// Final report.
	TotalMS     int64  `json:"total_ms,omitempty"`
	DowntimeMS  int64  `json:"downtime_ms,omitempty"`
	BytesOnWire uint64 `json:"bytes_on_wire,omitempty"`
	Transferred uint64 `json:"transferred,omitempty"` // page bytes, before compression
	Rounds      int    `json:"rounds,omitempty"`
	Verified    bool   `json:"verified"`
	// Cleanup lists agents still to be told to drop their side after the
	// outcome was decided (offline at the time): "abort:HOST" or
	// "finish:HOST" or "resume:HOST".
	Cleanup []string `json:"cleanup,omitempty"`
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

// Migration returns one migration record.
func (s *Store) Migration(id string) (Migration, error) {
	var m Migration
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		m, err = getMigration(tx, id)
		return err
	})
	return m, err
}

func getMigration(tx *bolt.Tx, id string) (Migration, error) {
	var m Migration
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
		var err error
		if m, err = getMigration(tx, id); err != nil {
			return err
		}
		if err := fn(&m); err != nil {
			return err
		}
		out, err := json.Marshal(m)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketMigrations).Put([]byte(id), out)
	})
	return m, err
}
