package mmc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
)

// testRaftStart elects a test MMC's one-member cluster quickly (see
// Config.raftStart).
const testRaftStart = 20 * time.Millisecond

// runServer runs s; stop ends it (if it has not ended: done is closed
// then) and returns Run's error.
func runServer(t *testing.T, s *Server) (stop func() error, done <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan struct{})
	var runErr error
	go func() {
		defer close(ch)
		runErr = s.Run(ctx)
	}()
	stop = func() error {
		cancel()
		<-ch
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop, ch
}

// The MMC is the leader of a one-member raft cluster once New returns,
// every store write goes through the raft log (the store's applied index
// is the log's), and a restart keeps the state and goes on from there.
func TestMMCWritesGoThroughRaft(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "-"}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := runServer(t, s)
	if st := s.repl.node.State(); st != raft.Leader {
		t.Fatalf("after New the member is %s, want leader", st)
	}
	before := s.repl.node.AppliedIndex()
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	tok := store.Token{ID: "0123456789abcdef", Hash: [32]byte{1}, Created: at, Expires: at.Add(time.Hour), UsesLeft: 1, CreatedBy: "admin"}
	if err := s.st.PutToken(tok); err != nil {
		t.Fatal(err)
	}
	after := s.repl.node.AppliedIndex()
	applied, err := s.st.AppliedIndex()
	if err != nil {
		t.Fatal(err)
	}
	// Run's own loops may write too: at least this write went through.
	if applied <= before || after < applied {
		t.Fatalf("raft applied %d→%d, store applied index %d: the write did not go through the log", before, after, applied)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "raft", "raft.db")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("raft log: %v %v", fi, err)
	}

	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, s2)
	toks, err := s2.st.Tokens()
	if err != nil || len(toks) != 1 || toks[0].ID != tok.ID {
		t.Fatalf("after a restart: tokens %v (%v)", toks, err)
	}
	if err := s2.st.AppendAudit(store.AuditEntry{Time: at, Actor: "admin", Action: "x", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s2.st.AppliedIndex(); got <= applied {
		t.Fatalf("after a restart the store's applied index is %d, not past %d", got, applied)
	}
}

// A data directory from before raft (a store, no raft dir) keeps its
// content: it becomes the cluster's first snapshot.
func TestMMCUpgradesPreRaftStore(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	if err := st.PutToken(store.Token{ID: "0123456789abcdef", Hash: [32]byte{1}, Created: at, Expires: at.Add(time.Hour), UsesLeft: 1}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	for range 2 {
		s, err := New(Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "-"})
		if err != nil {
			t.Fatal(err)
		}
		stop, _ := runServer(t, s)
		if toks, err := s.st.Tokens(); err != nil || len(toks) != 1 {
			t.Fatalf("tokens %v (%v): the pre-raft content is gone", toks, err)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// A database restored without its raft state (a backup of mmc.db alone)
// keeps its content and its later writes: the new log starts at 1, below
// the index the store recorded from the old one.
func TestMMCRestoresDatabaseWithoutRaftDir(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "-"}
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	tok := func(id string) store.Token {
		return store.Token{ID: id, Hash: [32]byte{1}, Created: at, Expires: at.Add(time.Hour), UsesLeft: 1}
	}
	for i, step := range []struct {
		wantTokens int
		dropRaft   bool
	}{{0, false}, {1, true}, {2, false}} {
		if step.dropRaft {
			if err := os.RemoveAll(filepath.Join(dir, "raft")); err != nil {
				t.Fatal(err)
			}
		}
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop, _ := runServer(t, s)
		if toks, err := s.st.Tokens(); err != nil || len(toks) != step.wantTokens {
			t.Fatalf("start %d: %d tokens (%v), want %d", i, len(toks), err, step.wantTokens)
		}
		// Many writes, so the old log's index is above the new one's.
		for j := range 20 {
			if err := s.st.AppendAudit(store.AuditEntry{Time: at, Actor: "admin", Action: "x", Outcome: "ok"}); err != nil {
				t.Fatalf("start %d write %d: %v", i, j, err)
			}
		}
		if err := s.st.PutToken(tok(fmt.Sprintf("%016x", i))); err != nil {
			t.Fatal(err)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// A halted state machine (here: the store fails under the FSM) stops the
// MMC, and Run says why.
func TestMMCStopsWhenReplicaHalts(t *testing.T) {
	s, err := New(Config{raftStart: testRaftStart, DataDir: t.TempDir(), Listen: "127.0.0.1:0", Admin: "-"})
	if err != nil {
		t.Fatal(err)
	}
	stop, done := runServer(t, s)
	s.st.Close() // every later apply is a storage failure
	// The first write to reach the FSM halts it (this one, or one of
	// Run's loops, whose halt then stops the member under this one).
	if err := s.st.AppendAudit(store.AuditEntry{Actor: "admin", Action: "x", Outcome: "ok"}); !errors.Is(err, replica.ErrHalted) &&
		!errors.Is(err, replica.ErrOutcomeUnknown) && !errors.Is(err, replica.ErrNotLeader) {
		t.Fatalf("write on a failed store: %v, want a halt or the member stopping", err)
	}
	select {
	case <-done:
		if err := stop(); err == nil || !strings.Contains(err.Error(), "halted") {
			t.Fatalf("Run returned %v, want the halt", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the MMC kept running on a halted replica")
	}
}
