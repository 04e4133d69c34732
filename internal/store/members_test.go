package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
)

func TestMembers(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ms, err := s.Members(); err != nil || len(ms) != 0 {
		t.Fatalf("fresh store: %v %v", ms, err)
	}
	at := time.Unix(1000, 0).UTC()
	if _, err := s.SetMember(Member{ID: "m1", Addr: "192.0.2.1:7946", Key: [32]byte{1}, Added: at}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMember(Member{ID: "m2", Addr: "192.0.2.2:7946", Key: [32]byte{2}, Added: at}); err != nil {
		t.Fatal(err)
	}
	// Another member's key or address is refused.
	if _, err := s.SetMember(Member{ID: "m3", Addr: "192.0.2.3:7946", Key: [32]byte{1}}); !errors.Is(err, ErrMemberConflict) {
		t.Fatalf("duplicate key: %v", err)
	}
	if _, err := s.SetMember(Member{ID: "m3", Addr: "192.0.2.2:7946", Key: [32]byte{3}}); !errors.Is(err, ErrMemberConflict) {
		t.Fatalf("duplicate address: %v", err)
	}
	// An update keeps when the member was added.
	m, err := s.SetMember(Member{ID: "m1", Addr: "192.0.2.9:7946", Key: [32]byte{1}, Admin: "https://x", Added: at.Add(time.Hour)})
	if err != nil || !m.Added.Equal(at) || m.Addr != "192.0.2.9:7946" {
		t.Fatalf("update: %+v %v", m, err)
	}
	if err := s.RemoveMember("m2"); err != nil {
		t.Fatal(err)
	}
	ms, err := s.Members()
	if err != nil || len(ms) != 1 || ms[0].ID != "m1" || ms[0].Admin != "https://x" {
		t.Fatalf("members: %+v %v", ms, err)
	}
}

// The fencing term grows by one with every leader and never goes back.
func TestLeaderTermGrows(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.FenceTerm(); got != 0 {
		t.Fatalf("fresh: %d", got)
	}
	for want := uint64(1); want <= 3; want++ {
		// A raft term that restarted low (a rebuilt cluster) does not
		// lower it.
		got, err := s.TakeLeaderTerm("m1", 1, time.Unix(0, 0))
		if err != nil || got != want {
			t.Fatalf("take %d: %d %v", want, got, err)
		}
	}
	if got, _ := s.FenceTerm(); got != 3 {
		t.Fatalf("FenceTerm %d", got)
	}
}

// A token admits only what it was created for.
func TestTokenPurpose(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	secret := []byte("secret")
	now := time.Unix(1000, 0)
	for _, tok := range []Token{
		{ID: "agent", Hash: identity.TokenHash(secret), Expires: now.Add(time.Hour), UsesLeft: 1},
		{ID: "mmc", Hash: identity.TokenHash(secret), Expires: now.Add(time.Hour), UsesLeft: 1, Purpose: PurposeMMC},
	} {
		if err := s.PutToken(tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UseTokenFor(PurposeMMC, "agent", secret, now); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("agent token used to join an MMC: %v", err)
	}
	if _, err := s.UseToken("mmc", secret, now); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("MMC token used to enrol an agent: %v", err)
	}
	if _, err := s.UseTokenFor(PurposeMMC, "mmc", secret, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UseToken("agent", secret, now); err != nil {
		t.Fatal(err)
	}
}

// A join spends its token and records the member in one transaction: a
// conflict spends nothing, a repeat of a committed join succeeds without
// spending, and the token admits no other member.
func TestMemberJoin(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Unix(1000, 0)
	secret := []byte("s")
	if err := s.PutToken(Token{ID: "t", Hash: identity.TokenHash(secret), Expires: now.Add(time.Hour), UsesLeft: 1, Purpose: PurposeMMC}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMember(Member{ID: "m1", Addr: "192.0.2.1:7946", Key: [32]byte{1}}); err != nil {
		t.Fatal(err)
	}
	// Another member's address: refused, the token unspent.
	if _, err := s.JoinMember("t", secret, Member{ID: "m2", Addr: "192.0.2.1:7946", Key: [32]byte{2}, Added: now}); !errors.Is(err, ErrMemberConflict) {
		t.Fatalf("conflicting join: %v", err)
	}
	m2 := Member{ID: "m2", Addr: "192.0.2.2:7946", Key: [32]byte{2}, Added: now}
	if _, err := s.JoinMember("t", secret, m2); err != nil {
		t.Fatalf("join after the conflict (token still unspent): %v", err)
	}
	if _, err := s.JoinMember("t", secret, m2); err != nil {
		t.Fatalf("the same join again: %v", err)
	}
	if _, err := s.JoinMember("t", secret, Member{ID: "m3", Addr: "192.0.2.3:7946", Key: [32]byte{3}, Added: now}); !errors.Is(err, ErrTokenUsedUp) {
		t.Fatalf("a second member with the spent token: %v", err)
	}
	if _, err := s.JoinMember("t", []byte("wrong"), m2); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("the same member with a wrong secret: %v", err)
	}
}
