package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
)

// runFerryStreams runs the ferry command line in-process and returns its
// stdout, its stderr (what commands print there, and the error as main
// prints it) and the exit status main would use.
func runFerryStreams(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	if err != nil {
		printError(&errOut, err)
	}
	return out.String(), errOut.String(), exitCode(err)
}

// mmcsRequest is what the fake admin API saw of one request.
type mmcsRequest struct {
	Method, Path string
	Body         string
}

// fakeClusterAdmin serves the cluster endpoints with members, checking
// the bearer token and recording every request.
func fakeClusterAdmin(t *testing.T, members []api.MMCMember) (url string, seen func() []mmcsRequest) {
	t.Helper()
	reqs := make(chan mmcsRequest, 16)
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, r *http.Request, status int, v any) {
		if r.Header.Get("Authorization") != "Bearer mmcs-tok" {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(api.Error{Error: "bad token"})
			return
		}
		b, _ := io.ReadAll(r.Body)
		reqs <- mmcsRequest{Method: r.Method, Path: r.URL.EscapedPath(), Body: strings.TrimSpace(string(b))}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /v1/cluster/members", func(w http.ResponseWriter, r *http.Request) {
		reply(w, r, http.StatusOK, members)
	})
	mux.HandleFunc("POST /v1/cluster/join-tokens", func(w http.ResponseWriter, r *http.Request) {
		reply(w, r, http.StatusOK, api.JoinToken{Token: "mmc-join-secret", ID: "jt1", Expires: time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)})
	})
	mux.HandleFunc("DELETE /v1/cluster/members/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "gone" {
			reply(w, r, http.StatusNotFound, api.Error{Error: "no member gone"})
			return
		}
		reply(w, r, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST /v1/cluster/leadership", func(w http.ResponseWriter, r *http.Request) {
		reply(w, r, http.StatusOK, api.LeadershipResult{Leader: "mmc-b"})
	})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL, func() []mmcsRequest {
		var out []mmcsRequest
		for {
			select {
			case r := <-reqs:
				out = append(out, r)
			default:
				return out
			}
		}
	}
}

func threeMMCs() []api.MMCMember {
	ms := int64(42)
	return []api.MMCMember{
		{ID: "mmc-a", Address: "10.0.0.1:7946", Admin: "https://10.0.0.1:7947", State: "leader", Voter: true, Term: 7, AppliedIndex: 1234},
		{ID: "mmc-b", Address: "10.0.1.1:7946", Admin: "https://10.0.1.1:7947", State: "follower", Voter: true, Term: 7, AppliedIndex: 1233, LastContactMS: &ms},
		{ID: "mmc-c", Address: "10.0.2.1:7946", Admin: "https://10.0.2.1:7947", State: "unreachable", Error: "dial: timeout"},
	}
}

// Every `ferry ctl mmcs` command sends its request to the contract's
// endpoint with the admin token, and prints what CLI.md promises.
func TestCtlMMCs(t *testing.T) {
	members := threeMMCs()
	url, seen := fakeClusterAdmin(t, members)
	tf := writeToken(t, "mmcs-tok")
	ctl := func(args ...string) (string, string, int) {
		return runFerryStreams(t, append([]string{"ctl", "--admin", url, "--token-file", tf}, args...)...)
	}
	expect := func(cmd string, want ...mmcsRequest) {
		t.Helper()
		if got := seen(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s sent %+v, want %+v", cmd, got, want)
		}
	}

	// list -o json: the objects, with at least the fields CLI.md names.
	out, errOut, code := ctl("mmcs", "list", "-o", "json")
	if code != 0 {
		t.Fatalf("mmcs list -o json: exit %d, %s", code, errOut)
	}
	expect("list", mmcsRequest{Method: "GET", Path: "/v1/cluster/members"})
	var got []api.MMCMember
	if err := json.Unmarshal([]byte(out), &got); err != nil || !reflect.DeepEqual(got, members) {
		t.Fatalf("mmcs list -o json: %v\n%s", err, out)
	}
	var raw []map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil || len(raw) != 3 {
		t.Fatalf("mmcs list -o json: %v\n%s", err, out)
	}
	for _, k := range []string{"id", "address", "admin", "state", "voter"} {
		if _, ok := raw[2][k]; !ok {
			t.Errorf("mmcs list -o json: a member without %q: %v", k, raw[2])
		}
	}

	// list: a header and one row per member, with the follower's last
	// contact and the unreachable member's error.
	out, errOut, code = ctl("mmcs", "list")
	if code != 0 {
		t.Fatalf("mmcs list: exit %d, %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") {
		t.Fatalf("mmcs list printed %q", out)
	}
	for i, want := range [][]string{
		{"mmc-a", "10.0.0.1:7946", "https://10.0.0.1:7947", "leader", "true", "7", "1234", "-"},
		{"mmc-b", "10.0.1.1:7946", "https://10.0.1.1:7947", "follower", "true", "7", "1233", "42ms"},
		{"mmc-c", "10.0.2.1:7946", "https://10.0.2.1:7947", "unreachable", "false", "-", "-", "-", "dial:", "timeout"},
	} {
		if f := strings.Fields(lines[i+1]); !reflect.DeepEqual(f, want) {
			t.Errorf("mmcs list row %d: %q, want %q", i, f, want)
		}
	}
	expect("list", mmcsRequest{Method: "GET", Path: "/v1/cluster/members"})

	// join-token -o json: the token object; --ttl reaches the server.
	out, errOut, code = ctl("mmcs", "join-token", "--ttl", "30m", "-o", "json")
	if code != 0 {
		t.Fatalf("mmcs join-token: exit %d, %s", code, errOut)
	}
	expect("join-token --ttl 30m", mmcsRequest{Method: "POST", Path: "/v1/cluster/join-tokens", Body: `{"ttl":"30m0s"}`})
	var tok map[string]any
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok["token"] != "mmc-join-secret" {
		t.Fatalf("mmcs join-token -o json: %v\n%s", err, out)
	}

	// join-token: the token alone on stdout (for $(...)), the hint on
	// stderr without repeating the secret; no --ttl leaves it to the MMC.
	out, errOut, code = ctl("mmcs", "join-token")
	if code != 0 || out != "mmc-join-secret\n" {
		t.Fatalf("mmcs join-token: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if !strings.Contains(errOut, "ferry mmc --data-dir DIR --listen UDPADDR --admin HTTPADDR --join BUNDLE --join-token TOKEN") ||
		strings.Contains(errOut, "mmc-join-secret") {
		t.Errorf("mmcs join-token hint: %q", errOut)
	}
	expect("join-token", mmcsRequest{Method: "POST", Path: "/v1/cluster/join-tokens", Body: `{}`})

	out, errOut, code = ctl("mmcs", "remove", "mmc-c")
	if code != 0 || out != "MMC mmc-c removed from the cluster\n" {
		t.Fatalf("mmcs remove: exit %d, %q, %s", code, out, errOut)
	}
	expect("remove", mmcsRequest{Method: "DELETE", Path: "/v1/cluster/members/mmc-c"})
	out, _, code = ctl("mmcs", "remove", "mmc-c", "-o", "json")
	if code != 0 || !strings.Contains(out, `"id": "mmc-c"`) {
		t.Fatalf("mmcs remove -o json: exit %d, %q", code, out)
	}
	expect("remove -o json", mmcsRequest{Method: "DELETE", Path: "/v1/cluster/members/mmc-c"})
	// The MMC's refusal is the command's error: exit 1, saying why.
	_, errOut, code = ctl("mmcs", "remove", "gone")
	if code != 1 || !strings.Contains(errOut, "no member gone (HTTP 404)") {
		t.Fatalf("mmcs remove of an unknown member: exit %d, %q", code, errOut)
	}
	expect("remove gone", mmcsRequest{Method: "DELETE", Path: "/v1/cluster/members/gone"})

	out, errOut, code = ctl("mmcs", "transfer-leadership")
	if code != 0 || out != "leadership transferred to mmc-b\n" {
		t.Fatalf("mmcs transfer-leadership: exit %d, %q, %s", code, out, errOut)
	}
	expect("transfer-leadership", mmcsRequest{Method: "POST", Path: "/v1/cluster/leadership", Body: `{}`})
	out, errOut, code = ctl("mmcs", "transfer-leadership", "mmc-b", "-o", "json")
	var lr api.LeadershipResult
	if code != 0 || json.Unmarshal([]byte(out), &lr) != nil || lr.Leader != "mmc-b" {
		t.Fatalf("mmcs transfer-leadership mmc-b -o json: exit %d, %q, %s", code, out, errOut)
	}
	expect("transfer-leadership mmc-b", mmcsRequest{Method: "POST", Path: "/v1/cluster/leadership", Body: `{"id":"mmc-b"}`})

	// A wrong admin token is refused by the MMC, and ctl says so.
	wrong := writeToken(t, "not-the-token")
	_, errOut, code = runFerryStreams(t, "ctl", "--admin", url, "--token-file", wrong, "mmcs", "list")
	if code != 1 || !strings.Contains(errOut, "HTTP 401") {
		t.Fatalf("mmcs list with a wrong token: exit %d, %q", code, errOut)
	}
}

// A typo or a wrong argument count under `ctl mmcs` is a usage error
// (status 2) and sends nothing.
func TestCtlMMCsUsage(t *testing.T) {
	url, seen := fakeClusterAdmin(t, nil)
	tf := writeToken(t, "mmcs-tok")
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"mmcs", "lst"}, 2, "Did you mean list?"},
		{[]string{"mmcz"}, 2, "Did you mean mmcs?"},
		{[]string{"mmcs", "remove"}, 2, "Run 'ferry ctl mmcs remove --help'"},
		{[]string{"mmcs", "remove", "a", "b"}, 2, "Run 'ferry ctl mmcs remove --help'"},
		{[]string{"mmcs", "transfer-leadership", "a", "b"}, 2, "Run 'ferry ctl mmcs transfer-leadership --help'"},
		{[]string{"mmcs", "list", "extra"}, 2, "unknown command"},
		{[]string{"mmcs", "join-token", "--ttl", "soon"}, 2, "invalid argument"},
		{[]string{"mmcs", "join-token", "--ttl", "-1h"}, 1, "negative validity"},
		{[]string{"mmcs"}, 0, ""},
	} {
		stdout, stderr, code := runFerryStreams(t, append([]string{"ctl", "--admin", url, "--token-file", tf}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.says) {
			t.Errorf("ferry ctl %s: exit %d, stderr %q; want exit %d saying %q", strings.Join(tc.args, " "), code, stderr, tc.code, tc.says)
		}
		if tc.code == 0 && !strings.Contains(stdout, "transfer-leadership") {
			t.Errorf("ferry ctl %s: help without the subcommands: %q", strings.Join(tc.args, " "), stdout)
		}
	}
	if got := seen(); len(got) != 0 {
		t.Errorf("usage errors sent requests: %+v", got)
	}
}

// What members report about themselves — ids, addresses, errors — is
// escaped in the table and intact in JSON.
func TestCtlMMCsEscapes(t *testing.T) {
	const evil = "m\x1b[2J\x1b]0;owned\x07\u202Eexe\nfake\trow"
	url, _ := fakeClusterAdmin(t, []api.MMCMember{{ID: evil, Address: evil, Admin: evil, State: evil, Error: evil}})
	tf := writeToken(t, "mmcs-tok")
	out, errOut, code := runFerryStreams(t, "ctl", "--admin", url, "--token-file", tf, "mmcs", "list")
	if code != 0 {
		t.Fatalf("mmcs list: exit %d, %s", code, errOut)
	}
	if strings.ContainsAny(out, "\x1b\x07\u202E\r") || strings.Count(out, `m\x1b[2J\x1b]0;owned\x07\u202eexe\nfake\trow`) != 5 {
		t.Errorf("mmcs list printed %q", out)
	}
	if n := strings.Count(out, "\n"); n != 2 {
		t.Errorf("mmcs list: %d lines, want a header and one row: %q", n, out)
	}
	out, _, code = runFerryStreams(t, "ctl", "--admin", url, "--token-file", tf, "mmcs", "list", "-o", "json")
	var ms []api.MMCMember
	if code != 0 || strings.Contains(out, "\x1b") || json.Unmarshal([]byte(out), &ms) != nil || len(ms) != 1 || ms[0].ID != evil {
		t.Errorf("mmcs list -o json: exit %d, %q", code, out)
	}
}
