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

// A VM's unexpected stop is raised once, across agent restarts (the
// restarted agent sees the same stopped VM: TestMMCOutageMinute once got
// two alarms for it), and raised again only after it ran or went away.
func TestStoppedAlarmOncePerStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), OutboxFile)
	o, err := openOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	if !o.raiseStopped("vm1") || o.raiseStopped("vm1") {
		t.Fatal("the first report of a stop raises it, the next does not")
	}
	o.close()
	o, err = openOutbox(path)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	if o.raiseStopped("vm1") {
		t.Fatal("a restarted agent raised the same stop again")
	}
	if due := o.due(); len(due) != 1 || due[0].Kind != "vm-stopped" || due[0].Message != "VM vm1 stopped unexpectedly" {
		t.Fatalf("outbox after restart: %+v, want the one alarm", due)
	}
	o.clearStopped("vm1") // it ran again
	if !o.raiseStopped("vm1") {
		t.Fatal("a new stop after the VM ran was not raised")
	}
	if ids := o.stoppedVMs(); len(ids) != 1 || ids[0] != "vm1" {
		t.Fatalf("stopped VMs %v", ids)
	}
}
