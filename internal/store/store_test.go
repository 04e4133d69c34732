package store

import (
	"crypto/rand"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
)

func open(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mmc.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestAgentsSurviveReopen(t *testing.T) {
	s, path := open(t)
	a := Agent{ID: "a1", Name: "h1", State: StatePending, PublicKey: [32]byte{1}, Facts: identity.Facts{Hostname: "h1", DiskID: "d1"}}
	if err := s.CreateAgent(a); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DecideAgent(AgentDecide{ID: "a1", To: StateApproved, By: "admin", At: time.Now(), Credentials: creds(7)}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.Agent("a1")
	if err != nil || got.State != StateApproved || got.PSK != [32]byte{7} || got.Facts.DiskID != "d1" {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if _, err := s2.Agent("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	if err := s2.CreateAgent(Agent{ID: "a1", State: StatePending}); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateAgent over an existing record: %v", err)
	}
}

func TestUseToken(t *testing.T) {
	s, _ := open(t)
	now := time.Now()
	tok, id, hash, err := identity.NewToken(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutToken(Token{ID: id, Hash: hash, Created: now, Expires: now.Add(time.Hour), UsesLeft: 2}); err != nil {
		t.Fatal(err)
	}
	_, secret, _ := identity.ParseToken(tok)
	wrong := append([]byte(nil), secret...)
	wrong[0] ^= 1
	tests := []struct {
		name   string
		id     string
		secret []byte
		at     time.Time
		want   error
	}{
		{"guessed secret", id, wrong, now, ErrTokenInvalid},
		{"unknown id", "0000000000000000", secret, now, ErrTokenInvalid},
		{"first use", id, secret, now, nil},
		{"expired", id, secret, now.Add(2 * time.Hour), ErrTokenExpired},
		{"second use", id, secret, now, nil},
		{"used up", id, secret, now, ErrTokenUsedUp},
	}
	for _, tt := range tests {
		_, err := s.UseToken(tt.id, tt.secret, tt.at)
		if !errors.Is(err, tt.want) && !(tt.want == nil && err == nil) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestSingleUseTokenRace(t *testing.T) {
	s, _ := open(t)
	tok, id, hash, _ := identity.NewToken(rand.Reader)
	_, secret, _ := identity.ParseToken(tok)
	now := time.Now()
	if err := s.PutToken(Token{ID: id, Hash: hash, Expires: now.Add(time.Hour), UsesLeft: 1}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.UseToken(id, secret, now); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("single-use token accepted %d times", ok)
	}
}

func TestAudit(t *testing.T) {
	s, _ := open(t)
	for i := range 5 {
		if err := s.AppendAudit(AuditEntry{Time: time.Now(), Actor: "admin", Action: "agent.approve", Target: string(rune('a' + i)), Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.Audit(0, 0)
	if err != nil || len(all) != 5 || all[0].Seq != 1 || all[4].Seq != 5 || all[4].Target != "e" {
		t.Fatalf("audit: %+v %v", all, err)
	}
	page, _ := s.Audit(2, 2)
	if len(page) != 2 || page[0].Seq != 3 {
		t.Fatalf("page after 2: %+v", page)
	}
}

func TestMeta(t *testing.T) {
	s, _ := open(t)
	v, err := s.EnsureMeta("cluster", "c1")
	if err != nil || v != "c1" {
		t.Fatal(v, err)
	}
	if v, _ := s.EnsureMeta("cluster", "c2"); v != "c1" {
		t.Fatalf("EnsureMeta overwrote: %q", v)
	}
	if v, _ := s.Meta("cluster"); v != "c1" {
		t.Fatalf("Meta = %q", v)
	}
}

func TestPolicyVersions(t *testing.T) {
	s, _ := open(t)
	if doc, err := s.Policy(); err != nil || doc != nil {
		t.Fatalf("fresh store: %q %v", doc, err)
	}
	if err := s.PutPolicy([]byte(`{"version":2}`)); !errors.Is(err, ErrStale) {
		t.Fatalf("skipping a version: %v", err)
	}
	if err := s.PutPolicy([]byte(`{"version":1,"mode":"auto"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPolicy([]byte(`{"version":1}`)); !errors.Is(err, ErrStale) {
		t.Fatalf("reusing a version: %v", err)
	}
	if doc, _ := s.Policy(); string(doc) != `{"version":1,"mode":"auto"}` {
		t.Fatalf("stored %q", doc)
	}
}
