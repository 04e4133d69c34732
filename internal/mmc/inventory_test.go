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

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/inventory"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// report sends a monitor report holding vms ("name" or "name=state").
func (a *fakeAgent) report(c *sudp.Conn, vms ...string) {
	a.t.Helper()
	r := message.Report{Time: time.Now().UnixNano()}
	for _, v := range vms {
		name, state, ok := strings.Cut(v, "=")
		if !ok {
			state = string(hypervisor.StateRunning)
		}
		r.VMs = append(r.VMs, message.VMReport{VM: hypervisor.VM{ID: name, Name: name, State: hypervisor.State(state), VCPUs: 1, Memory: 1 << 20}})
	}
	if err := message.Send(context.Background(), c, r); err != nil {
		a.t.Fatal(err)
	}
}

// twoAgents enrols and logs in a (host "fake") and b (host "other").
func twoAgents(t *testing.T, s *Server) (a, b *fakeAgent, ca, cb *sudp.Conn) {
	t.Helper()
	a = newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	ca = a.login()
	t.Cleanup(func() { ca.Close() })
	b = newFakeAgent(t, s)
	b.facts.Hostname, b.facts.DiskID, b.facts.MACs = "other", "other-disk", []string{"02:00:00:00:00:42"}
	b.enrolWithToken(token(t, s, 1))
	cb = b.login()
	t.Cleanup(func() { cb.Close() })
	waitUntil(t, "both online", func() bool { return s.reg.online(s.byKeyID(a)) && s.reg.online(s.byKeyID(b)) })
	return a, b, ca, cb
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitUntilWithin(t, 5*time.Second, what, cond)
}

func waitUntilWithin(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func alarmsOf(t *testing.T, s *Server) []store.Event {
	t.Helper()
	evs, err := s.st.Events(0, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestReportsCheckedAgainstInventory: a VM the MMC places on one host,
// reported by another agent, is one vm-misplaced alarm (not one per
// report) naming both hosts, and does not move: the record, the list,
// and the planner still have it on its host. A VM nobody created is one
// vm-unknown alarm. An alarm raised again only after a report cleared
// it. Revoking the agent holding the VM leaves it listed, unmanaged,
// with one vm-unmanaged alarm naming the host and the count.
func TestReportsCheckedAgainstInventory(t *testing.T) {
	s := startMMC(t, Config{})
	a, b, ca, cb := twoAgents(t, s)
	aID, bID := s.byKeyID(a), s.byKeyID(b)
	v, err := s.st.CreateVM(store.VM{Name: "web", Agent: aID, Spec: hypervisor.Spec{Name: "web", Memory: 1 << 20, VCPUs: 1}, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	s.setVM(v)
	a.report(ca, "web")
	waitUntil(t, "web running on fake", func() bool { vm, _ := s.vmView("web"); return vm.State == "running" })

	for range 4 {
		b.report(cb, "web=paused", "ghost")
	}
	waitUntil(t, "two alarms", func() bool { return len(alarmsOf(t, s)) >= 2 })
	a.report(ca, "web")
	b.report(cb, "web=paused", "ghost")
	time.Sleep(200 * time.Millisecond) // the reports after the first are handled
	alarms := alarmsOf(t, s)
	kinds := map[string]store.Event{}
	for _, e := range alarms {
		kinds[e.Kind] = e
	}
	mis, unk := kinds[inventory.KindMisplaced], kinds[inventory.KindUnknown]
	if len(alarms) != 2 || mis.Agent != bID || mis.Host != "other" || !strings.Contains(mis.Message, "web") || !strings.Contains(mis.Message, "host fake") ||
		unk.Agent != bID || !strings.Contains(unk.Message, "ghost") {
		t.Fatalf("alarms %+v, want one vm-misplaced (web) and one vm-unknown (ghost), both from other", alarms)
	}
	if rec, err := s.st.VM("web"); err != nil || rec.Agent != aID {
		t.Fatalf("web's record after other's reports: %+v, %v", rec, err)
	}
	if vm, _ := s.vmView("web"); vm.Host != "fake" || vm.State != "running" || vm.Agent != aID {
		t.Fatalf("web listed %+v, want on fake, running", vm)
	}
	if _, ok := s.vmView("ghost"); ok {
		t.Fatal("an unknown VM entered the inventory")
	}
	if _, err := s.planMigration("web", "other", "test", "admin", migration.Options{}); !errors.Is(err, ErrConflict) {
		t.Fatalf("planning web to the host that also reports it: %v", err)
	}

	b.report(cb) // clears both
	b.report(cb, "web")
	waitUntil(t, "the alarm raised again", func() bool { return len(alarmsOf(t, s)) == 3 })

	if _, err := s.decide(aID, store.StateRevoked, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	var unmanaged []store.Event
	for _, e := range alarmsOf(t, s) {
		if e.Kind == kindUnmanaged {
			unmanaged = append(unmanaged, e)
		}
	}
	if len(unmanaged) != 1 || unmanaged[0].Host != "fake" || unmanaged[0].Agent != aID || !strings.Contains(unmanaged[0].Message, "1 VM(s)") {
		t.Fatalf("revocation alarms %+v, want one vm-unmanaged naming fake and 1 VM", unmanaged)
	}
	if vm, ok := s.vmView("web"); !ok || vm.State != inventory.StateUnmanaged || vm.Host != "fake" {
		t.Fatalf("web after the revocation: %+v", vm)
	}
	if _, err := s.decide(aID, store.StateRevoked, "admin", "test"); err == nil {
		t.Fatal("revoked twice")
	}
	if n := len(alarmsOf(t, s)); n != 4 {
		t.Fatalf("%d alarms, want 4 (a second revocation raises none)", n)
	}
}

// TestLegacyVMAdopted: a VM record from before placements (a bare spec)
// is listed unplaced, placed once by the first report of the agent
// holding it — logged, audited, no alarm — and a later report of it by
// another agent is a vm-misplaced alarm that does not move it.
func TestLegacyVMAdopted(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, dbFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("vms"))
		if err != nil {
			return err
		}
		return b.Put([]byte("old"), []byte(`{"name":"old","memory":1048576,"vcpus":1,"workload":{}}`))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := startMMCIn(t, dir)
	if vm, ok := s.vmView("old"); !ok || vm.State != inventory.StateUnplaced {
		t.Fatalf("legacy record listed %+v", vm)
	}
	a, b, ca, cb := twoAgents(t, s)
	aID := s.byKeyID(a)
	a.report(ca, "old")
	// Adopted in the store, then in the MMC's inventory: b's report is
	// checked against the latter.
	waitUntil(t, "the adoption", func() bool {
		rec, _ := s.st.VM("old")
		vm, ok := s.vmView("old")
		return rec.Agent == aID && ok && vm.State != inventory.StateUnplaced
	})
	b.report(cb, "old")
	waitUntil(t, "vm-misplaced", func() bool { return len(alarmsOf(t, s)) == 1 })
	a.report(ca, "old")
	time.Sleep(200 * time.Millisecond)
	if al := alarmsOf(t, s); len(al) != 1 || al[0].Kind != inventory.KindMisplaced || al[0].Host != "other" {
		t.Fatalf("alarms %+v", al)
	}
	if rec, _ := s.st.VM("old"); rec.Agent != aID || rec.Adopted.IsZero() {
		t.Fatalf("record %+v, want adopted by %s only", rec, aID)
	}
	if vm, _ := s.vmView("old"); vm.Host != "fake" || vm.State != "running" {
		t.Fatalf("listed %+v", vm)
	}
	logs, _ := s.st.Events(0, 0, false)
	adopted := 0
	for _, e := range logs {
		if e.Kind == kindAdopted && !e.Alarm {
			adopted++
		}
	}
	audit, _ := s.st.Audit(0, 0)
	audited := 0
	for _, e := range audit {
		if e.Action == "vm.adopt" && e.Target == "old" {
			audited++
		}
	}
	if adopted != 1 || audited != 1 {
		t.Fatalf("adoption logged %d and audited %d times, want once each", adopted, audited)
	}
}

func startMMCIn(t *testing.T, dir string) *Server {
	t.Helper()
	if err := os.Chmod(filepath.Join(dir, dbFile), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "-"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// Orders go to the agents the migration record names for its hosts; a
// record from before agent ids (or a host it does not name) falls back
// to the name's holder ("").
func TestMigrationOrdersGoToRecordedAgents(t *testing.T) {
	s := &Server{}
	rec := migration.Record{From: "h1", To: "h2", FromAgent: "a1", ToAgent: "a2"}
	for _, tc := range []struct {
		rec        migration.Record
		host, want string
	}{
		{rec, "h1", "a1"}, {rec, "h2", "a2"}, {rec, "h3", ""},
		{migration.Record{From: "h1", To: "h2"}, "h1", ""},
	} {
		if got := s.agentFor(tc.rec, tc.host); got != tc.want {
			t.Errorf("agentFor(%+v, %s) = %q, want %q", tc.rec, tc.host, got, tc.want)
		}
	}
}

// A report naming many VMs the inventory does not know writes a bounded
// number of alarms (each is a store write), the rest summed up in one;
// every one is still counted in the metric.
func TestInventoryAlarmsPerReportBounded(t *testing.T) {
	s := startMMC(t, Config{})
	_, b, _, cb := twoAgents(t, s)
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("stray%03d", i))
	}
	b.report(cb, names...)
	waitUntil(t, "the summary alarm", func() bool { return len(alarmsOf(t, s)) >= maxAlarmsPerReport+1 })
	time.Sleep(200 * time.Millisecond)
	alarms := alarmsOf(t, s)
	if len(alarms) != maxAlarmsPerReport+1 || !strings.Contains(alarms[len(alarms)-1].Message, fmt.Sprintf("%d more VMs", 100-maxAlarmsPerReport)) {
		t.Fatalf("%d alarms, last %+v; want %d and a summary of the other %d", len(alarms), alarms[len(alarms)-1], maxAlarmsPerReport+1, 100-maxAlarmsPerReport)
	}
	if n := testutil.ToFloat64(s.metrics.vmAlarms.WithLabelValues(inventory.KindUnknown)); n != 100 {
		t.Fatalf("counted %v vm-unknown, want 100", n)
	}
}
