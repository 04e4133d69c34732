package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer a test reads while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// --since keeps the entries from a time on; --follow prints the log and
// then each entry as it is written, one JSON object a line, until
// interrupted; a bad --since is a usage error.
func TestCtlAuditSinceFollow(t *testing.T) {
	url, tf := startMMC(t)
	ctl := func(args ...string) (string, error) {
		return runFerry(t, append([]string{"ctl", "--admin", url, "--token-file", tf}, args...)...)
	}
	if _, err := ctl("tokens", "create"); err != nil {
		t.Fatal(err)
	}
	var all, none []struct{ Seq uint64 }
	if out, err := ctl("audit", "-o", "json", "--since", "1h"); err != nil || json.Unmarshal([]byte(out), &all) != nil || len(all) == 0 {
		t.Fatalf("--since 1h: %s %v", out, err)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if out, err := ctl("audit", "-o", "json", "--since", future); err != nil || json.Unmarshal([]byte(out), &none) != nil || len(none) != 0 {
		t.Fatalf("--since %s: %s %v", future, out, err)
	}
	if _, err := ctl("audit", "--since", "yesterday"); err == nil || !strings.Contains(err.Error(), "--since") {
		t.Fatalf("--since yesterday: %v", err)
	}

	root := newRootCmd()
	var out syncBuffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"ctl", "--admin", url, "--token-file", tf, "audit", "--follow", "-o", "json"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	lines := func() []string { return strings.Split(strings.TrimSpace(out.String()), "\n") }
	deadline := time.Now().Add(10 * time.Second)
	for len(lines()) < len(all) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := ctl("tokens", "create", "--uses", "3"); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "uses=3") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("--follow ended with %v", err)
	}
	ls := lines()
	var prev uint64
	for i, l := range ls {
		var e struct {
			Seq    uint64
			Detail string
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %d is not one JSON object: %q", i, l)
		}
		if e.Seq <= prev {
			t.Fatalf("line %d: seq %d after %d, want oldest first", i, e.Seq, prev)
		}
		prev = e.Seq
	}
	if !strings.Contains(out.String(), "uses=3") {
		t.Fatalf("the entry written while following was not printed:\n%s", out.String())
	}
}
