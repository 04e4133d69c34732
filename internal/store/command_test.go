package store

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/migration"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Every registered command survives encoding, and decoding refuses what
// no encoder produces.
func TestCommandEncoding(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	rec := migration.Record{ID: "m1", VM: "vm1", From: "h1", To: "h2", State: migration.Transferring,
		Options: migration.Options{MaxRate: 1e6, Compress: true}, Created: at, Cleanup: []string{"abort:h2"}}
	samples := []Command{
		&MigrationCreate{Record: rec},
		&MigrationUpdate{Record: rec, IfVersion: 3},
		&MigrationCancel{ID: "m1", At: at},
		&MigrationCleanupDone{ID: "m1", Entry: "abort:h2"},
	}
	seen := map[CommandKind]bool{}
	for _, c := range samples {
		seen[c.Kind()] = true
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("%s: %v", c.Kind(), err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("%s: decoded %#v, want %#v", c.Kind(), got, c)
		}
	}
	for k := range commands {
		if !seen[k] {
			t.Errorf("command %s has no encoding sample here", k)
		}
	}
	for _, bad := range []string{``, `{}`, `{"kind":"nope","body":{}}`, `{"kind":"migration.cancel","body":{"id":"m1","extra":1}}`,
		`{"kind":"migration.cancel","body":{"id":"m1"}} trailing`, `{"kind":"migration.cancel","body":[]}`} {
		if _, err := DecodeCommand([]byte(bad)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("DecodeCommand(%q) = %v, want ErrBadCommand", bad, err)
		}
	}
}

// A write conditional on a version another write replaced is refused and
// changes nothing; an administrator's cancel is such a write.
func TestMigrationVersions(t *testing.T) {
	s := openTest(t)
	m, err := s.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", State: migration.Planned})
	if err != nil || m.ID != "m1" || m.Version != 1 {
		t.Fatalf("create: %+v, %v", m, err)
	}
	if _, err := s.CreateMigration(migration.Record{VM: "vm1", State: migration.Planned}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second open migration of vm1: %v", err)
	}
	read := m
	m.State = migration.Preparing
	if m, err = s.UpdateMigration(m, read.Version); err != nil || m.Version != 2 {
		t.Fatalf("update: %+v, %v", m, err)
	}
	if _, err := s.CancelMigration("m1", time.Now()); err != nil {
		t.Fatal(err)
	}
	m.State = migration.Transferring
	if _, err := s.UpdateMigration(m, 2); !errors.Is(err, ErrStale) {
		t.Fatalf("a write past an unseen cancel: %v", err)
	}
	cur, _ := s.Migration("m1")
	if cur.State != migration.Preparing || !cur.CancelRequested || cur.Version != 3 {
		t.Fatalf("stored %+v", cur)
	}
	if _, err := s.CancelMigration("m1", time.Now()); !errors.Is(err, ErrConflict) || !errors.Is(err, migration.ErrNotCancellable) {
		t.Fatalf("a second cancel: %v", err)
	}
	cur.State, cur.Cleanup = migration.Failed, []string{"abort:h2", "finish:h1"}
	if cur, err = s.UpdateMigration(cur, cur.Version); err != nil {
		t.Fatal(err)
	}
	if err := s.CleanupDone("m1", "abort:h2"); err != nil {
		t.Fatal(err)
	}
	if cur, _ = s.Migration("m1"); !reflect.DeepEqual(cur.Cleanup, []string{"finish:h1"}) {
		t.Fatalf("cleanups %v", cur.Cleanup)
	}
	if _, err := s.CreateMigration(migration.Record{VM: "vm1", State: migration.Planned}); err != nil {
		t.Fatalf("a new migration once the first ended: %v", err)
	}
}

// FuzzDecodeCommand: any input decodes to a command or a clear error,
// and a decoded command encodes again.
func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"kind":"migration.cancel","body":{"id":"m1","at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"migration.update","body":{"record":{"id":"m1","state":"planned"},"if_version":1}}`))
	f.Add([]byte(`{"kind":"migration.cleanup-done","body":{"id":"m1","entry":"abort:h2"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("error not ErrBadCommand: %v", err)
			}
			return
		}
		if _, err := EncodeCommand(c); err != nil {
			t.Fatalf("decoded %s does not encode: %v", c.Kind(), err)
		}
	})
}
