// Package store is the MMC's embedded database (go.etcd.io/bbolt): agents
// and their credentials, join tokens, the audit log, logs and alarms,
// the policy document, VM definitions, migration records and cluster
// metadata.
//
// Values are JSON so that an operator can inspect a copy with standard
// tools. Reads are methods (Agent, Tokens, Events, …). Every write is a
// typed Command (command.go) applied through Store.Apply in one bbolt
// transaction: it carries everything its effect depends on (times
// included), states its conditions explicitly and checks them inside
// that transaction, and is encodable, so that MMC replication
// (hashicorp/raft) can put the same commands in its log and every
// replica's FSM apply them with the same result. The write methods
// (CreateAgent, UseToken, AddEvent, …) only build a command and apply it;
// no write takes a closure.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta   = []byte("meta")
	bucketAgents = []byte("agents")
	bucketTokens = []byte("tokens")
	bucketAudit  = []byte("audit")
)

// ErrNotFound is returned for an unknown id.
var ErrNotFound = errors.New("store: not found")

// Store is an open database. It is safe for concurrent use.
type Store struct {
	path string
	// mu guards db: every transaction holds it shared; Restore holds it
	// exclusively while it swaps the file underneath, so a reader never
	// sees a closed handle or a half-replaced database.
	mu sync.RWMutex
	db *bolt.DB
	// broken is why db is nil: a Restore that replaced the file but
	// could not reopen it. Every later call returns it.
	broken error
	// applier, when set, is where Apply sends commands (SetApplier).
	applier atomic.Pointer[Applier]
}

// Open opens (creating if needed) the database at path, mode 0600.
func Open(path string) (*Store, error) {
	// The database holds every agent's K: refuse one others could read.
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("store: %s has mode %v; it must be 0600", path, st.Mode().Perm())
	}
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	return &Store{path: path, db: db}, nil
}

// openDB opens the bbolt file at path and creates what a fresh database
// lacks (Open and Restore share it).
func openDB(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w (is another MMC using this data directory?)", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketAgents, bucketTokens, bucketAudit} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := indexAgentNames(tx); err != nil {
			return err
		}
		return foldEventsSeen(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init: %w", err)
	}
	return db, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return s.broken
	}
	return s.db.Close()
}

// view runs fn in a read transaction, holding mu shared.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return s.broken
	}
	return s.db.View(fn)
}

// update runs fn in a write transaction, holding mu shared (bbolt
// serialises writers itself).
func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return s.broken
	}
	return s.db.Update(fn)
}

// Meta returns the metadata value for key ("" if unset).
func (s *Store) Meta(key string) (string, error) {
	var v string
	err := s.view(func(tx *bolt.Tx) error {
		v = string(tx.Bucket(bucketMeta).Get([]byte(key)))
		return nil
	})
	return v, err
}

// MetaEnsure sets Key to Value unless it is already set; its result is
// the value in force (for ids created once, on first start).
type MetaEnsure struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func init() { register(func() Command { return &MetaEnsure{} }) }

// Kind implements Command.
func (*MetaEnsure) Kind() CommandKind { return "meta.ensure" }

func (c *MetaEnsure) apply(tx *bolt.Tx) (any, error) {
	b := tx.Bucket(bucketMeta)
	if cur := b.Get([]byte(c.Key)); cur != nil {
		return string(cur), nil
	}
	return c.Value, b.Put([]byte(c.Key), []byte(c.Value))
}

// EnsureMeta applies MetaEnsure and returns the value in force.
func (s *Store) EnsureMeta(key, val string) (string, error) {
	return applyAs[string](s, &MetaEnsure{Key: key, Value: val})
}

func get[T any](tx *bolt.Tx, bucket []byte, id string) (T, error) {
	var v T
	raw := tx.Bucket(bucket).Get([]byte(id))
	if raw == nil {
		return v, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("store: decode %s/%s: %w", bucket, id, err)
	}
	return v, nil
}

func put(tx *bolt.Tx, bucket []byte, id string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put([]byte(id), raw)
}

func list[T any](s *Store, bucket []byte) ([]T, error) {
	var out []T
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, raw []byte) error {
			var v T
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("store: decode %s/%s: %w", bucket, k, err)
			}
			out = append(out, v)
			return nil
		})
	})
	return out, err
}

func seqKey(n uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	return b[:]
}

// appendSeq stores the value entry(n) builds under the bucket's next
// sequence number n, and returns n.
func appendSeq(b *bolt.Bucket, entry func(n uint64) any) (uint64, error) {
	n, err := b.NextSequence()
	if err != nil {
		return 0, err
	}
	raw, err := json.Marshal(entry(n))
	if err != nil {
		return 0, err
	}
	return n, b.Put(seqKey(n), raw)
}
