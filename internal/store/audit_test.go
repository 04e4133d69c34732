package store

import (
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
)

// Retention: entries older than Before go, then the oldest beyond
// MaxEntries, in batches of Limit; what stays is the newest, contiguous.
func TestPruneAudit(t *testing.T) {
	s := openTest(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 100 {
		// One entry a day: entries 0..99 are days 0..99.
		if err := s.AppendAudit(AuditEntry{Time: t0.Add(time.Duration(i) * 24 * time.Hour), Actor: "admin", Action: fmt.Sprint("a", i), Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.PruneAudit(AuditPrune{}); err != nil || got.Removed != 0 || got.Left != 100 {
		t.Fatalf("a prune without limits: %+v %v", got, err)
	}
	// Age: everything before day 30 goes, in batches of 7.
	removed := 0
	for {
		got, err := s.PruneAudit(AuditPrune{Before: t0.Add(30 * 24 * time.Hour), Limit: 7})
		if err != nil {
			t.Fatal(err)
		}
		if got.Removed > 7 {
			t.Fatalf("a batch removed %d, limit 7", got.Removed)
		}
		removed += got.Removed
		if !got.More {
			if got.Left != 70 {
				t.Fatalf("left %d, want 70", got.Left)
			}
			break
		}
	}
	if removed != 30 {
		t.Fatalf("removed %d by age, want 30", removed)
	}
	entries, _ := s.Audit(0, 0)
	if len(entries) != 70 || entries[0].Action != "a30" || entries[0].Seq != 31 {
		t.Fatalf("after the age prune: %d entries, first %+v", len(entries), entries[0])
	}
	// Count: only the newest 25 stay.
	got, err := s.PruneAudit(AuditPrune{Before: t0, MaxEntries: 25})
	if err != nil || got.Removed != 45 || got.Left != 25 || got.More {
		t.Fatalf("count prune: %+v %v", got, err)
	}
	entries, _ = s.Audit(0, 0)
	if len(entries) != 25 || entries[0].Action != "a75" || entries[24].Action != "a99" {
		t.Fatalf("after the count prune: %d entries from %s", len(entries), entries[0].Action)
	}
	// New entries continue the sequence; the count stays right.
	if err := s.AppendAudit(AuditEntry{Time: t0, Actor: "admin", Action: "late", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PruneAudit(AuditPrune{MaxEntries: 25}); err != nil || got.Removed != 1 || got.Left != 25 {
		t.Fatalf("count prune after an append: %+v %v", got, err)
	}
	// Everything.
	if got, err := s.PruneAudit(AuditPrune{Before: t0.Add(1000 * 24 * time.Hour)}); err != nil || got.Removed != 25 || got.Left != 0 {
		t.Fatalf("prune all: %+v %v", got, err)
	}
	if got, err := s.PruneAudit(AuditPrune{Before: t0.Add(1000 * 24 * time.Hour)}); err != nil || got.Removed != 0 {
		t.Fatalf("prune of an empty log: %+v %v", got, err)
	}
}

// A revoked token approves nothing, whatever its uses left; revoking is
// recorded (who, when) and cannot be done twice; unknown ids are
// ErrNotFound.
func TestRevokeToken(t *testing.T) {
	s := openTest(t)
	now := time.Now()
	tok, id, hash, err := identity.NewToken(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutToken(Token{ID: id, Hash: hash, Created: now, Expires: now.Add(time.Hour), UsesLeft: 5}); err != nil {
		t.Fatal(err)
	}
	_, secret, _ := identity.ParseToken(tok)
	if _, err := s.UseToken(id, secret, now); err != nil {
		t.Fatal(err)
	}
	r, err := s.RevokeToken(id, "admin", now)
	if err != nil || !r.Revoked.Equal(now) || r.RevokedBy != "admin" || r.UsesLeft != 4 {
		t.Fatalf("revoke: %+v %v", r, err)
	}
	if _, err := s.UseToken(id, secret, now); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("use of a revoked token: %v", err)
	}
	if _, err := s.RevokeToken(id, "admin", now); !errors.Is(err, ErrConflict) {
		t.Fatalf("second revoke: %v", err)
	}
	if _, err := s.RevokeToken("0000000000000000", "admin", now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke of an unknown token: %v", err)
	}
	toks, _ := s.Tokens()
	if len(toks) != 1 || toks[0].Revoked.IsZero() || toks[0].Used != 1 {
		t.Fatalf("listed: %+v", toks)
	}
}

// AuditNewest lists from the newest down, bounded by limit and by after.
func TestAuditNewest(t *testing.T) {
	s := openTest(t)
	for i := range 5 {
		if err := s.AppendAudit(AuditEntry{Action: fmt.Sprint("a", i)}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.AuditNewest(0, 3)
	if err != nil || len(got) != 3 || got[0].Action != "a4" || got[2].Action != "a2" {
		t.Fatalf("newest 3: %+v %v", got, err)
	}
	if got, _ := s.AuditNewest(3, 0); len(got) != 2 || got[0].Action != "a4" || got[1].Action != "a3" {
		t.Fatalf("newest above 3: %+v", got)
	}
}

// An alarm is acknowledged once (a second acknowledgement keeps the
// first); a log line cannot be, nor an unknown number; the alarm keeps
// its place in the log.
func TestAlarmAck(t *testing.T) {
	s := openTest(t)
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	for _, alarm := range []bool{false, true} {
		if _, err := s.AddEvent(Event{Alarm: alarm, Kind: "k", Message: fmt.Sprint(alarm)}); err != nil {
			t.Fatal(err)
		}
	}
	e, err := s.AckAlarm(2, "admin", now)
	if err != nil || e.AckedBy != "admin" || !e.AckedAt.Equal(now) || e.Seq != 2 {
		t.Fatalf("ack: %+v %v", e, err)
	}
	if e, err := s.AckAlarm(2, "someone else", now.Add(time.Hour)); err != nil || e.AckedBy != "admin" || !e.AckedAt.Equal(now) {
		t.Fatalf("second ack: %+v %v", e, err)
	}
	if _, err := s.AckAlarm(1, "admin", now); !errors.Is(err, ErrNotAlarm) {
		t.Fatalf("ack of a log line: %v", err)
	}
	if _, err := s.AckAlarm(9, "admin", now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ack of an unknown number: %v", err)
	}
	got, err := s.Events(0, 0, true)
	if err != nil || len(got) != 1 || got[0].AckedBy != "admin" || got[0].Message != "true" {
		t.Fatalf("alarms after the ack: %+v %v", got, err)
	}
}
