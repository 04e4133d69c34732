package mmc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
)

func TestAdminNeedsTLS(t *testing.T) {
	for _, tc := range []struct {
		mode, addr string
		want, err  bool
	}{
		{"auto", "127.0.0.1:7947", false, false},
		{"", "[::1]:7947", false, false},
		{"auto", "localhost:7947", false, false},
		{"auto", "0.0.0.0:7947", true, false},
		{"auto", "10.1.2.3:7947", true, false},
		{"auto", "mmc.example:7947", true, false},
		{"on", "127.0.0.1:7947", true, false},
		{"off", "127.0.0.1:7947", false, false},
		{"off", "0.0.0.0:7947", false, true}, // the token would cross the network in clear
		{"maybe", "127.0.0.1:7947", false, true},
		{"auto", "nonsense", false, true},
	} {
		got, err := adminNeedsTLS(tc.mode, tc.addr)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("adminNeedsTLS(%q, %q) = %v, %v; want %v, err %v", tc.mode, tc.addr, got, err, tc.want, tc.err)
		}
	}
}

// TestAdminAPIOverTLS: bound beyond loopback the admin API serves only
// TLS, with a self-signed certificate the CLI trusts via --ca-file; plain
// HTTP and clients without that trust anchor get nothing.
func TestAdminAPIOverTLS(t *testing.T) {
	dir := t.TempDir()
	s, err := New(Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "0.0.0.0:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	if !strings.HasPrefix(s.AdminURL(), "https://") {
		t.Fatalf("AdminURL = %s, want https", s.AdminURL())
	}
	fi, err := os.Stat(filepath.Join(dir, AdminKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin key file: %v %v", fi, err)
	}
	port := s.AdminAddr()
	port = port[strings.LastIndex(port, ":"):]
	base := "https://127.0.0.1" + port

	pemBytes, err := os.ReadFile(filepath.Join(dir, AdminCertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("admin.crt holds no certificate")
	}
	trusted := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	cl := &api.Client{Base: base, Token: s.AdminToken(), HTTP: trusted}
	if _, err := cl.Agents(ctx, ""); err != nil {
		t.Fatalf("trusted TLS client: %v", err)
	}
	wrong := &api.Client{Base: base, Token: "nope", HTTP: trusted}
	if _, err := wrong.Agents(ctx, ""); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token over TLS: %v, want 401", err)
	}
	untrusted := &api.Client{Base: base, Token: s.AdminToken(), HTTP: &http.Client{Timeout: 5 * time.Second}}
	if _, err := untrusted.Agents(ctx, ""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("client without the CA: %v, want a certificate error", err)
	}
	plain := &api.Client{Base: "http://127.0.0.1" + port, Token: s.AdminToken()}
	if _, err := plain.Agents(ctx, ""); err == nil {
		t.Fatal("plain HTTP to the TLS admin API succeeded")
	}

	// Restarting reuses the certificate (ctl's trust anchor stays valid).
	cancel()
	<-done
	stopped = true
	s2, err := New(Config{raftStart: testRaftStart, DataDir: dir, Listen: "127.0.0.1:0", Admin: "0.0.0.0:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.close()
	again, _ := os.ReadFile(filepath.Join(dir, AdminCertFile))
	if string(again) != string(pemBytes) {
		t.Fatal("admin certificate replaced on restart")
	}
}

func TestAdminTLSOffRefusedBeyondLoopback(t *testing.T) {
	_, err := New(Config{raftStart: testRaftStart, DataDir: t.TempDir(), Listen: "127.0.0.1:0", Admin: "0.0.0.0:0", AdminTLS: TLSOff})
	if err == nil || !strings.Contains(err.Error(), "clear text") {
		t.Fatalf("err = %v, want a refusal", err)
	}
}
