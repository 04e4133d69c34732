package mmc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/store"
)

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClockedServer(t *testing.T, cfg Config) (*Server, *httptest.Server, *testClock) {
	t.Helper()
	clk := &testClock{t: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)}
	cfg.DataDir, cfg.Listen, cfg.Admin, cfg.Now = t.TempDir(), "127.0.0.1:0", "-", clk.Now
	cfg.raftStart = testRaftStart
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	hs := httptest.NewServer(s.adminHandler())
	t.Cleanup(hs.Close)
	return s, hs, clk
}

func countAudit(t *testing.T, s *Server, action string) (n int, last store.AuditEntry) {
	t.Helper()
	entries, err := s.st.Audit(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Action == action {
			n++
			last = e
		}
	}
	return n, last
}

// A flood of requests with a wrong admin token costs a bounded number of
// audit writes a minute (each a new connection: the port is no new
// source), counted, and summed up in one entry when the minute ends.
func TestAuditFloodOfFailedLoginsIsBounded(t *testing.T) {
	s, hs, clk := newClockedServer(t, Config{})
	const flood = 300
	for i := range flood {
		req, _ := http.NewRequest("GET", hs.URL+"/v1/agents", nil)
		req.Header.Set("Authorization", "Bearer guess"+fmt.Sprint(i))
		req.Close = true
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	n, _ := countAudit(t, s, "admin.auth")
	if n != defaultThrottle.PerSource {
		t.Fatalf("%d failed logins audited from one source in a minute, want %d", n, defaultThrottle.PerSource)
	}
	if got := testutil.ToFloat64(s.metrics.auditThrottled); got != flood-float64(defaultThrottle.PerSource) {
		t.Fatalf("ferry_mmc_audit_throttled_total %v, want %d", got, flood-defaultThrottle.PerSource)
	}
	clk.Add(time.Minute)
	s.audit.flushSuppressed()
	sums, sum := countAudit(t, s, "audit.suppressed")
	if sums != 1 || sum.Source != "127.0.0.1" || !strings.Contains(sum.Detail, fmt.Sprintf("suppressed %d similar", flood-defaultThrottle.PerSource)) ||
		!strings.Contains(sum.Detail, "admin.auth×") {
		t.Fatalf("%d summaries, last %+v", sums, sum)
	}
	// A new minute: the source may be audited again.
	req, _ := http.NewRequest("GET", hs.URL+"/v1/agents", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n, _ := countAudit(t, s, "admin.auth"); n != defaultThrottle.PerSource+1 {
		t.Fatalf("%d failed logins audited after the minute, want %d", n, defaultThrottle.PerSource+1)
	}
	// Authenticated actions are never throttled.
	cl := &api.Client{Base: hs.URL, Token: s.AdminToken()}
	for range 2 * defaultThrottle.PerSource {
		if _, err := cl.CreateToken(t.Context(), time.Hour, 1); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := countAudit(t, s, "token.create"); n != 2*defaultThrottle.PerSource {
		t.Fatalf("%d token creations audited, want %d", n, 2*defaultThrottle.PerSource)
	}
}

// The throttle alone, with many sources: per source, overall, the sources
// tracked and the summaries are each bounded, and nothing is lost from
// the counts.
func TestAuditThrottle(t *testing.T) {
	cfg := throttleConfig{Window: time.Minute, PerSource: 3, Total: 20, MaxSummaries: 4, MaxSources: 50}
	th := newAuditThrottle(cfg)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if th.roll(t0) != nil {
		t.Fatal("summaries before any window")
	}
	written, suppressed := 0, 0
	for i := range 10_000 {
		// 100 sources (twice MaxSources), each connection a new port.
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 100)}), uint16(1024+i)).String()
		if th.admit(src, "admin.auth") {
			written++
		} else {
			suppressed++
		}
	}
	if written != cfg.Total {
		t.Fatalf("%d written in a window, want the total bound %d", written, cfg.Total)
	}
	if th.roll(t0.Add(59*time.Second)) != nil {
		t.Fatal("summaries before the window ended")
	}
	sums := th.roll(t0.Add(time.Minute))
	if len(sums) != cfg.MaxSummaries+1 {
		t.Fatalf("%d summaries, want %d", len(sums), cfg.MaxSummaries+1)
	}
	total := 0
	for _, s := range sums {
		var n int
		if _, err := fmt.Sscanf(s.Detail, "suppressed %d", &n); err != nil {
			t.Fatalf("summary %q: %v", s.Detail, err)
		}
		total += n
	}
	if total != suppressed {
		t.Fatalf("summaries count %d suppressed entries, %d were", total, suppressed)
	}
	if last := sums[len(sums)-1]; last.Source != "*" || !strings.Contains(last.Detail, "other sources") {
		t.Fatalf("last summary %+v", last)
	}
	if th.roll(t0.Add(2*time.Minute)) != nil {
		t.Fatal("summaries of a quiet window")
	}
}

func TestAuditSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:5555":                     "192.0.2.7",
		"192.0.2.7":                          "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:7":           "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:9":           "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:1":               "192.0.2.7",
		"not an address":                     "not an address",
		"[fe80::1%eth0]:1":                   "fe80::/64",
		strings.Repeat("x", 2*auditFieldMax): strings.Repeat("x", auditFieldMax) + "…",
	} {
		if got := sourceKey(in); got != want {
			t.Errorf("sourceKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// Retention: entries older than the age limit and beyond the count limit
// go; the pruning is audited once.
func TestAuditRetention(t *testing.T) {
	s, _, clk := newClockedServer(t, Config{})
	now := clk.Now()
	for i := range 50 {
		// Entries 0..49, one a day, the newest today.
		if err := s.st.AppendAudit(store.AuditEntry{Time: now.Add(-time.Duration(49-i) * 24 * time.Hour), Actor: "admin", Action: fmt.Sprint("old", i), Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := s.audit.prune(t.Context(), 30*24*time.Hour, 1000)
	if err != nil || removed != 19 {
		t.Fatalf("age prune removed %d (%v), want 19", removed, err)
	}
	entries, _ := s.st.Audit(0, 0)
	if len(entries) != 32 || entries[0].Action != "old19" || entries[31].Action != "audit.prune" {
		t.Fatalf("%d entries left, from %s to %s", len(entries), entries[0].Action, entries[len(entries)-1].Action)
	}
	if n, e := countAudit(t, s, "audit.prune"); n != 1 || !strings.Contains(e.Detail, "removed 19 entries") {
		t.Fatalf("%d prune entries, %+v", n, e)
	}
	removed, err = s.audit.prune(t.Context(), -1, 10)
	if err != nil || removed != 22 {
		t.Fatalf("count prune removed %d (%v), want 22", removed, err)
	}
	if n, _ := countAudit(t, s, "audit.prune"); n != 2 {
		t.Fatalf("%d prune entries after two prunes, want 2", n)
	}
	// Nothing to remove: nothing audited.
	if removed, err = s.audit.prune(t.Context(), 30*24*time.Hour, 1000); err != nil || removed != 0 {
		t.Fatalf("third prune removed %d (%v)", removed, err)
	}
	if n, _ := countAudit(t, s, "audit.prune"); n != 2 {
		t.Fatalf("%d prune entries after a prune that removed nothing, want 2", n)
	}
	if got := testutil.ToFloat64(s.metrics.auditPruned); got != 41 {
		t.Fatalf("ferry_mmc_audit_pruned_total %v, want 41", got)
	}
}

// tokens list shows id, state, expiry and uses, never the secret or its
// hash; a revoked token enrols no one; revocation is audited, once.
func TestTokensListAndRevoke(t *testing.T) {
	s, hs, clk := newClockedServer(t, Config{})
	cl := &api.Client{Base: hs.URL, Token: s.AdminToken()}
	t1, err := cl.CreateToken(t.Context(), time.Hour, 3)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := cl.CreateToken(t.Context(), time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Minute) // t2 expires
	req, _ := http.NewRequest("GET", hs.URL+"/v1/tokens", nil)
	req.Header.Set("Authorization", "Bearer "+s.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	stored, _ := s.st.Tokens()
	for _, secret := range []string{t1.Token, t2.Token, strings.TrimPrefix(t1.Token, "fjt1.")} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("tokens list shows a secret: %s", raw)
		}
	}
	for _, st := range stored {
		h, _ := json.Marshal(st.Hash)
		if bytes.Contains(raw, h) || bytes.Contains(raw, []byte(`"hash"`)) {
			t.Fatalf("tokens list shows a hash: %s", raw)
		}
	}
	var list []map[string]any
	if err := json.Unmarshal(raw, &list); err != nil || len(list) != 2 {
		t.Fatalf("list %s: %v", raw, err)
	}
	states := map[string]string{}
	for _, o := range list {
		for _, k := range []string{"id", "expires", "uses_left"} {
			if _, ok := o[k]; !ok {
				t.Fatalf("token without %q: %v", k, o)
			}
		}
		states[o["id"].(string)] = o["state"].(string)
	}
	if states[t1.ID] != "active" || states[t2.ID] != "expired" {
		t.Fatalf("states %v", states)
	}

	r, err := cl.RevokeToken(t.Context(), t1.ID)
	if err != nil || r.State != "revoked" || r.Revoked == nil || r.UsesLeft != 3 {
		t.Fatalf("revoke: %+v %v", r, err)
	}
	var se *api.StatusError
	if _, err := cl.RevokeToken(t.Context(), t1.ID); !errors.As(err, &se) || se.Status != http.StatusConflict {
		t.Fatalf("second revoke: %v, want 409", err)
	}
	if _, err := cl.RevokeToken(t.Context(), "0000000000000000"); !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Fatalf("revoke of an unknown token: %v, want 404", err)
	}
	if _, err := cl.RevokeToken(t.Context(), "../../agents"); !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Fatalf("revoke of a path: %v, want 404", err)
	}
	// The enrolment path's check refuses it, and it has all its uses.
	if _, err := s.checkToken(t1.Token, netip.MustParseAddr("192.0.2.1"), clk.Now()); !errors.Is(err, store.ErrTokenRevoked) {
		t.Fatalf("enrolment with a revoked token: %v", err)
	}
	toks, _ := cl.Tokens(t.Context())
	for _, tk := range toks {
		if tk.ID == t1.ID && (tk.UsesLeft != 3 || tk.Used != 0 || tk.State != "revoked") {
			t.Fatalf("revoked token after an attempt: %+v", tk)
		}
	}
	if n, e := countAudit(t, s, "token.revoke"); n != 1 || e.Target != t1.ID || e.Actor != "admin" {
		t.Fatalf("%d token.revoke entries, last %+v", n, e)
	}
}

// With --key-file, the MMC's private key lives there and nowhere in the
// data directory (so a backup of that directory holds no key), and a
// restart uses the same key.
func TestKeyFileOutsideDataDir(t *testing.T) {
	dataDir, keyDir := t.TempDir(), t.TempDir()
	keyFile := filepath.Join(keyDir, "keys", "mmc.key")
	start := func() string {
		s, err := New(Config{raftStart: testRaftStart, DataDir: dataDir, KeyFile: keyFile, Listen: "127.0.0.1:0", Admin: "-"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		return s.Bundle().MMCs[0].Key
	}
	first := start()
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	err = filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == identity.KeyFile {
			t.Errorf("the data directory holds a key: %s", path)
		}
		if !d.IsDir() {
			b, _ := os.ReadFile(path)
			raw, _ := identity.ReadSecretFile(keyFile)
			if k := bytes.TrimSpace(raw); len(k) > 0 && bytes.Contains(b, k) {
				t.Errorf("%s contains the private key", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if again := start(); again != first {
		t.Fatalf("restart with the same --key-file: key %s, was %s", again, first)
	}
	// Without --key-file: DATA/node.key, as before.
	dir := t.TempDir()
	s, err := New(Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "-"})
	if err != nil {
		t.Fatal(err)
	}
	s.close()
	if _, err := os.Stat(filepath.Join(dir, identity.KeyFile)); err != nil {
		t.Fatalf("default key file: %v", err)
	}
}

// A running MMC prunes at start with its configured limits.
func TestRunPrunesAuditAtStart(t *testing.T) {
	s, err := New(Config{raftStart: testRaftStart, DataDir: t.TempDir(), Listen: "127.0.0.1:0", Admin: "-", AuditMaxEntries: 5, AuditMaxAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := s.st.AppendAudit(store.AuditEntry{Time: time.Unix(int64(i), 0), Actor: "admin", Action: fmt.Sprint("e", i), Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := s.st.Audit(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 6 && entries[0].Action == "e15" && entries[5].Action == "audit.prune" &&
			strings.Contains(entries[5].Detail, "removed 15 entries beyond the newest 5") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not pruned at start: %d entries, %+v", len(entries), entries[len(entries)-1])
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestAuditAsyncRepeatsBySourceAddress: the handshake path's repeat
// filter is keyed by the source address (an IPv6 /64), not address and
// port: one host replaying a captured initiation from ever new ports
// queued an entry per packet, filling the queue — so other refusals were
// dropped unwritten — and clearing the filter for everyone once 4 096
// ports had been used.
func TestAuditAsyncRepeatsBySourceAddress(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	a := newAuditor(nil, slog.New(slog.DiscardHandler), newMetrics(), func() time.Time { return now })
	for port := range 200 {
		a.async(store.AuditEntry{Actor: "key:x", Action: "login.replay", Target: "x", Source: fmt.Sprintf("192.0.2.7:%d", 1000+port), Outcome: "denied"})
	}
	a.async(store.AuditEntry{Actor: "key:y", Action: "login.refused", Target: "y", Source: "198.51.100.1:4000", Outcome: "denied"})
	if n := len(a.queue); n != 2 {
		t.Fatalf("%d entries queued for one replaying host (200 ports) and one other refusal, want 2", n)
	}
}
