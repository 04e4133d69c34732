package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// MMCSelf asks the member itself (GET /v1/cluster/self, with the token)
// and decodes the contract's field names.
func TestMMCSelf(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/cluster/self" || r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"no"}`))
			return
		}
		_, _ = w.Write([]byte(`{"id":"mmc-b","address":"10.0.1.1:7946","admin":"http://10.0.1.1:7947","state":"candidate","voter":false,"term":8,"applied_index":99}`))
	}))
	defer hs.Close()
	c := &Client{Base: hs.URL, Token: "tok", HTTP: hs.Client()}
	m, err := c.MMCSelf(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := MMCMember{ID: "mmc-b", Address: "10.0.1.1:7946", Admin: "http://10.0.1.1:7947", State: "candidate", Term: 8, AppliedIndex: 99}
	if m != want {
		t.Errorf("MMCSelf = %+v, want %+v", m, want)
	}
}
