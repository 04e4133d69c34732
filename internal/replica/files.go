package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// The raft log carries every store command, agent.decide with the
// agents' keys among them, and a snapshot is the whole store: both must
// be readable by the MMC's user alone, as the store's own file is. The
// raft directory is created 0700 and the log database 0600 (raft-boltdb
// opens it so); an existing one others can reach is refused, as
// store.Open refuses a world-readable database. raft's FileSnapshotStore
// creates its directories 0755 and files with os.Create (0666 less the
// umask); inside a 0700 directory nobody else can reach them, and the
// snapshot store below also narrows them to 0700/0600 as soon as they
// exist, so that a copy of the directory keeps them private.

// privateDir creates dir 0700 if absent and refuses one that group or
// others can access.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("replica: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("replica: %s is not a directory", dir)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("replica: %s has mode %v; it must be 0700", dir, st.Mode().Perm())
	}
	return nil
}

// privateFile refuses an existing file that group or others can access;
// a missing one is fine (its creator makes it 0600).
func privateFile(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("replica: %s has mode %v; it must be 0600", path, st.Mode().Perm())
	}
	return nil
}

// narrowModes makes every directory under root 0700 and every file 0600.
func narrowModes(root string) error {
	// raft may remove an old snapshot meanwhile (retention): what is gone
	// needs no narrowing.
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o600)
		if d.IsDir() {
			mode = 0o700
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if info.Mode().Perm() != mode {
			if err := os.Chmod(path, mode); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	})
}

// snapshotStore is raft's FileSnapshotStore with private modes.
type snapshotStore struct {
	*raft.FileSnapshotStore
	dir string // the snapshots directory
}

func newSnapshotStore(base string, retain int, log hclog.Logger) (*snapshotStore, error) {
	fss, err := raft.NewFileSnapshotStoreWithLogger(base, retain, log)
	if err != nil {
		return nil, fmt.Errorf("replica: snapshot store: %w", err)
	}
	s := &snapshotStore{FileSnapshotStore: fss, dir: filepath.Join(base, "snapshots")}
	if err := narrowModes(s.dir); err != nil {
		return nil, fmt.Errorf("replica: snapshot store: %w", err)
	}
	return s, nil
}

// Create implements raft.SnapshotStore.
func (s *snapshotStore) Create(version raft.SnapshotVersion, index, term uint64,
	configuration raft.Configuration, configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.FileSnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	// The temporary directory and its files exist now: narrow them
	// before the state is written into them.
	if err := narrowModes(s.dir); err != nil {
		sink.Cancel() //nolint:errcheck // the mode error is the one to report
		return nil, fmt.Errorf("replica: snapshot modes: %w", err)
	}
	return &snapshotSink{SnapshotSink: sink, s: s}, nil
}

type snapshotSink struct {
	raft.SnapshotSink
	s *snapshotStore
}

// Close implements raft.SnapshotSink: raft renames the directory and
// rewrites meta.json on close; narrow them again.
func (k *snapshotSink) Close() error {
	if err := k.SnapshotSink.Close(); err != nil {
		return err
	}
	if err := narrowModes(k.s.dir); err != nil {
		return fmt.Errorf("replica: snapshot modes: %w", err)
	}
	return nil
}
