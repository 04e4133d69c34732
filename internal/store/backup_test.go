package store

import (
	"path/filepath"
	"testing"
	"time"
)

// RaiseFenceTerm raises, never lowers; a snapshot reports the index and
// term of its own transaction, not the store's later ones.
func TestRaiseFenceTermAndSnapshotFields(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range 3 {
		if _, err := st.ApplyIndexed(uint64(i+1), &LeaderTerm{ID: "a", At: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	sn, err := st.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// A write waits for an open snapshot when bbolt must grow its map
	// (Snapshot's doc): it goes on another goroutine.
	raised := make(chan error, 1)
	go func() {
		got, err := st.RaiseFenceTerm(100)
		if err == nil && got != 100 {
			t.Errorf("raise to 100: %d", got)
		}
		raised <- err
	}()
	time.Sleep(50 * time.Millisecond)
	idx, err1 := sn.AppliedIndex()
	term, err2 := sn.FenceTerm()
	sn.Close()
	if err := <-raised; err != nil {
		t.Fatal(err)
	}
	if idx != 3 || term != 3 || err1 != nil || err2 != nil {
		t.Fatalf("snapshot: index %d term %d (%v %v), want 3 and 3", idx, term, err1, err2)
	}
	if got, err := st.RaiseFenceTerm(50); err != nil || got != 100 {
		t.Fatalf("raise to 50 lowered it: %d %v", got, err)
	}
	if _, err := sn.FenceTerm(); err == nil {
		t.Fatal("a closed snapshot answered")
	}
	if got, _ := st.FenceTerm(); got != 100 {
		t.Fatalf("fence term %d", got)
	}
}
