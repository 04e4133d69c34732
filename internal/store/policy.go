package store

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

const policyKey = "policy"

// Policy returns the stored policy document (nil if none was ever set).
func (s *Store) Policy() ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte(policyKey)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// PutPolicy stores a policy document. version is read from its "version"
// field; it must be exactly one more than the stored one, so two
// administrators editing at once cannot overwrite each other unnoticed.
func (s *Store) PutPolicy(doc []byte) error {
	var next struct {
		Version uint64 `json:"version"`
	}
	if err := json.Unmarshal(doc, &next); err != nil {
		return fmt.Errorf("store: policy: %w", err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		var cur struct {
			Version uint64 `json:"version"`
		}
		if v := b.Get([]byte(policyKey)); v != nil {
			if err := json.Unmarshal(v, &cur); err != nil {
				return err
			}
		}
		if next.Version != cur.Version+1 {
			return fmt.Errorf("%w: policy version %d, stored %d", ErrExists, next.Version, cur.Version)
		}
		return b.Put([]byte(policyKey), doc)
	})
}
