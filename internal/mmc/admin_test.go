package mmc

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
)

func newTestServer(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(Config{raftStart: testRaftStart, DataDir: t.TempDir(), Listen: "127.0.0.1:0", Admin: "-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	hs := httptest.NewServer(s.adminHandler())
	t.Cleanup(hs.Close)
	return s, hs
}

// TestAdminAPIBadInput: wrong or missing tokens, malformed JSON, unknown
// ids, unknown actions and conflicting decisions each get a clear error
// with the right status, change nothing, and never panic.
func TestAdminAPIBadInput(t *testing.T) {
	s, hs := newTestServer(t)
	now := time.Now()
	if err := s.st.CreateAgent(store.Agent{ID: "a1", State: store.StatePending, Facts: identity.Facts{Hostname: "h1"}, EnrolledAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.loadAgents(); err != nil {
		t.Fatal(err)
	}
	tok := s.AdminToken()
	tests := []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"no token", "GET", "/v1/agents", "", "", 401},
		{"wrong token", "GET", "/v1/agents", strings.Repeat("0", len(tok)), "", 401},
		{"token prefix", "GET", "/v1/agents", tok[:10], "", 401},
		{"bad state filter", "GET", "/v1/agents?state=zombie", tok, "", 400},
		{"unknown agent", "GET", "/v1/agents/nope", tok, "", 404},
		{"unknown action", "POST", "/v1/agents/a1/explode", tok, "{}", 404},
		{"approve unknown", "POST", "/v1/agents/nope/approve", tok, "{}", 404},
		{"revoke unknown", "POST", "/v1/agents/nope/revoke", tok, "{}", 404},
		{"malformed JSON", "POST", "/v1/tokens", tok, "{ttl:", 400},
		{"unknown field", "POST", "/v1/tokens", tok, `{"ttl":"1h","admin":true}`, 400},
		{"bad ttl", "POST", "/v1/tokens", tok, `{"ttl":"forever"}`, 400},
		{"negative uses", "POST", "/v1/tokens", tok, `{"ttl":"1h","uses":-1}`, 400},
		{"huge body", "POST", "/v1/tokens", tok, `{"ttl":"` + strings.Repeat("1", 2<<20) + `"}`, 400},
		{"bad audit paging", "GET", "/v1/audit?after=-1", tok, "", 400},
		{"no such endpoint", "GET", "/v2/everything", tok, "", 404},
		{"vm on unknown host", "POST", "/v1/vms", tok, `{"name":"v1","host":"nowhere"}`, 404},
		{"vm with a bad name", "POST", "/v1/vms", tok, `{"name":"../v","host":"h"}`, 400},
		{"vm with a bad workload", "POST", "/v1/vms", tok, `{"name":"v","host":"h","workload":"cpu=7"}`, 400},
		{"vm malformed", "POST", "/v1/vms", tok, `[1,2`, 400},
		{"delete unknown vm", "DELETE", "/v1/vms/ghost", tok, "", 404},
		{"policy malformed", "PUT", "/v1/policy", tok, `{"mode":`, 400},
		{"policy invalid", "PUT", "/v1/policy", tok, `{"mode":"yolo"}`, 400},
		{"policy unknown field", "PUT", "/v1/policy", tok, `{"mood":"auto"}`, 400},
		{"logs bad paging", "GET", "/v1/logs?limit=x", tok, "", 400},
		{"wrong method", "DELETE", "/v1/agents", tok, "", 404},
		{"unknown migration", "GET", "/v1/migrations/m99", tok, "", 404},
		{"workload malformed", "POST", "/v1/vms/v/workload", tok, `{"workload":`, 400},
		{"workload invalid", "POST", "/v1/vms/v/workload", tok, `{"workload":"cpu=3"}`, 400},
		{"workload of an unknown VM", "POST", "/v1/vms/ghost/workload", tok, `{"workload":"cpu=0.5"}`, 404},
		{"cancel unknown migration", "POST", "/v1/migrations/m99/cancel", tok, "{}", 404},
		{"migrate malformed", "POST", "/v1/migrations", tok, `{"vm":`, 400},
		{"migrate without a destination", "POST", "/v1/migrations", tok, `{"vm":"v"}`, 400},
		{"migrate a VM nobody runs", "POST", "/v1/migrations", tok, `{"vm":"ghost","to":"h1"}`, 404},
		{"migrate with a negative cap", "POST", "/v1/migrations", tok, `{"vm":"v","to":"h","max_bandwidth":-1}`, 400},
		{"migrate with negative rounds", "POST", "/v1/migrations", tok, `{"vm":"v","to":"h","max_rounds":-1}`, 400},
		{"migrate with a thousand and one rounds", "POST", "/v1/migrations", tok, `{"vm":"v","to":"h","max_rounds":1001}`, 400},
		{"migrate with a negative downtime", "POST", "/v1/migrations", tok, `{"vm":"v","to":"h","downtime_limit_ms":-5}`, 400},
		{"migrate with a two-minute downtime", "POST", "/v1/migrations", tok, `{"vm":"v","to":"h","downtime_limit_ms":120000}`, 400},
		{"migrate with post-copy as a string", "POST", "/v1/migrations", tok, `{"vm":"v","to":"h","postcopy":"yes"}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, hs.URL+tt.path, bytes.NewBufferString(tt.body))
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e api.Error
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error == "" {
				t.Fatalf("status %d without a JSON error body (%v)", resp.StatusCode, err)
			}
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, e.Error, tt.want)
			}
		})
	}
	// Nothing changed: the agent is still pending, no token exists.
	if a, err := s.st.Agent("a1"); err != nil || a.State != store.StatePending {
		t.Fatalf("agent after bad input: %+v %v", a, err)
	}
	if toks, _ := s.st.Tokens(); len(toks) != 0 {
		t.Fatalf("%d tokens created by bad requests", len(toks))
	}
	if doc, _ := s.st.Policy(); doc != nil {
		t.Fatalf("a bad request stored a policy: %s", doc)
	}
	// Auth failures are audited.
	entries, _ := s.st.Audit(0, 0)
	denied := 0
	for _, e := range entries {
		if e.Action == "admin.auth" && e.Outcome == "denied" {
			denied++
		}
	}
	if denied != 3 {
		t.Fatalf("%d audited auth failures, want 3", denied)
	}

	// The happy path through the client, and a conflicting second decision.
	cl := &api.Client{Base: hs.URL, Token: tok}
	a, err := cl.AgentAction(t.Context(), "a1", "reject")
	if err != nil || a.State != "rejected" {
		t.Fatalf("reject: %+v %v", a, err)
	}
	if _, err := cl.AgentAction(t.Context(), "a1", "approve"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("approving a rejected agent: %v, want HTTP 409", err)
	}
	tk, err := cl.CreateToken(t.Context(), time.Hour, 3)
	if err != nil || !strings.HasPrefix(tk.Token, "fjt1.") || tk.Uses != 3 {
		t.Fatalf("token: %+v %v", tk, err)
	}
	stored, _ := s.st.Tokens()
	if len(stored) != 1 || bytes.Contains([]byte(tk.Token), stored[0].Hash[:]) {
		t.Fatal("token not stored as a hash")
	}
}

// GET /v1/migrations?limit=N lists the newest N; a bad limit is refused.
func TestMigrationsLimit(t *testing.T) {
	s, hs := newTestServer(t)
	for _, vm := range []string{"a", "b", "c"} {
		if _, err := s.st.CreateMigration(migration.Record{VM: vm, From: "h1", To: "h2", State: migration.Completed}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(q string) (*http.Response, []api.Migration) {
		req, _ := http.NewRequest("GET", hs.URL+"/v1/migrations"+q, nil)
		req.Header.Set("Authorization", "Bearer "+s.AdminToken())
		res, err := hs.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var ms []api.Migration
		_ = json.NewDecoder(res.Body).Decode(&ms)
		return res, ms
	}
	if res, ms := get("?limit=2"); res.StatusCode != 200 || len(ms) != 2 || ms[0].VM != "b" || ms[1].VM != "c" {
		t.Fatalf("limit=2: %d %+v", res.StatusCode, ms)
	}
	if _, ms := get(""); len(ms) != 3 {
		t.Fatalf("no limit: %d records", len(ms))
	}
	for _, bad := range []string{"?limit=0", "?limit=-1", "?limit=x"} {
		if res, _ := get(bad); res.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d", bad, res.StatusCode)
		}
	}
}
