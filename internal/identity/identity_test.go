package identity

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	k1, err := LoadOrCreateKey(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if d, _ := os.Stat(dir); d.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode %v, want 0700", d.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1.Public, k2.Public) || !bytes.Equal(k1.Private, k2.Private) {
		t.Fatal("second start produced a different key")
	}
	// A key readable by others is refused, not used.
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(dir, nil); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable key accepted: %v", err)
	}
	// A corrupt key file is an error, never silently replaced.
	if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(dir, nil); err == nil {
		t.Fatal("corrupt key file accepted")
	}
}

func TestKeypairFromPrivate(t *testing.T) {
	k, err := handshake.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	var priv [32]byte
	copy(priv[:], k.Private)
	k2, err := handshake.KeypairFromPrivate(priv)
	if err != nil || !bytes.Equal(k2.Public, k.Public) {
		t.Fatalf("rebuilt public key differs (%v)", err)
	}
	if _, err := handshake.KeypairFromPrivate([32]byte{}); err == nil {
		t.Fatal("zero private key accepted")
	}
}

var factsA = Facts{Hostname: "h1", IPs: []string{"10.0.0.1"}, MACs: []string{"52:54:00:AA:BB:01"}, MachineID: "m1", DiskID: "d1"}

func TestDerivePSK(t *testing.T) {
	var m Code
	m[0] = 1
	base := DerivePSK(m, "c1", factsA)
	tests := []struct {
		name string
		m    Code
		cid  string
		f    Facts
		same bool
	}{
		{"same inputs", m, "c1", factsA, true},
		{"IP changed (NAT, DHCP)", m, "c1", Facts{Hostname: "h1", IPs: []string{"192.0.2.7"}, MACs: factsA.MACs, MachineID: "m1", DiskID: "d1"}, true},
		{"MAC case and order normalised", m, "c1", Facts{Hostname: "h1", MACs: []string{"52:54:00:aa:bb:01"}, DiskID: "d1"}, true},
		{"disk id changed", m, "c1", Facts{MACs: factsA.MACs, DiskID: "d2"}, false},
		{"MAC changed", m, "c1", Facts{MACs: []string{"52:54:00:aa:bb:02"}, DiskID: "d1"}, false},
		{"other code", Code{2}, "c1", factsA, false},
		{"other cluster", m, "c2", factsA, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DerivePSK(tt.m, tt.cid, tt.f) == base; got != tt.same {
				t.Fatalf("psk equal = %v, want %v", got, tt.same)
			}
		})
	}
	if DeriveReauthKey(m, "c1") == base || EnrolPSK("c1") == base || EnrolPSK("c1") == EnrolPSK("c2") {
		t.Fatal("derived keys collide across labels or clusters")
	}
}

func TestReauth(t *testing.T) {
	key := [32]byte{1}
	hh := [32]byte{2}
	nonce := [NonceLen]byte{3}
	mac := ReauthMAC(key, hh, 7, nonce)
	if !VerifyReauth(key, hh, 7, nonce, mac[:]) {
		t.Fatal("genuine answer refused")
	}
	tests := []struct {
		name  string
		key   [32]byte
		hh    [32]byte
		seq   uint64
		nonce [NonceLen]byte
		mac   []byte
	}{
		{"other key", [32]byte{9}, hh, 7, nonce, mac[:]},
		{"other session", key, [32]byte{9}, 7, nonce, mac[:]},
		{"old identifier", key, hh, 6, nonce, mac[:]},
		{"other nonce", key, hh, 7, [NonceLen]byte{9}, mac[:]},
		{"truncated", key, hh, 7, nonce, mac[:16]},
		{"empty", key, hh, 7, nonce, nil},
	}
	for _, tt := range tests {
		if VerifyReauth(tt.key, tt.hh, tt.seq, tt.nonce, tt.mac) {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

func TestToken(t *testing.T) {
	tok, id, hash, err := NewToken(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	gotID, secret, err := ParseToken(tok)
	if err != nil || gotID != id {
		t.Fatalf("ParseToken(%q) = %q, %v", tok, gotID, err)
	}
	if !TokenMatches(hash, secret) {
		t.Fatal("token does not match its own hash")
	}
	secret[0] ^= 1
	if TokenMatches(hash, secret) {
		t.Fatal("altered secret matches")
	}
	for _, bad := range []string{"", "fjt1.", "fjt1." + id, "fjt2." + id + ".x", "fjt1.zz" + id[2:] + "." + strings.Repeat("A", 43),
		"fjt1." + id + "." + strings.Repeat("A", 42), "fjt1." + id + "." + strings.Repeat("A", 43) + "=", tok + "x", strings.Repeat("f", 1000)} {
		if _, _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

func TestBundle(t *testing.T) {
	k, _ := handshake.GenerateKeypair(nil)
	var pub [32]byte
	copy(pub[:], k.Public)
	b := Bundle{ClusterID: "c1", MMCs: []MMCRef{{Addr: "198.18.0.1:7946", Key: handshake.EncodeKey(pub)}}}
	s := b.Encode()
	if strings.ContainsAny(s, " \n") {
		t.Fatalf("bundle is not one line: %q", s)
	}
	got, err := ParseBundle("  " + s + "\n")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := got.Keys()
	if err != nil || len(keys) != 1 || keys[0] != pub || got.ClusterID != "c1" {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range []string{"", "ferry-bundle-v1:", "ferry-bundle-v1:!!", s[:len(s)-3],
		Bundle{ClusterID: "c1"}.Encode(),
		Bundle{ClusterID: "c1", MMCs: []MMCRef{{Addr: "x:1", Key: "short"}}}.Encode(),
		Bundle{MMCs: b.MMCs}.Encode()} {
		if _, err := ParseBundle(bad); err == nil {
			t.Errorf("ParseBundle(%q) accepted", bad)
		}
	}
}

func TestCompareFacts(t *testing.T) {
	tests := []struct {
		name             string
		now              Facts
		stable, volatile string
	}{
		{"unchanged", factsA, "", ""},
		{"new IP", Facts{Hostname: "h1", IPs: []string{"10.0.0.9"}, MACs: factsA.MACs, MachineID: "m1", DiskID: "d1"}, "", "ip"},
		{"NIC added", Facts{Hostname: "h1", IPs: factsA.IPs, MACs: []string{"52:54:00:aa:bb:01", "52:54:00:aa:bb:09"}, MachineID: "m1", DiskID: "d1"}, "", ""},
		{"disk swapped", Facts{Hostname: "h1", IPs: factsA.IPs, MACs: factsA.MACs, MachineID: "m1", DiskID: "d9"}, "disk_id", ""},
		{"all NICs replaced", Facts{Hostname: "h1", IPs: factsA.IPs, MACs: []string{"52:54:00:aa:bb:09"}, MachineID: "m1", DiskID: "d1"}, "mac", ""},
		{"cloned elsewhere", Facts{Hostname: "h2", IPs: []string{"10.0.0.2"}, MACs: []string{"52:54:00:aa:bb:02"}, MachineID: "m2", DiskID: "d2"}, "mac,disk_id,machine_id", "ip,hostname"},
	}
	for _, tt := range tests {
		c := Compare(factsA, tt.now)
		if s, v := strings.Join(c.Stable, ","), strings.Join(c.Volatile, ","); s != tt.stable || v != tt.volatile {
			t.Errorf("%s: stable %q volatile %q, want %q %q", tt.name, s, v, tt.stable, tt.volatile)
		}
	}
}

func TestFactsValidate(t *testing.T) {
	if err := factsA.Validate(); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 300)
	many := make([]string, 100)
	bad := []Facts{{}, {Hostname: long}, {Hostname: "h", DiskID: long}, {Hostname: "h", IPs: many}, {Hostname: "h", MACs: []string{long}},
		{Hostname: "evil\x1b[2K\rlegit-host"}, {Hostname: "h\n2"}, {Hostname: "h", DiskID: "d\x00"}, {Hostname: "h\xff"},
		{Hostname: "h", IPs: []string{"not-an-ip"}}, {Hostname: "h", MACs: []string{"zz:zz"}}}
	for _, f := range bad {
		if f.Validate() == nil {
			t.Errorf("accepted %+v", f)
		}
	}
}

func TestDiscover(t *testing.T) {
	f, err := Discover(Overrides{DiskID: "sim-disk", MACs: []string{"02:00:00:00:00:01"}})
	if err != nil {
		t.Fatal(err)
	}
	if f.Hostname == "" || f.DiskID != "sim-disk" || len(f.MACs) != 1 {
		t.Fatalf("Discover = %+v", f)
	}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseToken(f *testing.F) {
	tok, _, _, _ := NewToken(rand.Reader)
	f.Add(tok)
	f.Add("fjt1.0000000000000000.")
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, err := ParseToken(s)
		if err == nil && (len(id) != 16 || len(secret) != 32) {
			t.Fatalf("accepted %q with id %q and %d-byte secret", s, id, len(secret))
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	f.Add(Bundle{ClusterID: "c", MMCs: []MMCRef{{Addr: "a:1", Key: handshake.EncodeKey([32]byte{1})}}}.Encode())
	f.Add("ferry-bundle-v1:e30")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBundle(s)
		if err == nil {
			if _, err := b.Keys(); err != nil || b.ClusterID == "" {
				t.Fatalf("accepted an invalid bundle %q", s)
			}
		}
	})
}
