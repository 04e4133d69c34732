package mmc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// fakeMirror records what the registry mirrors, as the inventory would.
type fakeMirror struct {
	mu      sync.Mutex
	managed map[string]bool
	online  map[string]bool
}

func newFakeMirror() *fakeMirror {
	return &fakeMirror{managed: map[string]bool{}, online: map[string]bool{}}
}

func (m *fakeMirror) agentChanged(a store.Agent) {
	m.mu.Lock()
	m.managed[a.ID] = a.State == store.StateApproved
	m.mu.Unlock()
}

func (m *fakeMirror) agentRemoved(string) {}

func (m *fakeMirror) onlineChanged(id string, online bool) {
	m.mu.Lock()
	m.online[id] = online
	m.mu.Unlock()
}

func (m *fakeMirror) isOnline(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.online[id]
}

func testAgent(id, name string, st store.AgentState, at time.Time) store.Agent {
	return store.Agent{ID: id, PublicKey: [32]byte{id[0], byte(len(id))}, Name: name, State: st, DecidedAt: at}
}

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

// Sessions register only for an approved agent holding its name; a host
// name reaches the holder's session only; a replaced session's end does
// not take its successor offline.
func TestRegistrySessions(t *testing.T) {
	m := newFakeMirror()
	r := newRegistry(m)
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	// A database from before approvals checked names: two approved
	// agents of h1, loaded in any order; the first approved holds it.
	first, second := testAgent("a1", "h1", store.StateApproved, t0), testAgent("b2", "h1", store.StateApproved, t0.Add(time.Hour))
	pending := testAgent("c3", "h2", store.StatePending, time.Time{})
	r.load([]store.Agent{second, pending, first})

	if _, err := r.register(second.PublicKey, &session{id: second.ID, name: "h1"}); !errors.Is(err, errNotHolder) {
		t.Fatalf("the second agent of h1 registered: %v", err)
	}
	if _, err := r.register(pending.PublicKey, &session{id: pending.ID, name: "h2"}); !errors.Is(err, errNotApproved) {
		t.Fatalf("a pending agent registered: %v", err)
	}
	if _, err := r.register([32]byte{9}, &session{id: "zz", name: "h3"}); !errors.Is(err, errNotApproved) {
		t.Fatalf("an unknown key registered: %v", err)
	}
	if r.sessionByHost("h1") != nil || len(r.live()) != 0 {
		t.Fatal("a refused registration left a session")
	}

	s1 := &session{id: first.ID, name: "h1"}
	if old, err := r.register(first.PublicKey, s1); err != nil || old != nil {
		t.Fatalf("register the holder: %v, %v", old, err)
	}
	if r.sessionByHost("h1") != s1 || r.session(first.ID) != s1 || !r.online(first.ID) || !m.isOnline(first.ID) {
		t.Fatal("the holder's session is not found by host and id, or not online")
	}
	s2 := &session{id: first.ID, name: "h1"}
	if old, err := r.register(first.PublicKey, s2); err != nil || old != s1 {
		t.Fatalf("a newer session: replaced %v, %v; want the first", old, err)
	}
	r.unregister(s1) // the replaced session ends after its successor registered
	if r.session(first.ID) != s2 || !m.isOnline(first.ID) {
		t.Fatal("a replaced session's end took its successor away")
	}
	if hs := r.holders(); len(hs) != 1 || hs[0].id != first.ID || hs[0].ss != s2 {
		t.Fatalf("holders %+v", hs)
	}

	// Revoking the holder hands h1 to the second agent; the revoked
	// one's session is what its revocation ends.
	r.publish(testAgent("a1", "h1", store.StateRevoked, t0.Add(2*time.Hour)))
	if id, _ := r.holder("h1"); id != second.ID {
		t.Fatalf("h1 held by %q after the revocation, want %s", id, second.ID)
	}
	if r.sessionByHost("h1") != nil {
		t.Fatal("h1 still reaches the revoked agent's session")
	}
	r.unregister(s2)
	if r.online(first.ID) || m.isOnline(first.ID) {
		t.Fatal("online after its session ended")
	}
}

// A revocation either happens before a registration (which fails) or sees
// the registered session (and ends it): however registrations and the
// revocation interleave, no session of the revoked agent stays
// registered.
func TestRegistryRevocationRace(t *testing.T) {
	const rounds, registrars, attempts = 1000, 8, 50
	for round := range rounds {
		m := newFakeMirror()
		r := newRegistry(m)
		a := testAgent("a1", "h1", store.StateApproved, time.Unix(1, 0))
		r.publish(a)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range registrars {
			wg.Go(func() {
				<-start
				for range attempts {
					ss := &session{id: a.ID, name: a.Name}
					if _, err := r.register(a.PublicKey, ss); err != nil {
						return // revoked: every later attempt fails too
					}
				}
			})
		}
		wg.Go(func() {
			<-start
			// decide: publish the revocation, then end the session it
			// finds (its goroutine then unregisters it).
			revoked := a
			revoked.State = store.StateRevoked
			r.publish(revoked)
			if ss := r.session(a.ID); ss != nil {
				r.unregister(ss)
			}
		})
		close(start)
		wg.Wait()
		if ss := r.session(a.ID); ss != nil {
			t.Fatalf("round %d: a session of the revoked agent is still registered", round)
		}
		if m.isOnline(a.ID) {
			t.Fatalf("round %d: the inventory has the revoked agent online", round)
		}
	}
}

// Waiters: wake closes every channel subscribed for the agent, and no
// other; a withdrawn or woken waiter leaves nothing behind.
func TestRegistryWaiters(t *testing.T) {
	r := newRegistry(nil)
	w1, un1 := r.subscribe("a")
	w2, un2 := r.subscribe("a")
	wb, unb := r.subscribe("b")
	r.wake("a")
	for i, w := range []<-chan struct{}{w1, w2} {
		select {
		case <-w:
		default:
			t.Fatalf("waiter %d of a not woken", i+1)
		}
	}
	select {
	case <-wb:
		t.Fatal("b's waiter woken by a decision about a")
	default:
	}
	// A session subscribes again after each wake-up; the next decision
	// wakes the new channel.
	w3, un3 := r.subscribe("a")
	un1()
	un2() // after the wake: must not touch the new subscription
	r.wake("a")
	select {
	case <-w3:
	default:
		t.Fatal("a new subscription was not woken")
	}
	un3()
	unb()
	r.wake("b") // nothing waits: nothing to close twice
	r.mu.RLock()
	n := len(r.waiters)
	r.mu.RUnlock()
	if n != 0 {
		t.Fatalf("%d agents still have waiters after every session withdrew", n)
	}
}

// A record read before a revocation (a login publishing its facts while
// the revocation lands) never makes the snapshot say approved again: the
// handshake keeps refusing the key and no session registers.
func TestRegistryRevocationIsFinal(t *testing.T) {
	r := newRegistry(nil)
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	approved := testAgent("a1", "h1", store.StateApproved, t0)
	r.publish(approved)
	revoked := approved
	revoked.State = store.StateRevoked
	r.publish(revoked)
	r.publish(approved) // the stale login record
	if e, ok := r.lookup(approved.PublicKey); !ok || e.state != store.StateRevoked {
		t.Fatalf("the handshake snapshot says %+v for a revoked key", e)
	}
	if _, err := r.register(approved.PublicKey, &session{id: "a1", name: "h1"}); err == nil {
		t.Fatal("a session of a revoked agent registered")
	}
	if id, ok := r.holder("h1"); ok {
		t.Fatalf("the revoked agent %s still holds h1", id)
	}
}

// The pending count the enrolment limit reads follows every publish and
// removal: it equals a count over the snapshot.
func TestRegistryPendingCount(t *testing.T) {
	r := newRegistry(nil)
	rng := rand.New(rand.NewPCG(3, 4))
	states := []store.AgentState{store.StatePending, store.StateApproved, store.StateRejected, store.StateRevoked}
	at := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	for i := range 2000 {
		k := byte(rng.IntN(16))
		a := store.Agent{ID: fmt.Sprintf("a%d", k), PublicKey: [32]byte{k}, Name: "h", State: states[rng.IntN(len(states))], DecidedAt: at.Add(time.Duration(i))}
		if rng.IntN(4) == 0 {
			r.remove(a)
		} else {
			r.publish(a)
		}
		want := 0
		r.mu.RLock()
		for _, e := range r.byKey {
			if e.state == store.StatePending {
				want++
			}
		}
		r.mu.RUnlock()
		if got := r.pendingCount(); got != want {
			t.Fatalf("after step %d: pendingCount %d, snapshot holds %d", i, got, want)
		}
	}
}
