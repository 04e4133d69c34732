package mmc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
)

// TestHostNameTaken: an agent enrolling with a join token under the name
// of an approved, online host is refused, never merged: it is not
// approved, is told why, the administrator sees why (record, alarm,
// audit), and the host's actions still go to the first agent only. Once
// the holder is revoked, an administrator can approve it.
func TestHostNameTaken(t *testing.T) {
	s := startMMC(t, Config{})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	ca := a.login()
	defer ca.Close()
	aID := s.byKeyID(a)

	b := newFakeAgent(t, s) // same name ("fake"), other key and disk
	b.facts.DiskID, b.facts.MACs = "other-disk", []string{"02:00:00:00:00:42"}
	tok := token(t, s, 2)
	for attempt := range 2 {
		c := b.dial(identity.EnrolPSK(b.bundle.ClusterID))
		if err := message.Send(context.Background(), c, message.EnrolRequest{Facts: b.facts, Token: tok}); err != nil {
			t.Fatal(err)
		}
		e := b.recv(c)
		r, err := message.Decode[message.Refused](e)
		if e.Type != message.TypeRefused || err != nil || r.Retry || !strings.Contains(r.Reason, `host name "fake" is held by another agent`) {
			t.Fatalf("attempt %d: %v %+v %v", attempt, e.Type, r, err)
		}
		c.Close()
	}
	bID := s.byKeyID(b)
	rec, err := s.st.Agent(bID)
	if err != nil || rec.State != store.StatePending || !strings.Contains(rec.Refusal, "agent "+aID) || rec.PSK != ([32]byte{}) {
		t.Fatalf("refused agent's record: %+v, %v", rec, err)
	}
	if v := s.view(rec); v.Refusal != rec.Refusal || v.Online {
		t.Fatalf("admin view %+v", v)
	}
	alarms, _ := s.st.Events(0, 0, true)
	if len(alarms) != 1 || alarms[0].Kind != "host-name-taken" || alarms[0].Agent != bID || alarms[0].Host != "fake" {
		t.Fatalf("alarms %+v", alarms)
	}
	audit, _ := s.st.Audit(0, 0)
	denied := 0
	for _, e := range audit {
		if e.Action == "agent.approve" && e.Target == bID && e.Outcome == "denied" && strings.Contains(e.Detail, "host name") {
			denied++
		}
	}
	if denied != 1 {
		t.Fatalf("%d denied approvals of b audited, want 1", denied)
	}

	ss := s.reg.sessionByHost("fake")
	if ss == nil || ss.id != aID {
		t.Fatalf("sessionByHost(fake) = %+v, want the session of %s", ss, aID)
	}
	hosts := s.hosts()
	if len(hosts) != 1 || hosts[0].ID != "fake" || hosts[0].Agent != aID || !hosts[0].Online {
		t.Fatalf("hosts %+v", hosts)
	}

	if _, err := s.decide(bID, store.StateApproved, "admin", "test"); !errors.Is(err, store.ErrNameTaken) {
		t.Fatalf("administrator's approval of b: %v", err)
	}
	if _, err := s.decide(aID, store.StateRevoked, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.reg.sessionByHost("fake") != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.reg.sessionByHost("fake") != nil {
		t.Fatal("a revoked agent still holds its host")
	}
	if rec, err = s.decide(bID, store.StateApproved, "admin", "test"); err != nil || rec.Refusal != "" {
		t.Fatalf("approving b once a is revoked: %+v, %v", rec, err)
	}
	if hosts = s.hosts(); len(hosts) != 1 || hosts[0].Agent != bID {
		t.Fatalf("hosts after the handover %+v", hosts)
	}
}
