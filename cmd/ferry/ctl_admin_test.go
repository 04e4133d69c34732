package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/mmc"
)

// The decision whether ctl may send the admin token to a URL.
func TestAdminURL(t *testing.T) {
	for _, tc := range []struct {
		in       string
		insecure bool
		want     string // "" = refused
	}{
		{"", false, "http://" + mmc.DefaultAdmin},
		{"127.0.0.1:7947", false, "http://127.0.0.1:7947"},
		{"http://127.0.0.1:7947", false, "http://127.0.0.1:7947"},
		{"http://127.8.9.10:7947", false, "http://127.8.9.10:7947"},
		{"http://localhost:7947", false, "http://localhost:7947"},
		{"http://LocalHost:7947", false, "http://LocalHost:7947"},
		{"http://[::1]:7947", false, "http://[::1]:7947"},
		{"[::1]:7947", false, "http://[::1]:7947"},
		{"http://[::ffff:127.0.0.1]:7947", false, "http://[::ffff:127.0.0.1]:7947"},
		{"https://10.0.0.5:7947", false, "https://10.0.0.5:7947"},
		{"https://mmc.example.org:7947", false, "https://mmc.example.org:7947"},
		{"10.0.0.5:7947", false, ""},
		{"http://10.0.0.5:7947", false, ""},
		{"http://mmc.example.org:7947", false, ""},
		{"http://0.0.0.0:7947", false, ""},
		{"http://127.0.0.1.example.org:7947", false, ""},
		{"http://localhost.example.org:7947", false, ""},
		{"http://[::]:7947", false, ""},
		{"10.0.0.5:7947", true, "http://10.0.0.5:7947"},
		{"http://10.0.0.5:7947", true, "http://10.0.0.5:7947"},
		{"ftp://127.0.0.1:7947", false, ""},
		{"ftp://10.0.0.5:7947", true, ""},
		{"https://", false, ""},
		{"http://user:pw@127.0.0.1:7947", false, ""},
		{"http://%zz", false, ""},
	} {
		got, err := adminURL(tc.in, tc.insecure)
		if tc.want == "" {
			if err == nil {
				t.Errorf("adminURL(%q, %v) = %q, want refused", tc.in, tc.insecure, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("adminURL(%q, %v) = %q, %v; want %q", tc.in, tc.insecure, got, err, tc.want)
		}
	}
	_, err := adminURL("10.0.0.5:7947", false)
	if err == nil || !strings.Contains(err.Error(), "clear text") || !strings.Contains(err.Error(), "https://10.0.0.5:7947") {
		t.Fatalf("refusal does not say why or what to do: %v", err)
	}
}

// ctl itself refuses before sending anything: a listener on a
// non-loopback-looking URL never sees a request.
func TestCtlRefusesPlainHTTPToRemote(t *testing.T) {
	tokenFile := writeToken(t, "secret-admin-token")
	_, err := runFerry(t, "ctl", "--admin", "192.0.2.1:7947", "--token-file", tokenFile, "agents", "list")
	if err == nil || !strings.Contains(err.Error(), "clear text") {
		t.Fatalf("ctl to a remote plain-HTTP admin: %v", err)
	}
	t.Setenv("FERRY_ADMIN", "http://192.0.2.1:7947")
	if _, err := runFerry(t, "ctl", "--token-file", tokenFile, "agents", "list"); err == nil || !strings.Contains(err.Error(), "clear text") {
		t.Fatalf("ctl with $FERRY_ADMIN remote plain HTTP: %v", err)
	}
}

func writeToken(t *testing.T, tok string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runFerry runs the ferry command line in-process and returns its stdout.
func runFerry(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// startMMC runs an MMC in-process with its admin API on loopback.
func startMMC(t *testing.T) (adminURL, tokenFile string) {
	t.Helper()
	s, err := mmc.New(mmc.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Admin: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = s.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return s.AdminURL(), s.AdminTokenFile()
}

// tokens create, list and revoke through ctl against a running MMC.
func TestCtlTokensListRevoke(t *testing.T) {
	url, tf := startMMC(t)
	ctl := func(args ...string) (string, error) {
		return runFerry(t, append([]string{"ctl", "--admin", url, "--token-file", tf}, args...)...)
	}
	out, err := ctl("tokens", "create", "--ttl", "2h", "--uses", "2", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var created api.Token
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Token == "" {
		t.Fatalf("create: %q %v", out, err)
	}
	tid, secret, err := identity.ParseToken(created.Token)
	if err != nil {
		t.Fatal(err)
	}
	out, err = ctl("tokens", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, created.Token) || strings.Contains(out, string(secret)) || strings.Contains(out, `"hash"`) {
		t.Fatalf("tokens list shows the secret or its hash: %s", out)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 {
		t.Fatalf("list: %s %v", out, err)
	}
	for _, k := range []string{"id", "expires", "uses_left"} {
		if _, ok := list[0][k]; !ok {
			t.Fatalf("token without %q: %v", k, list[0])
		}
	}
	if list[0]["id"] != tid || list[0]["uses_left"] != float64(2) || list[0]["state"] != "active" {
		t.Fatalf("listed %v", list[0])
	}
	if out, err = ctl("tokens", "revoke", tid); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %q %v", out, err)
	}
	if _, err = ctl("tokens", "revoke", tid); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("second revoke: %v", err)
	}
	out, err = ctl("tokens", "list")
	if err != nil || !strings.Contains(out, tid) || !strings.Contains(out, "revoked") || strings.Contains(out, created.Token) {
		t.Fatalf("human list: %q %v", out, err)
	}
	out, err = ctl("audit", "-o", "json")
	if err != nil || !strings.Contains(out, `"token.revoke"`) {
		t.Fatalf("audit after revoke: %s %v", out, err)
	}
	// Newest first by default; oldest first when following from --after.
	var newest, oldest []struct {
		Seq    uint64
		Action string
	}
	if out, err = ctl("audit", "-o", "json", "--limit", "2"); err != nil || json.Unmarshal([]byte(out), &newest) != nil {
		t.Fatalf("audit --limit 2: %s %v", out, err)
	}
	if len(newest) != 2 || newest[0].Action != "token.revoke" || newest[0].Seq <= newest[1].Seq {
		t.Fatalf("audit --limit 2: %+v, want the two newest, the revoke first", newest)
	}
	if out, err = ctl("audit", "-o", "json", "--after", "0", "--limit", "2"); err != nil || json.Unmarshal([]byte(out), &oldest) != nil {
		t.Fatalf("audit --after 0: %s %v", out, err)
	}
	if len(oldest) != 2 || oldest[0].Seq != 1 || oldest[1].Seq != 2 {
		t.Fatalf("audit --after 0 --limit 2: %+v, want entries 1 and 2", oldest)
	}
}

// Strings from agents reach the operator's terminal escaped in human
// output, and intact (JSON-escaped) in JSON output.
func TestCtlEscapesNetworkStrings(t *testing.T) {
	const evil = "web\x1b[2J\x1b]0;owned\x07\u202Eexe.txt\nfake\trow"
	now := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/agents", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode([]api.Agent{{ID: "a1", Hostname: evil, Name: evil, Site: "s", State: "pending",
			Facts: identity.Facts{Hostname: evil, DiskID: evil, MACs: []string{evil}}, EnrolledAt: now, Refusal: evil}})
	})
	mux.HandleFunc("GET /v1/logs", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode([]api.Event{{Seq: 1, Time: now, Host: evil, Level: "error", Kind: evil, Message: evil}})
	})
	mux.HandleFunc("GET /v1/audit", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode([]api.AuditEntry{{Seq: 1, Time: now, Actor: "key:x", Action: "enrol.request", Target: evil, Source: evil, Outcome: "ok", Detail: evil}})
	})
	mux.HandleFunc("GET /v1/hosts", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode([]api.Host{{ID: evil, Site: evil}})
	})
	mux.HandleFunc("POST /v1/agents/a1/approve", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		_ = json.NewEncoder(w).Encode(api.Error{Error: "agent says: " + evil})
	})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	tf := writeToken(t, "tok")
	for _, cmd := range [][]string{{"agents", "list"}, {"logs"}, {"audit"}, {"hosts", "list"}} {
		out, err := runFerry(t, append([]string{"ctl", "--admin", hs.URL, "--token-file", tf}, cmd...)...)
		if err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
		if strings.ContainsAny(out, "\x1b\x07\u202E\r") || !strings.Contains(out, `web\x1b[2J\x1b]0;owned\x07\u202eexe.txt\nfake\trow`) {
			t.Errorf("%v printed %q", cmd, out)
		}
		if n := strings.Count(out, "\n"); n != 2 {
			t.Errorf("%v: %d lines, want a header and one row: %q", cmd, n, out)
		}
		out, err = runFerry(t, append([]string{"ctl", "--admin", hs.URL, "--token-file", tf, "-o", "json"}, cmd...)...)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "\x1b") {
			t.Errorf("%v -o json: raw ESC in %q", cmd, out)
		}
		var v []map[string]any
		if err := json.Unmarshal([]byte(out), &v); err != nil || !strings.Contains(out, `\u001b[2J`) {
			t.Errorf("%v -o json: %v, %q", cmd, err, out)
		}
	}
	// An error quoting an agent is escaped too (main prints it).
	_, err := runFerry(t, "ctl", "--admin", hs.URL, "--token-file", tf, "agents", "approve", "a1")
	if err == nil || !strings.Contains(err.Error(), "502") {
		t.Fatalf("approve: %v", err)
	}
	var stderr bytes.Buffer
	printError(&stderr, err)
	if strings.ContainsAny(stderr.String(), "\x1b\x07\u202E") || strings.Count(stderr.String(), "\n") != 1 || !strings.Contains(stderr.String(), `web\x1b[2J`) {
		t.Fatalf("error printed as %q", stderr.String())
	}
}

// slog's text handler, which ferry mmc and ferry agent log with, quotes
// controls, ESC, C1 and bidi overrides in messages and values.
func TestLogLinesEscapeNetworkStrings(t *testing.T) {
	const evil = "h\x1b[2J\u009b\u202Ex\ny"
	var buf bytes.Buffer
	g := &globalFlags{logLevel: "info"}
	g.loggerTo(&buf).Info("enrolment from "+evil, "hostname", evil, "err", evil)
	out := buf.String()
	if strings.ContainsAny(out, "\x1b\u009b\u202E") || strings.Count(out, "\n") != 1 {
		t.Fatalf("log line %q", out)
	}
	if !strings.Contains(out, `hostname="h\x1b[2J\u009b\u202ex\ny"`) {
		t.Fatalf("log line does not quote the value: %q", out)
	}

	// --log-format json: one object per line, the same value back.
	buf.Reset()
	g.logFormat = "json"
	g.loggerTo(&buf).Info("enrolment from "+evil, "hostname", evil)
	out = buf.String()
	if strings.ContainsAny(out, "\x1b\u009b\u202E") || strings.Count(out, "\n") != 1 {
		t.Fatalf("json log line %q", out)
	}
	var line struct{ Level, Msg, Hostname string }
	if err := json.Unmarshal([]byte(out), &line); err != nil || line.Hostname != evil || line.Level != "INFO" {
		t.Fatalf("json log line %q: %+v %v", out, line, err)
	}
}

func TestLogFormatFlag(t *testing.T) {
	root := newRootCmd()
	root.SetArgs([]string{"version", "--log-format", "xml"})
	root.SetOut(io.Discard)
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "want text or json") {
		t.Fatalf("--log-format xml: %v", err)
	}
}

// ferry mmc --key-file keeps the key there: the data directory holds
// none (what docs/OPERATIONS.md tells operators to back up).
func TestMMCKeyFileFlag(t *testing.T) {
	data, keys := t.TempDir(), t.TempDir()
	keyFile := filepath.Join(keys, "mmc.key")
	root := newRootCmd()
	root.SetArgs([]string{"mmc", "--data-dir", data, "--key-file", keyFile, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--audit-max-age", "720h", "--audit-max-entries", "5000"})
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.ReadSecretFile(keyFile); err != nil {
		t.Fatalf("--key-file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, identity.KeyFile)); !os.IsNotExist(err) {
		t.Fatalf("the data directory holds %s (%v)", identity.KeyFile, err)
	}
	if _, err := os.Stat(filepath.Join(data, mmc.AdminTokenFile)); err != nil {
		t.Fatalf("no admin token in the data directory: %v", err)
	}
}
