package mmc

import (
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// The host-name index: one holder per name, the earliest approved when a
// database from before approvals checked names has several, handed over
// on revocation, never to a pending agent.
func TestHostNameIndex(t *testing.T) {
	r := newRegistry(nil)
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	agent := func(id string, st store.AgentState, at time.Time) store.Agent {
		return store.Agent{ID: id, PublicKey: [32]byte{id[0]}, Name: "h1", State: st, DecidedAt: at}
	}
	holder := func() string {
		id, _ := r.holder("h1")
		return id
	}
	r.publish(agent("p", store.StatePending, time.Time{}))
	if h := holder(); h != "" {
		t.Fatalf("a pending agent holds the name: %q", h)
	}
	// Published in either order, the earliest approval holds the name.
	r.publish(agent("late", store.StateApproved, t0.Add(time.Hour)))
	r.publish(agent("early", store.StateApproved, t0))
	r.publish(agent("mid", store.StateApproved, t0.Add(time.Minute)))
	if h := holder(); h != "late" {
		t.Fatalf("holder %q: the first published keeps it while approved", h)
	}
	r.publish(agent("late", store.StateRevoked, t0.Add(2*time.Hour)))
	if h := holder(); h != "early" {
		t.Fatalf("after the holder's revocation %q holds h1, want early", h)
	}
	r.publish(agent("mid", store.StateApproved, t0.Add(time.Minute))) // a login of a non-holder
	if h := holder(); h != "early" {
		t.Fatalf("a non-holder's update took the name: %q", h)
	}
	r.publish(agent("early", store.StateRevoked, t0.Add(3*time.Hour)))
	r.publish(agent("mid", store.StateRevoked, t0.Add(3*time.Hour)))
	if h := holder(); h != "" {
		t.Fatalf("no approved agent left, yet %q holds h1", h)
	}
}
