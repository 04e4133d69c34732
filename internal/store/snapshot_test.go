package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func dump(t *testing.T, s *Store) string {
	t.Helper()
	var b strings.Builder
	if err := s.Dump(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestSnapshotRestoreReplacesEverything(t *testing.T) {
	src, _ := open(t)
	mustCreate(t, src, "a1", "h1")
	if err := src.PutPolicy([]byte(`{"version":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Apply(&AuditAppend{Entries: []AuditEntry{{Time: time.Unix(1, 0), Actor: "admin", Action: "x", Outcome: "ok"}}}); err != nil {
		t.Fatal(err)
	}
	want := dump(t, src)
	sn, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// A write after the snapshot began is not in it. (It runs on its own
	// goroutine: a write that must grow bbolt's memory map waits for the
	// snapshot's read transaction to end.)
	wrote := make(chan error, 1)
	go func() {
		_, err := src.EnsureMeta("after", "1")
		wrote <- err
	}()
	time.Sleep(10 * time.Millisecond)
	var img bytes.Buffer
	if _, err := sn.WriteTo(&img); err != nil {
		t.Fatal(err)
	}
	sn.Close()
	sn.Close() // idempotent
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}

	dst, path := open(t)
	mustCreate(t, dst, "other", "h9")
	if err := dst.Restore(bytes.NewReader(img.Bytes())); err != nil {
		t.Fatal(err)
	}
	got := dump(t, dst)
	if _, err := dst.Agent("other"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the old content survived the restore: %v", err)
	}
	if v, _ := dst.Meta("after"); v != "" {
		t.Fatal("a write after the snapshot reached it")
	}
	if got != want {
		t.Fatalf("restored dump differs:\n got %s\nwant %s", got, want)
	}
	// The store keeps working: reads and writes.
	if _, err := dst.Agent("a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.EnsureMeta("k", "v"); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("restored file mode %v, %v", st.Mode().Perm(), err)
	}
	if left, _ := filepath.Glob(path + ".restore-*"); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestRestoreOfGarbageLeavesStoreIntact(t *testing.T) {
	s, path := open(t)
	mustCreate(t, s, "a1", "h1")
	before := dump(t, s)
	if err := s.Restore(strings.NewReader("not a database at all")); err == nil {
		t.Fatal("garbage restored")
	}
	if dump(t, s) != before {
		t.Fatal("a failed restore changed the store")
	}
	if left, _ := filepath.Glob(path + ".restore-*"); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// Readers running through a restore never fail: they see the old state
// or the new one.
func TestRestoreWhileReading(t *testing.T) {
	src, _ := open(t)
	if _, err := src.EnsureMeta("k", "new"); err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	sn, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.WriteTo(&img); err != nil {
		t.Fatal(err)
	}
	sn.Close()

	s, _ := open(t)
	if _, err := s.EnsureMeta("k", "old"); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				v, err := s.Meta("k")
				if err != nil || (v != "old" && v != "new") {
					errs <- errors.Join(err, errors.New("read "+v))
					return
				}
			}
		})
	}
	for range 5 {
		if err := s.Restore(bytes.NewReader(img.Bytes())); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if v, _ := s.Meta("k"); v != "new" {
		t.Fatalf("after restore: %q", v)
	}
}

func TestStorageFailureIsNotACommandResult(t *testing.T) {
	s, _ := open(t)
	if err := s.PutPolicy([]byte(`{"version":5}`)); !errors.Is(err, ErrStale) || errors.Is(err, ErrStorage) {
		t.Fatalf("a refused command: %v", err)
	}
	s.Close()
	if _, err := s.Apply(&MetaEnsure{Key: "k", Value: "v"}); !errors.Is(err, ErrStorage) {
		t.Fatalf("a write to a closed store: %v", err)
	}
}

// A replayed log entry is not applied twice; a refused one records
// nothing and is refused again on replay.
func TestApplyIndexedSkipsReplays(t *testing.T) {
	s, _ := open(t)
	app := &AuditAppend{Entries: []AuditEntry{{Time: time.Unix(1, 0), Actor: "admin", Action: "x", Outcome: "ok"}}}
	if _, err := s.ApplyIndexed(3, app); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApplyIndexed(3, app); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApplyIndexed(2, app); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Audit(0, 10); len(got) != 1 {
		t.Fatalf("replays applied: %d entries", len(got))
	}
	if _, err := s.ApplyIndexed(4, &PolicyPut{Doc: []byte(`{"version":7}`)}); !errors.Is(err, ErrStale) {
		t.Fatalf("stale: %v", err)
	}
	if n, err := s.AppliedIndex(); err != nil || n != 3 {
		t.Fatalf("a refused entry moved the applied index: %d, %v", n, err)
	}
	if _, err := s.ApplyIndexed(4, &PolicyPut{Doc: []byte(`{"version":7}`)}); !errors.Is(err, ErrStale) {
		t.Fatalf("stale, replayed: %v", err)
	}
	if _, err := s.ApplyIndexed(0, app); err == nil {
		t.Fatal("index 0 accepted")
	}
}

func TestIsEmpty(t *testing.T) {
	s, _ := open(t)
	if empty, err := s.IsEmpty(); err != nil || !empty {
		t.Fatalf("fresh store: %v, %v", empty, err)
	}
	if _, err := s.EnsureMeta("k", "v"); err != nil {
		t.Fatal(err)
	}
	if empty, err := s.IsEmpty(); err != nil || empty {
		t.Fatalf("after a write: %v, %v", empty, err)
	}
}
