package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
)

func intro(topic string, key byte, ticket byte, expires time.Time) *message.Introduction {
	k, t := make([]byte, 32), make([]byte, 32)
	k[0], t[0] = key, ticket
	return &message.Introduction{Topic: topic, PeerID: "peer-a", PeerAddr: "127.0.0.1:1", PeerKey: k, Ticket: t, Expires: expires.UnixNano()}
}

// TestPeersOneTimeTicket: an introduction admits the introduced key with
// its ticket until it is claimed or expires, then never again; other keys
// are refused.
func TestPeersOneTimeTicket(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newPeers()
	p.now = func() time.Time { return now }
	if err := p.add(intro("migration/m1", 7, 9, now.Add(time.Minute)), 0); err != nil {
		t.Fatal(err)
	}
	var key, other [32]byte
	key[0], other[0] = 7, 8
	peer, err := p.lookup(key)
	if err != nil || !peer.Allowed || peer.PSK[0] != 9 || peer.ID != peerPrefix+"migration/m1" {
		t.Fatalf("introduced key: %+v %v", peer, err)
	}
	if peer, err := p.lookup(other); err == nil || peer.Allowed {
		t.Fatal("a key nobody introduced was admitted")
	}
	if _, ok := p.claim(key, "migration/m2"); ok {
		t.Fatal("claimed for the wrong topic")
	}
	if _, ok := p.claim(key, "migration/m1"); !ok {
		t.Fatal("first claim refused")
	}
	if _, err := p.lookup(key); err == nil {
		t.Fatal("ticket admitted a second connection")
	}
	if _, ok := p.claim(key, "migration/m1"); ok {
		t.Fatal("claimed twice")
	}

	// Expiry, with the MMC's clock 30 s ahead of ours.
	if err := p.add(intro("migration/m3", 7, 1, now.Add(40*time.Second)), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := p.lookup(key); err != nil {
		t.Fatal("fresh introduction refused")
	}
	now = now.Add(11 * time.Second) // MMC time now+41 s: expired
	if _, err := p.lookup(key); err == nil {
		t.Fatal("expired introduction admitted")
	}

	// Bounded.
	for i := 0; i < maxExpected; i++ {
		if err := p.add(intro("t", byte(i), 1, now.Add(time.Minute)), 0); err != nil {
			t.Fatalf("introduction %d: %v", i, err)
		}
	}
	if err := p.add(intro("t", 200, 1, now.Add(time.Minute)), 0); err == nil {
		t.Fatal("unbounded introductions")
	}
}

// TestPeersWithdraw: a key the MMC withdrew loses its introduction, is
// refused at the handshake, and cannot be introduced again.
func TestPeersWithdraw(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newPeers()
	p.now = func() time.Time { return now }
	if err := p.add(intro("migration/m1", 7, 9, now.Add(time.Minute)), 0); err != nil {
		t.Fatal(err)
	}
	var key [32]byte
	key[0] = 7
	if n := p.withdraw("peer-a", key); n != 0 {
		t.Fatalf("closed %d links, there were none", n)
	}
	if _, err := p.lookup(key); err == nil {
		t.Fatal("a withdrawn key still passes the handshake")
	}
	if err := p.add(intro("migration/m2", 7, 10, now.Add(time.Minute)), 0); err == nil {
		t.Fatal("a withdrawn key was introduced again")
	}
	if err := p.add(intro("migration/m3", 8, 10, now.Add(time.Minute)), 0); err != nil {
		t.Fatalf("another key: %v", err)
	}
	// The memory of withdrawn keys is bounded.
	for i := range maxWithdrawn + 10 {
		var k [32]byte
		k[1], k[2] = byte(i), byte(i>>8)
		p.withdraw("x", k)
	}
	if len(p.withdrawn) != maxWithdrawn || len(p.order) != maxWithdrawn {
		t.Fatalf("%d withdrawn keys remembered, bound %d", len(p.withdrawn), maxWithdrawn)
	}
}

// A second introduction of the same peer replaces the first's ticket
// (the handshake picks the ticket by key), but a connection whose
// handshake already used the first may still claim it — once, before it
// expires; no new handshake can use it, and a revocation forgets it.
func TestPeersSupersededIntroduction(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newPeers()
	p.now = func() time.Time { return now }
	var key [32]byte
	key[0] = 7
	if err := p.add(intro("migration/m1", 7, 1, now.Add(time.Minute)), 0); err != nil {
		t.Fatal(err)
	}
	if peer, err := p.lookup(key); err != nil || peer.ID != peerPrefix+"migration/m1" {
		t.Fatalf("m1: %+v %v", peer, err)
	}
	// m1's handshake is done; the MMC introduces m2 before m1's hello is read.
	if err := p.add(intro("migration/m2", 7, 2, now.Add(time.Minute)), 0); err != nil {
		t.Fatal(err)
	}
	if peer, err := p.lookup(key); err != nil || peer.ID != peerPrefix+"migration/m2" || peer.PSK[0] != 2 {
		t.Fatalf("a new handshake after m2's introduction: %+v %v", peer, err)
	}
	if e, ok := p.claim(key, "migration/m1"); !ok || e.topic != "migration/m1" {
		t.Fatal("the connection made with m1's ticket could not claim it")
	}
	if _, ok := p.claim(key, "migration/m1"); ok {
		t.Fatal("a superseded introduction claimed twice")
	}
	if _, ok := p.claim(key, "migration/m2"); !ok {
		t.Fatal("m2 lost its introduction")
	}

	// Expired, or revoked: gone.
	for _, step := range []string{"expired", "revoked"} {
		if err := p.add(intro("migration/m3", 7, 3, now.Add(time.Minute)), 0); err != nil {
			t.Fatal(err)
		}
		if err := p.add(intro("migration/m4", 7, 4, now.Add(2*time.Minute)), 0); err != nil {
			t.Fatal(err)
		}
		if step == "expired" {
			now = now.Add(90 * time.Second)
		} else {
			p.withdraw("peer-a", key)
		}
		if _, ok := p.claim(key, "migration/m3"); ok {
			t.Fatalf("%s: a superseded introduction was claimed", step)
		}
		if step == "expired" {
			p.claim(key, "migration/m4")
		}
	}
	p.mu.Lock()
	n := len(p.superseded)
	p.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d superseded introductions left", n)
	}
}

// Superseded introductions are bounded: the first to expire go first.
func TestPeersSupersededBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newPeers()
	p.now = func() time.Time { return now }
	var key [32]byte
	key[0] = 7
	for i := range maxExpected + 10 {
		if err := p.add(intro(fmt.Sprintf("migration/m%d", i), 7, 1, now.Add(time.Minute+time.Duration(i)*time.Second)), 0); err != nil {
			t.Fatal(err)
		}
	}
	p.mu.Lock()
	n := len(p.superseded)
	p.mu.Unlock()
	if n != maxExpected {
		t.Fatalf("%d superseded introductions kept, want %d", n, maxExpected)
	}
	if _, ok := p.claim(key, "migration/m3"); ok {
		t.Fatal("an introduction beyond the bound was kept")
	}
	if _, ok := p.claim(key, fmt.Sprintf("migration/m%d", maxExpected+8)); !ok {
		t.Fatal("the newest superseded introduction was dropped")
	}
}
