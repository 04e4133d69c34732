package core

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// freshInitiation is a valid initiation from a new key, as anyone holding
// an enrolment psk can make.
func freshInitiation(t *testing.T, rng *rand.ChaCha8, now time.Time, server [32]byte, psk [32]byte) []byte {
	t.Helper()
	init, err := handshake.NewInitiator(handshake.InitiatorConfig{
		Static: seededKey(t, rng), RemoteStatic: server, PSK: psk, ClusterID: "sim", Rand: chachaReader{rng},
	})
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := init.Initiation(now, 1)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

// Unconfirmed connections are capped (the oldest goes, counted) and each
// one expires after the handshake timeout if its peer never proves the
// keys; a confirmed connection is never evicted.
func TestUnconfirmedBoundedAndExpiring(t *testing.T) {
	rng := rand.NewChaCha8([32]byte{9})
	serverKey := seededKey(t, rng)
	psk := [32]byte{5}
	const limit = 8
	ep, err := NewEndpoint(EndpointConfig{
		Static: serverKey, ClusterID: "sim", Rand: chachaReader{rng},
		LoadThreshold: 1 << 20, RateLimit: ratelimit.Config{Rate: 1e6, Burst: 1 << 20},
		MaxUnconfirmed: limit,
		Lookup: func([32]byte) (handshake.Peer, error) {
			return handshake.Peer{ID: "enrol", PSK: psk, Allowed: true, Unregistered: true}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var spub [32]byte
	copy(spub[:], serverKey.Public)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	from := netip.MustParseAddrPort("198.18.0.1:4000")

	// A confirmed connection, made the way a data packet confirms one.
	_, first, _, err := ep.HandleInitiation(now, from, freshInitiation(t, rng, now, spub, psk))
	if err != nil || first == nil {
		t.Fatal(err)
	}
	first.confirmed = true
	ep.Confirmed(first)

	var live []*Conn
	for i := 0; i < 100; i++ {
		_, c, replaced, err := ep.HandleInitiation(now, from, freshInitiation(t, rng, now, spub, psk))
		if err != nil {
			t.Fatal(err)
		}
		if replaced == first {
			t.Fatal("a confirmed connection was evicted")
		}
		live = append(live, c)
		if ep.Unconfirmed() > limit || ep.Conns() > limit+1 {
			t.Fatalf("after %d: %d unconfirmed, %d connections (limit %d)", i+1, ep.Unconfirmed(), ep.Conns(), limit)
		}
	}
	if n := ep.Stats().UnconfirmedEvicted.Load(); n != 100-limit {
		t.Fatalf("evicted %d, want %d", n, 100-limit)
	}
	if len(ep.unconfirmedOrder) > 2*limit+16 {
		t.Fatalf("order list holds %d entries", len(ep.unconfirmedOrder))
	}
	// The survivors expire at the handshake timeout, not the idle timeout.
	c := live[len(live)-1]
	hto := DefaultConfig().HandshakeTimeout
	if got := c.NextTimeout(); !got.Equal(now.Add(hto)) {
		t.Fatalf("unconfirmed connection's timer at %v, want %v", got.Sub(now), hto)
	}
	c.HandleTimeout(now.Add(hto))
	if !c.IsClosed() || !errors.Is(c.Err(), ErrHandshakeTimeout) {
		t.Fatalf("after the handshake timeout: closed %v, err %v", c.IsClosed(), c.Err())
	}
	ep.Remove(c)
	if n := ep.Stats().UnconfirmedExpired.Load(); n != 1 {
		t.Fatalf("expired count %d", n)
	}
	// The confirmed one lives on to its idle timeout.
	first.HandleTimeout(now.Add(hto))
	if first.IsClosed() {
		t.Fatalf("confirmed connection closed at the handshake timeout: %v", first.Err())
	}
}
