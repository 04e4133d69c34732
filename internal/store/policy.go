package store

import (
	"bytes"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

const policyKey = "policy"

// Policy returns the stored policy document (nil if none was ever set).
func (s *Store) Policy() ([]byte, error) {
	var out []byte
	err := s.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte(policyKey)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// PolicyPut stores a policy document. Its version is read from its
// "version" field; it must be exactly one more than the stored one
// (ErrStale otherwise), so two administrators editing at once cannot
// overwrite each other unnoticed. The document is stored compacted, so
// that its bytes do not depend on how the command was carried.
type PolicyPut struct {
	Doc json.RawMessage `json:"doc"`
}

func init() { register(func() Command { return &PolicyPut{} }) }

// Kind implements Command.
func (*PolicyPut) Kind() CommandKind { return "policy.put" }

func (c *PolicyPut) apply(tx *bolt.Tx) (any, error) {
	var next, cur struct {
		Version uint64 `json:"version"`
	}
	if err := json.Unmarshal(c.Doc, &next); err != nil {
		return nil, fmt.Errorf("%w: policy: %w", ErrConflict, err)
	}
	b := tx.Bucket(bucketMeta)
	if v := b.Get([]byte(policyKey)); v != nil {
		if err := json.Unmarshal(v, &cur); err != nil {
			return nil, err
		}
	}
	if next.Version != cur.Version+1 {
		return nil, fmt.Errorf("%w: policy version %d, stored %d", ErrStale, next.Version, cur.Version)
	}
	var doc bytes.Buffer
	if err := json.Compact(&doc, c.Doc); err != nil {
		return nil, fmt.Errorf("%w: policy: %w", ErrConflict, err)
	}
	return nil, b.Put([]byte(policyKey), doc.Bytes())
}

// PutPolicy applies PolicyPut.
func (s *Store) PutPolicy(doc []byte) error {
	_, err := s.Apply(&PolicyPut{Doc: doc})
	return err
}
