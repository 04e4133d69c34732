package agent

import (
	"os"
	"testing"
	"time"
)

// TestResumeRecord: a copy is on record as possibly running once marked,
// the record survives (it is a file), and records older than resumedKeep
// are pruned while recent ones stay.
func TestResumeRecord(t *testing.T) {
	a := &Agent{cfg: Config{DataDir: t.TempDir()}}
	if a.mayHaveResumed("m1") {
		t.Fatal("m1 on record before it was marked")
	}
	for _, id := range []string{"m1", "m2"} {
		if err := a.markResuming(id); err != nil {
			t.Fatal(err)
		}
	}
	if !a.mayHaveResumed("m1") || !a.mayHaveResumed("m2") || a.mayHaveResumed("m3") {
		t.Fatal("records do not match the marks")
	}
	old := time.Now().Add(-resumedKeep - time.Hour)
	if err := os.Chtimes(a.resumedPath("m1"), old, old); err != nil {
		t.Fatal(err)
	}
	a.pruneResumed(time.Now())
	if a.mayHaveResumed("m1") || !a.mayHaveResumed("m2") {
		t.Fatal("pruning removed the wrong records")
	}
	// Without a data directory nothing can be on record: every copy may
	// have run.
	if !(&Agent{}).mayHaveResumed("m9") {
		t.Fatal("an agent without a data directory claimed a copy never ran")
	}
}
