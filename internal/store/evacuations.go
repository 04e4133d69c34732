package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/evacuation"
)

var bucketEvacuations = []byte("evacuations")

// Evacuation commands: a group of migrations (package evacuation) is
// created whole, with its plan; the MMC's driver rewrites it only
// through EvacuationUpdate, conditional on the version it read, and an
// administrator's cancel is EvacuationCancel — so a cancel landing
// between the driver's read and its write makes that write stale, as for
// migrations.

// EvacuationCreate stores a new group with the next id ("e1", "e2", …)
// and version 1.
type EvacuationCreate struct {
	Record evacuation.Record `json:"record"`
}

// EvacuationUpdate replaces a group's record on condition that the
// stored version is IfVersion (ErrStale otherwise) and the group is
// still running (ErrConflict).
type EvacuationUpdate struct {
	Record    evacuation.Record `json:"record"`
	IfVersion uint64            `json:"if_version"`
}

// EvacuationCancel records an administrator's cancel of a running group
// (ErrConflict once it has finished).
type EvacuationCancel struct {
	ID string    `json:"id"`
	At time.Time `json:"at"`
}

func init() {
	register(func() Command { return &EvacuationCreate{} })
	register(func() Command { return &EvacuationUpdate{} })
	register(func() Command { return &EvacuationCancel{} })
}

// Kind implements Command.
func (*EvacuationCreate) Kind() CommandKind { return "evacuation.create" }
func (*EvacuationUpdate) Kind() CommandKind { return "evacuation.update" }
func (*EvacuationCancel) Kind() CommandKind { return "evacuation.cancel" }

func (c *EvacuationCreate) apply(tx *bolt.Tx) (any, error) {
	b, err := tx.CreateBucketIfNotExists(bucketEvacuations)
	if err != nil {
		return nil, err
	}
	n, err := b.NextSequence()
	if err != nil {
		return nil, err
	}
	r := c.Record
	r.ID, r.Version = fmt.Sprintf("e%d", n), 1
	return r, putEvacuation(tx, r)
}

func (c *EvacuationUpdate) apply(tx *bolt.Tx) (any, error) {
	cur, err := getEvacuation(tx, c.Record.ID)
	if err != nil {
		return nil, err
	}
	if cur.Version != c.IfVersion {
		return nil, fmt.Errorf("%w: evacuation %s is at version %d, not %d", ErrStale, cur.ID, cur.Version, c.IfVersion)
	}
	if !cur.State.Open() {
		return nil, fmt.Errorf("%w: evacuation %s is %s", ErrConflict, cur.ID, cur.State)
	}
	r := c.Record
	r.Version = cur.Version + 1
	return r, putEvacuation(tx, r)
}

func (c *EvacuationCancel) apply(tx *bolt.Tx) (any, error) {
	r, err := getEvacuation(tx, c.ID)
	if err != nil {
		return nil, err
	}
	if !r.State.Open() {
		return nil, fmt.Errorf("%w: evacuation %s is %s already", ErrConflict, r.ID, r.State)
	}
	r.CancelRequested, r.Updated = true, c.At
	r.Version++
	return r, putEvacuation(tx, r)
}

func putEvacuation(tx *bolt.Tx, r evacuation.Record) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketEvacuations).Put([]byte(r.ID), raw)
}

func getEvacuation(tx *bolt.Tx, id string) (evacuation.Record, error) {
	var r evacuation.Record
	b := tx.Bucket(bucketEvacuations)
	if b == nil {
		return r, fmt.Errorf("%w: evacuation %s", ErrNotFound, id)
	}
	raw := b.Get([]byte(id))
	if raw == nil {
		return r, fmt.Errorf("%w: evacuation %s", ErrNotFound, id)
	}
	return r, json.Unmarshal(raw, &r)
}

// CreateEvacuation applies EvacuationCreate.
func (s *Store) CreateEvacuation(r evacuation.Record) (evacuation.Record, error) {
	return applyAs[evacuation.Record](s, &EvacuationCreate{Record: r})
}

// UpdateEvacuation applies EvacuationUpdate.
func (s *Store) UpdateEvacuation(r evacuation.Record, ifVersion uint64) (evacuation.Record, error) {
	return applyAs[evacuation.Record](s, &EvacuationUpdate{Record: r, IfVersion: ifVersion})
}

// CancelEvacuation applies EvacuationCancel.
func (s *Store) CancelEvacuation(id string, at time.Time) (evacuation.Record, error) {
	return applyAs[evacuation.Record](s, &EvacuationCancel{ID: id, At: at})
}

// Evacuation returns one group.
func (s *Store) Evacuation(id string) (evacuation.Record, error) {
	var r evacuation.Record
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		r, err = getEvacuation(tx, id)
		return err
	})
	return r, err
}

// Evacuations lists every group, in id order of creation.
func (s *Store) Evacuations() ([]evacuation.Record, error) {
	var out []evacuation.Record
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvacuations)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var r evacuation.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}
