package agent

import (
	"github.com/ferry-vm/ferry/internal/message"
	"os"
	"path/filepath"
	"testing"
)

func TestOutboxSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), OutboxFile)
	o, err := openOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	o.add(false, "info", "a", "one")
	o.add(true, "error", "b", "two")
	o.add(false, "warn", "c", "three")
	if got := o.due(); len(got) != 3 {
		t.Fatalf("due = %d events, want 3", len(got))
	}
	o.ack(1)
	o.ack(3)
	if err := o.close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("outbox file mode: %v %v", fi.Mode(), err)
	}

	o, err = openOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	due := o.due()
	if len(due) != 1 || due[0].Seq != 2 || !due[0].Alarm || due[0].Message != "two" {
		t.Fatalf("after restart due = %+v, want only event 2", due)
	}
	// Numbering continues past every event ever issued, acknowledged or
	// not: the MMC drops repeats of (agent, seq) as resends.
	o.add(false, "info", "d", "four")
	if due := o.due(); len(due) != 1 || due[0].Seq != 4 {
		t.Fatalf("new event after restart = %+v, want seq 4", due)
	}
	o.ack(2)
	o.ack(4)
	if o.len() != 0 {
		t.Fatalf("pending = %d after acking all", o.len())
	}
	o.close()
	o, err = openOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	o.add(false, "info", "e", "five")
	if due := o.due(); len(due) != 1 || due[0].Seq != 5 {
		t.Fatalf("seq after everything acked and restart = %+v, want 5", due)
	}
}

func TestOutboxBounded(t *testing.T) {
	o, err := openOutbox(filepath.Join(t.TempDir(), OutboxFile))
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	o.mu.Lock()
	o.pending = make([]message.Event, 0, maxOutbox)
	for i := 1; i <= maxOutbox; i++ {
		o.pending = append(o.pending, message.Event{Seq: uint64(i)})
	}
	o.next = maxOutbox
	o.mu.Unlock()
	o.add(true, "error", "x", "overflow")
	if o.len() != maxOutbox || o.dropped != 1 {
		t.Fatalf("len %d dropped %d, want %d and 1", o.len(), o.dropped, maxOutbox)
	}
	if due := o.due(); due[0].Seq != 2 || due[len(due)-1].Message != "overflow" {
		t.Fatalf("oldest kept %d, newest %q", due[0].Seq, due[len(due)-1].Message)
	}
}
