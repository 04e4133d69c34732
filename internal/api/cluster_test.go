package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"
)

// fakeCluster is an admin API serving the cluster endpoints from canned
// JSON (written by hand with the contract's field names, so a renamed
// json tag fails the decode comparison), recording what each request sent.
type fakeCluster struct {
	t    *testing.T
	seen chan clusterRequest
}

type clusterRequest struct {
	method, path, id string
	body             map[string]any
}

func (f *fakeCluster) handler() http.Handler {
	mux := http.NewServeMux()
	record := func(w http.ResponseWriter, r *http.Request, reply string) {
		if got := r.Header.Get("Authorization"); got != "Bearer cluster-admin-token" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"bad token"}`))
			return
		}
		req := clusterRequest{method: r.Method, path: r.URL.EscapedPath(), id: r.PathValue("id")}
		if b, _ := io.ReadAll(r.Body); len(b) > 0 {
			if r.Header.Get("Content-Type") != "application/json" {
				f.t.Errorf("%s %s: Content-Type %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
			}
			if err := json.Unmarshal(b, &req.body); err != nil {
				f.t.Errorf("%s %s: body %q: %v", r.Method, r.URL.Path, b, err)
			}
		}
		f.seen <- req
		_, _ = w.Write([]byte(reply))
	}
	mux.HandleFunc("GET /v1/cluster/members", func(w http.ResponseWriter, r *http.Request) {
		record(w, r, `[
 {"id":"mmc-a","address":"10.0.0.1:7946","admin":"https://10.0.0.1:7947","state":"leader","voter":true,"term":7,"applied_index":1234},
 {"id":"mmc-b","address":"10.0.1.1:7946","admin":"https://10.0.1.1:7947","state":"follower","voter":true,"term":7,"applied_index":1233,"last_contact_ms":42},
 {"id":"mmc-c","address":"10.0.2.1:7946","admin":"https://10.0.2.1:7947","state":"unreachable","voter":false,"error":"timeout"}]`)
	})
	mux.HandleFunc("POST /v1/cluster/join-tokens", func(w http.ResponseWriter, r *http.Request) {
		record(w, r, `{"token":"ferry-mmc-join-secret","id":"jt1","expires":"2026-12-07T02:00:00Z"}`)
	})
	mux.HandleFunc("DELETE /v1/cluster/members/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "gone" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"no member gone"}`))
			return
		}
		record(w, r, `{}`)
	})
	mux.HandleFunc("POST /v1/cluster/leadership", func(w http.ResponseWriter, r *http.Request) {
		record(w, r, `{"leader":"mmc-b"}`)
	})
	return mux
}

// Each cluster call sends the contract's method, path, body and bearer
// token, and decodes the contract's field names.
func TestClusterClient(t *testing.T) {
	f := &fakeCluster{t: t, seen: make(chan clusterRequest, 16)}
	hs := httptest.NewServer(f.handler())
	defer hs.Close()
	c := &Client{Base: hs.URL + "/", Token: "cluster-admin-token", HTTP: hs.Client()}
	ctx := context.Background()
	expect := func(method, path, id string, body map[string]any) {
		t.Helper()
		select {
		case got := <-f.seen:
			want := clusterRequest{method: method, path: path, id: id, body: body}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("request %+v, want %+v", got, want)
			}
		default:
			t.Errorf("no request for %s %s reached the handler", method, path)
		}
	}

	ms, err := c.MMCs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expect("GET", "/v1/cluster/members", "", nil)
	ms42 := int64(42)
	want := []MMCMember{
		{ID: "mmc-a", Address: "10.0.0.1:7946", Admin: "https://10.0.0.1:7947", State: "leader", Voter: true, Term: 7, AppliedIndex: 1234},
		{ID: "mmc-b", Address: "10.0.1.1:7946", Admin: "https://10.0.1.1:7947", State: "follower", Voter: true, Term: 7, AppliedIndex: 1233, LastContactMS: &ms42},
		{ID: "mmc-c", Address: "10.0.2.1:7946", Admin: "https://10.0.2.1:7947", State: "unreachable", Error: "timeout"},
	}
	if !reflect.DeepEqual(ms, want) {
		t.Errorf("MMCs = %+v, want %+v", ms, want)
	}

	tok, err := c.CreateMMCJoinToken(ctx, 90*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	expect("POST", "/v1/cluster/join-tokens", "", map[string]any{"ttl": "1h30m0s"})
	if want := (JoinToken{Token: "ferry-mmc-join-secret", ID: "jt1", Expires: time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)}); !reflect.DeepEqual(tok, want) {
		t.Errorf("CreateMMCJoinToken = %+v, want %+v", tok, want)
	}
	// No TTL: the field is left out and the server picks its default.
	if _, err := c.CreateMMCJoinToken(ctx, 0); err != nil {
		t.Fatal(err)
	}
	expect("POST", "/v1/cluster/join-tokens", "", map[string]any{})
	if _, err := c.CreateMMCJoinToken(ctx, -time.Second); err == nil || errors.As(err, new(*StatusError)) {
		t.Errorf("a negative TTL was sent: %v", err)
	}

	// An id is one path segment, whatever it holds.
	if err := c.RemoveMMC(ctx, "mmc/c?x"); err != nil {
		t.Fatal(err)
	}
	expect("DELETE", "/v1/cluster/members/mmc%2Fc%3Fx", "mmc/c?x", nil)
	var se *StatusError
	if err := c.RemoveMMC(ctx, ""); err == nil || errors.As(err, &se) {
		t.Errorf("RemoveMMC with no id was sent: %v", err)
	}
	if err := c.RemoveMMC(ctx, "gone"); !errors.As(err, &se) || se.Status != http.StatusNotFound || se.Message != "no member gone" {
		t.Errorf("RemoveMMC of an unknown member: %v", err)
	}

	lr, err := c.TransferLeadership(ctx, "mmc-b")
	if err != nil {
		t.Fatal(err)
	}
	expect("POST", "/v1/cluster/leadership", "", map[string]any{"id": "mmc-b"})
	if lr.Leader != "mmc-b" {
		t.Errorf("TransferLeadership = %+v", lr)
	}
	// No id: the body names none and the leader picks the voter.
	if _, err := c.TransferLeadership(ctx, ""); err != nil {
		t.Fatal(err)
	}
	expect("POST", "/v1/cluster/leadership", "", map[string]any{})

	c.Token = "wrong"
	if _, err := c.MMCs(ctx); !errors.As(err, &se) || se.Status != http.StatusUnauthorized {
		t.Errorf("MMCs with a wrong token: %v", err)
	}
}
