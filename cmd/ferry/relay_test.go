package main

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/relay"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in     string
		lo, hi uint16
		ok     bool
	}{
		{"40000-40099", 40000, 40099, true},
		{"1-2", 1, 2, true},
		{"5-5", 0, 0, false},
		{"6-5", 0, 0, false},
		{"0-5", 0, 0, false},
		{"40000", 0, 0, false},
		{"1-65536", 0, 0, false},
		{"a-b", 0, 0, false},
		{"", 0, 0, false},
	} {
		lo, hi, err := parsePortRange(tc.in)
		if (err == nil) != tc.ok || lo != tc.lo || hi != tc.hi {
			t.Errorf("%q: %d-%d %v", tc.in, lo, hi, err)
		}
	}
}

func TestRelayCommandUsage(t *testing.T) {
	for _, args := range [][]string{
		{"relay", "--ports", "5-5"},
		{"relay", "--ports", "40000-40001"}, // no controller, psk, cluster id
		{"relay", "--ports", "40000-40001", "--listen-ip", "nowhere"},
	} {
		_, err := runFerry(t, args...)
		var u *usageError
		if !errors.As(err, &u) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

// TestRelayCommand: a standalone relay started from the command line
// serves its controller's allocation over SUDP.
func TestRelayCommand(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "relay.key")
	relayKey, err := identity.LoadOrCreateKeyFile(keyFile, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctlKey, err := handshake.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	psk := [32]byte{5, 5, 5}
	pskFile := filepath.Join(dir, "psk")
	if err := identity.WriteSecretFile(pskFile, []byte(handshake.EncodeKey(psk)+"\n")); err != nil {
		t.Fatal(err)
	}
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	control := u.LocalAddr().String()
	u.Close()

	root := newRootCmd()
	root.SetArgs([]string{"relay", "--listen-ip", "127.0.0.1", "--ports", "43100-43199", "--control", control,
		"--key-file", keyFile, "--psk-file", pskFile, "--cluster-id", "c1",
		"--controller", handshake.EncodeKey([32]byte(ctlKey.Public))})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- root.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("ferry relay: %v", err)
		}
	}()

	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: ctlKey, ClusterID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	conn, err := ep.Dial(dctx, control, [32]byte(relayKey.Public), psk)
	if err != nil {
		t.Fatal(err)
	}
	var k [32]byte
	al, err := relay.NewRemote(conn).Allocate(dctx, k, k)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{al.AddrA.String(), al.AddrB.String()} {
		host, port, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(port)
		if host != "127.0.0.1" || p < 43100 || p > 43199 {
			t.Fatalf("allocated %v", al)
		}
	}
}
