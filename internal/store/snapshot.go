package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// A replica of the store (hashicorp/raft's FSM) must copy its whole state
// into a snapshot while commands keep applying, and replace its whole
// state with a snapshot a leader sends. Snapshot is a bbolt read
// transaction: a consistent copy of the file as of one commit, written
// out later while writers go on. Restore writes the new database beside
// the old one, checks that it opens, and swaps the files under the
// store's exclusive lock.

// Snapshot is a consistent copy of the store as of the moment it was
// taken. Close it: until then it holds a read transaction and the
// store's shared lock (so Restore waits). bbolt cannot grow its memory
// map while a read transaction is open, so a write that needs to (the
// file outgrew the map: rare, the map doubles) waits for Close; never
// write to the store on the goroutine that holds an open Snapshot.
type Snapshot struct {
	s  *Store
	tx *bolt.Tx
}

// Snapshot begins a snapshot of the store.
func (s *Store) Snapshot() (*Snapshot, error) {
	s.mu.RLock()
	if s.db == nil {
		s.mu.RUnlock()
		return nil, s.broken
	}
	tx, err := s.db.Begin(false)
	if err != nil {
		s.mu.RUnlock()
		return nil, fmt.Errorf("store: snapshot: %w", err)
	}
	return &Snapshot{s: s, tx: tx}, nil
}

// WriteTo writes the database file as of the snapshot to w.
func (sn *Snapshot) WriteTo(w io.Writer) (int64, error) {
	if sn.tx == nil {
		return 0, errors.New("store: snapshot closed")
	}
	n, err := sn.tx.WriteTo(w)
	if err != nil {
		return n, fmt.Errorf("store: snapshot: %w", err)
	}
	return n, nil
}

// Size is the length WriteTo writes.
func (sn *Snapshot) Size() int64 { return sn.tx.Size() }

// Close ends the snapshot; it is safe to call more than once.
func (sn *Snapshot) Close() {
	if sn.tx == nil {
		return
	}
	sn.tx.Rollback() //nolint:errcheck // a read transaction's rollback only releases it
	sn.tx = nil
	sn.s.mu.RUnlock()
}

// Restore replaces the whole content of the store with the database r
// holds (what Snapshot.WriteTo wrote). It is all or nothing: r is written
// to a temporary file (0600, in the store's directory), synced and
// opened to check it is a database; only then, holding the store's
// exclusive lock, the old file is closed, the new one renamed over it and
// opened. Readers wait for the swap and then see the new state. If the
// new file cannot be reopened after the rename (it opened a moment
// before), the store is broken: every later call fails.
func (s *Store) Restore(r io.Reader) error {
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(s.path)+".restore-*")
	if err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	tmpPath := tmp.Name()
	defer os.Remove(tmpPath) // a no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("store: restore: %w", err)
	}
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return fmt.Errorf("store: restore: copy: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("store: restore: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	// Check before the swap: a file that is not a bbolt database (or a
	// truncated one) must leave the store as it was.
	check, err := openDB(tmpPath)
	if err != nil {
		return fmt.Errorf("store: restore: the snapshot is not a database: %w", err)
	}
	if err := check.Close(); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return s.broken
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: restore: close: %w", err)
	}
	if err := os.Rename(tmpPath, s.path); err != nil {
		// The old file is intact: reopen it.
		db, oerr := openDB(s.path)
		if oerr != nil {
			s.db, s.broken = nil, fmt.Errorf("store: broken by a failed restore: %w", oerr)
			return errors.Join(fmt.Errorf("store: restore: %w", err), s.broken)
		}
		s.db = db
		return fmt.Errorf("store: restore: %w", err)
	}
	syncDir(dir)
	db, err := openDB(s.path)
	if err != nil {
		s.db, s.broken = nil, fmt.Errorf("store: broken by a failed restore: %w", err)
		return s.broken
	}
	s.db = db
	return nil
}

// syncDir makes a rename in dir durable (best effort: not every file
// system supports syncing a directory).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort, see above
		d.Close()
	}
}

// Dump writes every bucket's keys and values in order, one line per
// entry, nested buckets included: a canonical text of the store's
// content (two stores with the same content give the same dump whatever
// their file layout), for comparing replicas.
func (s *Store) Dump(w io.Writer) error {
	return s.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return dumpBucket(w, [][]byte{name}, b)
		})
	})
}

func dumpBucket(w io.Writer, path [][]byte, b *bolt.Bucket) error {
	prefix := bytes.Join(path, []byte("/"))
	if _, err := fmt.Fprintf(w, "%q seq=%d\n", prefix, b.Sequence()); err != nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			return dumpBucket(w, append(path[:len(path):len(path)], k), b.Bucket(k))
		}
		_, err := fmt.Fprintf(w, "%q %q = %q\n", prefix, k, v)
		return err
	})
}

// IsEmpty reports whether the store holds no record at all (a fresh
// database: only its empty buckets).
func (s *Store) IsEmpty() (bool, error) {
	empty := true
	err := s.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			if k, _ := b.Cursor().First(); k != nil {
				empty = false
			}
			return nil
		})
	})
	return empty, err
}
