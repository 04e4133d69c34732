package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/identity"
)

// creds are approval credentials whose keys are all n and whose code is
// n repeated.
func creds(n byte) *AgentCredentials {
	code := make([]byte, identity.CodeLen)
	for i := range code {
		code[i] = n
	}
	return &AgentCredentials{PSK: [32]byte{n}, ReauthKey: [32]byte{n}, AgentIDDigest: [32]byte{n}, Code: code}
}

func mustCreate(t *testing.T, s *Store, id, name string) {
	t.Helper()
	if err := s.CreateAgent(Agent{ID: id, Name: name, State: StatePending, PublicKey: [32]byte{id[0], id[len(id)-1]}}); err != nil {
		t.Fatal(err)
	}
}

func decide(s *Store, id string, to AgentState) (Agent, error) {
	c := AgentDecide{ID: id, To: to, By: "admin", At: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)}
	if to == StateApproved {
		c.Credentials = creds(9)
	}
	return s.DecideAgent(c)
}

// Each decision applies only from the states it is allowed from; a
// refused one writes nothing; a revocation wipes the credentials.
func TestAgentDecideAllowedFrom(t *testing.T) {
	s := openTest(t)
	allowed := map[AgentState][]AgentState{
		StateApproved: {StatePending},
		StateRejected: {StatePending},
		StateRevoked:  {StatePending, StateApproved},
	}
	n := 0
	for _, to := range []AgentState{StateApproved, StateRejected, StateRevoked} {
		for _, from := range []AgentState{StatePending, StateApproved, StateRejected, StateRevoked} {
			n++
			id := fmt.Sprintf("a%d", n)
			mustCreate(t, s, id, "host-"+id) // a name of its own: only the state matters here
			if from != StatePending {
				if _, err := decide(s, id, from); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := s.Agent(id)
			a, err := decide(s, id, to)
			ok := false
			for _, f := range allowed[to] {
				ok = ok || f == from
			}
			switch {
			case ok && err != nil:
				t.Errorf("%s → %s: %v", from, to, err)
			case ok && (a.State != to || a.DecidedBy != "admin" || a.DecidedAt.IsZero()):
				t.Errorf("%s → %s: stored %+v", from, to, a)
			case !ok && !errors.Is(err, ErrConflict):
				t.Errorf("%s → %s: %v, want ErrConflict", from, to, err)
			case !ok:
				if after, _ := s.Agent(id); after.State != before.State || after.DecidedAt != before.DecidedAt {
					t.Errorf("%s → %s refused but changed the record: %+v", from, to, after)
				}
			}
			if ok && to == StateRevoked {
				if a.PSK != ([32]byte{}) || a.ReauthKey != ([32]byte{}) || a.PendingCode != nil {
					t.Errorf("%s → revoked kept credentials: %+v", from, a)
				}
			}
			if ok && to == StateApproved && (a.PSK != [32]byte{9} || len(a.PendingCode) != identity.CodeLen) {
				t.Errorf("approval did not store its credentials: %+v", a)
			}
		}
	}
	mustCreate(t, s, "bare", "bare")
	if _, err := s.DecideAgent(AgentDecide{ID: "bare", To: StateApproved, By: "admin"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("an approval without credentials: %v", err)
	}
	if _, err := decide(s, "nobody", StateApproved); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deciding about an unknown agent: %v", err)
	}
}

// A host name is held by at most one approved agent: an approval that
// would make a second holder is refused and the refusal recorded on the
// refused agent; pending, rejected and revoked agents hold no name.
func TestHostNameUnique(t *testing.T) {
	s := openTest(t)
	mustCreate(t, s, "early", "h1") // pending first: holds nothing
	mustCreate(t, s, "a", "h1")
	if _, err := decide(s, "a", StateApproved); err != nil {
		t.Fatalf("approving the first approved h1 while another h1 is pending: %v", err)
	}
	mustCreate(t, s, "b", "h1")
	b, err := decide(s, "b", StateApproved)
	if !errors.Is(err, ErrNameTaken) || !errors.Is(err, ErrConflict) {
		t.Fatalf("approving a second h1: %v", err)
	}
	stored, _ := s.Agent("b")
	if stored.State != StatePending || stored.PSK != ([32]byte{}) || stored.PendingCode != nil || !stored.DecidedAt.IsZero() {
		t.Fatalf("refused agent %+v", stored)
	}
	if !strings.Contains(stored.Refusal, `"h1"`) || !strings.Contains(stored.Refusal, "agent a") || stored.RefusedAt.IsZero() {
		t.Fatalf("refusal on record: %q at %v", stored.Refusal, stored.RefusedAt)
	}
	if b.Refusal != stored.Refusal {
		t.Fatalf("DecideAgent returned %+v, stored %+v", b, stored)
	}
	if _, err := decide(s, "early", StateApproved); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("approving the earlier pending h1 after a was approved: %v", err)
	}
	// Other names, and rejecting or revoking the refused agent, are
	// unaffected.
	mustCreate(t, s, "c", "h2")
	if _, err := decide(s, "c", StateApproved); err != nil {
		t.Fatal(err)
	}
	if _, err := decide(s, "early", StateRejected); err != nil {
		t.Fatal(err)
	}
	// Once the holder is revoked the name is free, and the approval
	// clears the refusal.
	if _, err := decide(s, "a", StateRevoked); err != nil {
		t.Fatal(err)
	}
	if b, err = decide(s, "b", StateApproved); err != nil || b.Refusal != "" || !b.RefusedAt.IsZero() {
		t.Fatalf("approving b once a is revoked: %+v, %v", b, err)
	}
}

// Concurrent approvals of agents with one name: exactly one wins.
func TestHostNameApprovalRace(t *testing.T) {
	s := openTest(t)
	for i := range 8 {
		mustCreate(t, s, fmt.Sprintf("r%d", i), "same")
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := decide(s, fmt.Sprintf("r%d", i), StateApproved)
			if err == nil {
				mu.Lock()
				won++
				mu.Unlock()
			} else if !errors.Is(err, ErrNameTaken) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d approvals of one name won", won)
	}
}

// A login is recorded only for an approved agent; the handshake time
// only ever rises.
func TestAgentLoginAndHandshake(t *testing.T) {
	s := openTest(t)
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	mustCreate(t, s, "a", "h1")
	login := AgentLogin{ID: "a", Facts: identity.Facts{Hostname: "h1", IPs: []string{"192.0.2.1"}}, At: t0, Addr: "192.0.2.1:7000", HandshakeAt: t0}
	if _, err := s.AgentLoggedIn(login); !errors.Is(err, ErrConflict) {
		t.Fatalf("login of a pending agent: %v", err)
	}
	if _, err := decide(s, "a", StateApproved); err != nil {
		t.Fatal(err)
	}
	a, err := s.AgentLoggedIn(login)
	if err != nil || a.LastSeen != t0 || a.LastAddr != login.Addr || a.LastFacts.IPs[0] != "192.0.2.1" || a.LastHandshake != t0 {
		t.Fatalf("login: %+v, %v", a, err)
	}
	if a, _ = s.AgentHandshakeSeen("a", t0.Add(-time.Second)); a.LastHandshake != t0 {
		t.Fatalf("an older handshake lowered the time: %v", a.LastHandshake)
	}
	if a, _ = s.AgentHandshakeSeen("a", t0.Add(time.Second)); a.LastHandshake != t0.Add(time.Second) {
		t.Fatalf("a newer handshake: %v", a.LastHandshake)
	}
	login.At, login.HandshakeAt = t0.Add(time.Minute), t0
	if a, _ = s.AgentLoggedIn(login); a.LastHandshake != t0.Add(time.Second) || a.LastSeen != login.At {
		t.Fatalf("a login with an older handshake: %+v", a)
	}
	if _, err := decide(s, "a", StateRevoked); err != nil {
		t.Fatal(err)
	}
	login.At = t0.Add(time.Hour)
	if _, err := s.AgentLoggedIn(login); !errors.Is(err, ErrConflict) {
		t.Fatalf("login of a revoked agent: %v", err)
	}
	if a, _ = s.Agent("a"); a.LastSeen == login.At {
		t.Fatal("a refused login was recorded")
	}
}

// Only the code delivered is confirmed (wiped).
func TestCodeConfirmed(t *testing.T) {
	s := openTest(t)
	mustCreate(t, s, "a", "h1")
	a, err := decide(s, "a", StateApproved)
	if err != nil {
		t.Fatal(err)
	}
	if a, _ = s.ConfirmCode("a", creds(1).Code); len(a.PendingCode) != identity.CodeLen {
		t.Fatal("another code's confirmation wiped the pending code")
	}
	if a, _ = s.ConfirmCode("a", creds(9).Code); a.PendingCode != nil {
		t.Fatal("the delivered code's confirmation kept it")
	}
	if a, _ = s.Agent("a"); a.PendingCode != nil {
		t.Fatal("the wipe was not stored")
	}
}

// An agent's event is stored once however often it is resent; the
// MMC's own events (AgentSeq 0) every time.
func TestEventDedup(t *testing.T) {
	s := openTest(t)
	e := Event{Agent: "a", AgentSeq: 5, Kind: "vm-stopped", Alarm: true}
	for i, want := range []bool{true, false} {
		if added, err := s.AddEvent(e); err != nil || added != want {
			t.Fatalf("send %d: added %v, %v", i, added, err)
		}
	}
	for range 2 {
		if added, _ := s.AddEvent(Event{Kind: "host-name-taken", Alarm: true}); !added {
			t.Fatal("an MMC event was skipped")
		}
	}
	if evs, _ := s.Events(0, 0, true); len(evs) != 3 || evs[2].Seq != 3 {
		t.Fatalf("events %+v", evs)
	}
}

func TestTokenCreateOnce(t *testing.T) {
	s := openTest(t)
	if err := s.PutToken(Token{ID: "t1", UsesLeft: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutToken(Token{ID: "t1", UsesLeft: 100}); !errors.Is(err, ErrExists) {
		t.Fatalf("a second token with one id: %v", err)
	}
}

// Deduplicating an agent's events costs one entry an agent, however many
// events it sends: an authenticated agent cannot grow the database past
// the event log's retention by numbering events afresh.
func TestEventDedupBounded(t *testing.T) {
	s := openTest(t)
	for seq := uint64(1); seq <= 300; seq++ {
		if added, err := s.AddEvent(Event{Agent: "a", AgentSeq: seq, Kind: "log"}); err != nil || !added {
			t.Fatalf("event %d: added %v, %v", seq, added, err)
		}
	}
	for _, seq := range []uint64{1, 150, 300} {
		if added, _ := s.AddEvent(Event{Agent: "a", AgentSeq: seq, Kind: "log"}); added {
			t.Fatalf("resent event %d stored again", seq)
		}
	}
	if added, _ := s.AddEvent(Event{Agent: "b", AgentSeq: 1, Kind: "log"}); !added {
		t.Fatal("another agent's first event was taken for a resend")
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketEventsSeenV1) != nil {
			t.Error("the per-event set still exists")
		}
		if n := tx.Bucket(bucketEventsHigh).Stats().KeyN; n != 2 {
			t.Errorf("deduplication holds %d entries for 2 agents", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A database of an earlier version (one key an event seen) opens with its
// deduplication kept and the per-event set gone.
func TestEventsSeenFolded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mmc.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketEventsSeenV1)
		if err != nil {
			return err
		}
		for _, seq := range []uint64{3, 9, 4} {
			k := append([]byte("agent-a\x00"), binary.BigEndian.AppendUint64(nil, seq)...)
			if err := b.Put(k, []byte{1}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for seq, want := range map[uint64]bool{9: false, 5: false, 10: true} {
		if added, err := s.AddEvent(Event{Agent: "agent-a", AgentSeq: seq}); err != nil || added != want {
			t.Errorf("event %d after the upgrade: added %v (want %v), %v", seq, added, want, err)
		}
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketEventsSeenV1) != nil {
			t.Error("the per-event set survived the upgrade")
		}
		return nil
	})
}

// AgentExpire deletes a pending record enrolled at or before the cutoff,
// and nothing else: a decided agent, or a newer enrolment of the key,
// stays; an expired key can be created again.
func TestAgentExpire(t *testing.T) {
	s := openTest(t)
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	for _, id := range []string{"old", "new", "ok"} {
		enrolled := at
		if id == "new" {
			enrolled = at.Add(time.Hour)
		}
		if err := s.CreateAgent(Agent{ID: id, Name: id, State: StatePending, EnrolledAt: enrolled}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := decide(s, "ok", StateApproved); err != nil {
		t.Fatal(err)
	}
	cut := AgentExpire{EnrolledBefore: at, At: at.Add(24 * time.Hour)}
	for id, want := range map[string]error{"old": nil, "new": ErrConflict, "ok": ErrConflict, "gone": ErrNotFound} {
		c := cut
		c.ID = id
		a, err := s.ExpireAgent(c)
		if !errors.Is(err, want) || (want == nil && a.ID != id) {
			t.Errorf("expire %s: %+v %v, want %v", id, a, err, want)
		}
	}
	if _, err := s.Agent("old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired record still there: %v", err)
	}
	for _, id := range []string{"new", "ok"} {
		if _, err := s.Agent(id); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if err := s.CreateAgent(Agent{ID: "old", Name: "old", State: StatePending, EnrolledAt: at.Add(25 * time.Hour)}); err != nil {
		t.Fatalf("an expired key enrols again: %v", err)
	}
}
