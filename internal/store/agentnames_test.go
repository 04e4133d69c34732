package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// indexSnapshot reads the name index as name → id.
func indexSnapshot(t *testing.T, s *Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAgentNames).ForEach(func(k, v []byte) error {
			out[string(k[1:])] = string(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// approvedNames is the index as the records define it: every approved
// agent's name → its id.
func approvedNames(t *testing.T, s *Store) map[string]string {
	t.Helper()
	agents, err := s.Agents()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, a := range agents {
		if a.State != StateApproved {
			continue
		}
		if prev, ok := out[a.Name]; ok {
			t.Fatalf("agents %s and %s are both approved holding %q", prev, a.ID, a.Name)
		}
		out[a.Name] = a.ID
	}
	return out
}

// After any sequence of enrolments, decisions and expiries the name
// index says exactly what the agent records say, and a rebuilt index
// (what every open does) equals the maintained one.
func TestAgentNameIndexFollowsRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"", "h1", "h2", "h3"}
	states := []AgentState{StateApproved, StateRejected, StateRevoked}
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 600 {
		switch op := rng.IntN(4); {
		case op == 0 || len(ids) == 0:
			id := fmt.Sprintf("a%03d", i)
			if err := s.CreateAgent(Agent{ID: id, Name: names[rng.IntN(len(names))], State: StatePending, EnrolledAt: at}); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		case op == 3:
			// Expiry applies to pending agents only; others refuse.
			if _, err := s.ExpireAgent(AgentExpire{ID: ids[rng.IntN(len(ids))], EnrolledBefore: at, At: at}); err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
		default:
			if _, err := decide(s, ids[rng.IntN(len(ids))], states[rng.IntN(len(states))]); err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
		}
		want := approvedNames(t, s)
		got := indexSnapshot(t, s)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after op %d: index %v, records %v", i, got, want)
		}
	}
	maintained := indexSnapshot(t, s)
	if len(maintained) < 2 {
		t.Fatalf("the sequence approved too little to test: %v", maintained)
	}
	s.Close()
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	if rebuilt := indexSnapshot(t, s); fmt.Sprint(rebuilt) != fmt.Sprint(maintained) {
		t.Fatalf("rebuilt index %v, maintained %v", rebuilt, maintained)
	}
}

// A database without the index (written before it existed, or a
// snapshot from such a member) gets it on open: a second approval of a
// held name is still refused.
func TestAgentNameIndexBuiltOnOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "a", "h1")
	if _, err := decide(s, "a", StateApproved); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "b", "h1")
	err = s.update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketAgentNames) })
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := decide(s, "b", StateApproved); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("approving a second h1 after the index was rebuilt: %v", err)
	}
}
