package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// --retry-for bounds how long ctl retries "no leader right now" (503 with
// Retry-After): 0 fails at the first answer with the MMC's message (what
// a check against a partitioned member wants), the default rides out an
// election.
func TestCtlRetryFor(t *testing.T) {
	var calls atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"no MMC leads the cluster right now; retry"}`))
	}))
	defer hs.Close()
	tok := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tok, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flag     string
		minCalls int32
		maxCalls int32
	}{
		{"0", 1, 1},
		{"1s", 3, 6}, // every 250 ms for a second
	} {
		calls.Store(0)
		start := time.Now()
		_, stderr, code := runFerryCode(t, "ctl", "--admin", hs.URL, "--token-file", tok, "--retry-for", c.flag, "tokens", "list")
		took := time.Since(start)
		if code == 0 || !strings.Contains(stderr, "no MMC leads the cluster") {
			t.Errorf("--retry-for %s: exit %d, stderr %q; want a failure naming the cause", c.flag, code, stderr)
		}
		if n := calls.Load(); n < c.minCalls || n > c.maxCalls {
			t.Errorf("--retry-for %s: %d requests in %v, want %d..%d", c.flag, n, took, c.minCalls, c.maxCalls)
		}
	}
}
