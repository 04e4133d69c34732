package mmc

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// enrolPending opens an enrolment session without a token and returns it
// once the MMC answered; want is the answer's type.
func (a *fakeAgent) enrolPending(want message.Type) *sudp.Conn {
	a.t.Helper()
	c := a.dial(identity.EnrolPSK(a.bundle.ClusterID))
	if err := message.Send(context.Background(), c, message.EnrolRequest{Facts: a.facts}); err != nil {
		a.t.Fatal(err)
	}
	if e := a.recv(c); e.Type != want {
		a.t.Fatalf("enrolment answered %v, want %v", e.Type, want)
	}
	return c
}

// refusedWithin waits up to d for the MMC to end an enrolment session
// with a Refused asking the agent to retry, and returns its reason.
func refusedWithin(t *testing.T, c *sudp.Conn, d time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	e, err := message.Receive(ctx, c)
	if err != nil {
		t.Fatalf("no answer within %v: %v", d, err)
	}
	r, err := message.Decode[message.Refused](e)
	if e.Type != message.TypeRefused || err != nil || !r.Retry {
		t.Fatalf("got %v %+v %v, want a Refused asking to retry", e.Type, r, err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the MMC did not close the session after its refusal")
	}
	return r.Reason
}

// TestPendingSessionsHoldNoSlot: hosts waiting for a decision do not
// occupy the enrolment sessions (MaxEnrolSessions): with every slot's
// worth of pending hosts connected, an honest host with a token still
// enrols; and a connected pending host's session ends after EnrolWait
// with "ask again later" rather than staying open.
func TestPendingSessionsHoldNoSlot(t *testing.T) {
	const wait = 1500 * time.Millisecond
	s := startMMC(t, Config{MaxEnrolSessions: 2, EnrolWait: wait})
	var waiting []*sudp.Conn
	for range 3 {
		a := newFakeAgent(t, s)
		c := a.enrolPending(message.TypeEnrolReply)
		defer c.Close()
		waiting = append(waiting, c)
	}
	start := time.Now()
	honest := newFakeAgent(t, s)
	honest.facts.Hostname = "honest"
	honest.enrolWithToken(token(t, s, 1)) // fails the test if refused
	if a, err := s.st.Agent(s.byKeyID(honest)); err != nil || a.State != store.StateApproved {
		t.Fatalf("honest host: %+v %v", a, err)
	}
	for i, c := range waiting {
		reason := refusedWithin(t, c, wait+5*time.Second)
		t.Logf("pending session %d ended after %v: %s", i, time.Since(start).Round(time.Millisecond), reason)
	}
	if n := s.reg.enrolWaiting(); n != 0 {
		t.Fatalf("%d enrolment sessions still waiting", n)
	}
	if v := testutil.ToFloat64(s.metrics.refused.WithLabelValues("pending-wait")); v != 3 {
		t.Fatalf("pending-wait refusals counted: %v, want 3", v)
	}
}

// TestOneWaitingSessionPerKey: a pending key that opens a second
// enrolment session does not hold two; the older one ends.
func TestOneWaitingSessionPerKey(t *testing.T) {
	s := startMMC(t, Config{})
	a := newFakeAgent(t, s)
	first := a.enrolPending(message.TypeEnrolReply)
	defer first.Close()
	second := a.enrolPending(message.TypeEnrolReply)
	defer second.Close()
	select {
	case <-first.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the older waiting session of the key is still open")
	}
	if n := s.reg.enrolWaiting(); n != 1 {
		t.Fatalf("%d waiting sessions, want 1", n)
	}
}

// TestPendingExpiry: a flood of pending enrolments fills MaxPending;
// once they pass PendingTTL without a decision they expire (agent.expire,
// audited, counted), the capacity returns, an honest host enrols, and an
// expired host — even one still connected — can enrol afresh.
func TestPendingExpiry(t *testing.T) {
	const ttl = 2 * time.Second
	s := startMMC(t, Config{MaxPending: 2, PendingTTL: ttl})
	flood := []*fakeAgent{newFakeAgent(t, s), newFakeAgent(t, s)}
	connected := flood[0].enrolPending(message.TypeEnrolReply)
	defer connected.Close()
	flood[1].enrolPending(message.TypeEnrolReply).Close()
	honest := newFakeAgent(t, s)
	honest.facts.Hostname = "honest"
	honest.enrolPending(message.TypeRefused).Close() // the queue is full

	// The connected flood host is told its enrolment expired.
	reason := refusedWithin(t, connected, ttl+5*time.Second)
	t.Logf("connected pending host: %s", reason)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if agents, _ := s.st.Agents(); len(agents) == 0 && s.reg.pendingCount() == 0 {
			break
		}
		if time.Now().After(deadline) {
			agents, _ := s.st.Agents()
			t.Fatalf("pending records after the TTL: %d", len(agents))
		}
	}
	if v := testutil.ToFloat64(s.metrics.pendingExpired); v != 2 {
		t.Fatalf("expiries counted: %v, want 2", v)
	}
	s.audit.drain()
	entries, _ := s.st.Audit(0, 0)
	n := 0
	for _, e := range entries {
		if e.Action == "agent.expire" && e.Actor == "mmc" && e.Outcome == "ok" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d agent.expire audit entries, want 2", n)
	}

	// Capacity is back: the honest host enrols, and so does an expired one.
	hc := honest.enrolPending(message.TypeEnrolReply)
	defer hc.Close()
	again := flood[1].enrolPending(message.TypeEnrolReply)
	defer again.Close()
	if a, err := s.st.Agent(s.byKeyID(honest)); err != nil || a.State != store.StatePending {
		t.Fatalf("honest host after expiry: %+v %v", a, err)
	}
	if _, err := s.decide(s.byKeyID(honest), store.StateApproved, "admin", "test"); err != nil {
		t.Fatalf("approving the honest host: %v", err)
	}
}

// TestRevocationCancelsMigrations: revoking an agent cancels the open
// migrations it takes part in, through the orchestrator's cancel (the
// machine rolls back); one past its commit is left to finish, and the
// others are untouched.
func TestRevocationCancelsMigrations(t *testing.T) {
	s := startMMC(t, Config{})
	bad, good := newFakeAgent(t, s), newFakeAgent(t, s)
	good.facts.Hostname = "good"
	bad.enrolWithToken(token(t, s, 1))
	good.enrolWithToken(token(t, s, 1))
	badID, goodID := s.byKeyID(bad), s.byKeyID(good)
	mk := func(vm, from, fromAgent, to, toAgent string, state migration.State) string {
		t.Helper()
		if _, err := s.st.CreateVM(store.VM{Name: vm, Agent: fromAgent, Spec: hypervisor.Spec{Name: vm, Memory: 1 << 20, VCPUs: 1}, Created: time.Now()}); err != nil {
			t.Fatal(err)
		}
		m, err := s.st.CreateMigration(migration.Record{VM: vm, From: from, FromAgent: fromAgent, To: to, ToAgent: toAgent, State: migration.Planned, Created: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		m.State = state
		if m, err = s.st.UpdateMigration(m, m.Version); err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	toBad := mk("vm1", "good", goodID, "fake", badID, migration.Transferring)
	fromBad := mk("vm2", "fake", badID, "good", goodID, migration.Transferring)
	committed := mk("vm3", "good", goodID, "fake", badID, migration.SwitchOver)
	if _, err := s.decide(badID, store.StateRevoked, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{toBad: true, fromBad: true, committed: false} {
		m, err := s.st.Migration(id)
		if err != nil {
			t.Fatal(err)
		}
		if m.CancelRequested != want {
			t.Errorf("%s (%s): cancel requested %v, want %v", id, m.State, m.CancelRequested, want)
		}
	}
	entries, _ := s.st.Audit(0, 0)
	n := 0
	for _, e := range entries {
		if e.Action == "migration.cancel" && e.Actor == "mmc" {
			n++
		}
	}
	if n != 3 { // two cancelled, one refused (past its commit)
		t.Fatalf("%d migration.cancel audit entries by the MMC, want 3", n)
	}
}
