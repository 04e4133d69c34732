package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// A redirect from the "MMC" is not followed, so the admin token never
// reaches the place it points to.
func TestClientRefusesRedirect(t *testing.T) {
	leaked := make(chan string, 1)
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case leaked <- r.Header.Get("Authorization"):
		default:
		}
		_, _ = w.Write([]byte("[]"))
	}))
	defer elsewhere.Close()
	mmc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer mmc.Close()
	c := &Client{Base: mmc.URL, Token: "secret-admin-token", HTTP: mmc.Client()}
	if _, err := c.Agents(context.Background(), ""); !errors.Is(err, ErrRedirect) {
		t.Fatalf("Agents through a redirect: %v, want ErrRedirect", err)
	}
	select {
	case h := <-leaked:
		t.Fatalf("the redirect target received Authorization %q", h)
	default:
	}
}
