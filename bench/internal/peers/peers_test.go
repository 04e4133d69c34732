package peers

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestInProcess runs each peer's server and sender in this process: a fast
// check of the protocol code before the two-process tests in harness.
func TestInProcess(t *testing.T) {
	const n = 4<<20 + 123 // not a multiple of ChunkSize
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			p, err := Get(name)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv, err := p.Listen(ctx, "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx) }()
			res, err := p.Send(ctx, srv.Addr(), srv.Key(), n)
			if err != nil {
				t.Fatal(err)
			}
			if res.Bytes != n || res.Seconds <= 0 || res.GoodputBps <= 0 || res.Proto != name {
				t.Fatalf("bad result %+v", res)
			}
			if !strings.HasPrefix(name, "tcp") && res.Cipher == "" {
				t.Errorf("%s: no cipher reported", name)
			}
			if cc, ok := strings.CutPrefix(name, "tcp-"); ok && res.CongestionControl != cc {
				t.Errorf("%s: congestion control in effect is %q", name, res.CongestionControl)
			}
			if name == "tls" || name == "quic" {
				if !strings.Contains(res.Cipher, "TLS 1.3") || !strings.Contains(res.Cipher, "GCM") {
					t.Errorf("%s: want TLS 1.3 AES-GCM, got %q", name, res.Cipher)
				}
			}
			t.Logf("%s: %+v", name, res)
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("serve: %v", err)
			}
		})
	}
}

func TestWrongKeyRejected(t *testing.T) {
	for _, name := range []string{"tls", "quic"} {
		t.Run(name, func(t *testing.T) {
			p, _ := Get(name)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			srv, err := p.Listen(ctx, "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = srv.Serve(ctx) }()
			bad := strings.Repeat("00", 32)
			if _, err := p.Send(ctx, srv.Addr(), bad, 1024); err == nil {
				t.Fatal("send with a wrong pinned key succeeded")
			}
		})
	}
}

func TestChildSendBadArgs(t *testing.T) {
	var out, errb bytes.Buffer
	if code := ChildMain([]string{"send", "--proto", "nope", "x"}, &out, &errb); code != 2 {
		t.Fatalf("code %d, stderr %s", code, errb.String())
	}
	if code := ChildMain([]string{"send", "--proto", "tcp", "--bytes", "abc", "x"}, &out, &errb); code != 2 {
		t.Fatalf("code %d", code)
	}
}

func TestParseInterspersed(t *testing.T) {
	// Flags after the address (as in ferry's `perf client --server-key KEY
	// ADDR --bytes N`) must still be parsed: a send to a closed port fails
	// with exit 1 naming the address, not with a usage error.
	var out, errb bytes.Buffer
	args := []string{"send", "--proto", "tcp", "--timeout", "2s", "--server-key", "k", "127.0.0.1:1", "--bytes", "5"}
	code := ChildMain(args, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "127.0.0.1:1") {
		t.Fatalf("code %d stderr %q", code, errb.String())
	}
}
