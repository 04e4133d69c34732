package handshake

import (
	"errors"
	"testing"
	"time"
)

// A flood of initiations from fresh keys that the lookup accepts (as the
// MMC accepts any key for enrolment) keeps a bounded replay table, while a
// registered peer keeps its permanent entry and its replay protection.
func TestUnregisteredKeysBounded(t *testing.T) {
	f := newFixture(t, 21)
	registered := pub32(f.iKey)
	f.lookupFn = func(k [32]byte) (Peer, error) {
		return Peer{ID: "x", PSK: f.psk, Allowed: true, Unregistered: k != registered}, nil
	}
	const limit, flood = 64, 1000
	r := f.responder(t, func(c *ResponderConfig) { c.MaxUnregistered = limit; c.LoadThreshold = 1 << 20 })

	honest := f.initiator(t)
	first := mustInitiation(t, honest, t0, 1)
	if _, _, err := handle(t, r, t0, srcA, first, 1); err != nil {
		t.Fatal(err)
	}
	rng := seeded(21, 9)
	var firstFresh []byte
	for n := 0; n < flood; n++ {
		k, err := GenerateKeypair(rng)
		if err != nil {
			t.Fatal(err)
		}
		i := f.initiator(t, func(c *InitiatorConfig) { c.Static = k; c.Rand = rng })
		pkt := mustInitiation(t, i, t0, 1)
		if n == 0 {
			firstFresh = pkt
		}
		if _, _, err := handle(t, r, t0.Add(time.Duration(n)*time.Millisecond), srcB, pkt, uint64(n+2)); err != nil {
			t.Fatalf("fresh key %d: %v", n, err)
		}
		if reg, unreg := r.ReplayEntries(); reg != 1 || unreg > limit {
			t.Fatalf("after %d fresh keys: %d registered, %d unregistered entries (limit %d)", n+1, reg, unreg, limit)
		}
	}
	if st := r.Stats(); st.ReplayEvicted != flood-limit {
		t.Fatalf("evicted %d, want %d", st.ReplayEvicted, flood-limit)
	}
	// The registered peer was not pushed out: its old initiation is
	// still a replay.
	if _, _, err := handle(t, r, t0.Add(2*time.Second), srcA, first, 5000); !errors.Is(err, ErrReplay) {
		t.Fatalf("registered peer's replay after the flood: %v, want ErrReplay", err)
	}
	// An evicted fresh key's initiation passes again: documented, it can
	// at worst make one unconfirmed connection that never confirms.
	if _, _, err := handle(t, r, t0.Add(2*time.Second), srcB, firstFresh, 5001); err != nil {
		t.Fatalf("evicted key's initiation: %v", err)
	}
}

// An unregistered key's replay is refused while remembered, and forgotten
// after the TTL without anything growing.
func TestUnregisteredReplayExpires(t *testing.T) {
	f := newFixture(t, 22)
	f.lookupFn = func(k [32]byte) (Peer, error) {
		return Peer{ID: "x", PSK: f.psk, Allowed: true, Unregistered: true}, nil
	}
	r := f.responder(t, func(c *ResponderConfig) { c.UnregisteredTTL = time.Minute })
	pkt := mustInitiation(t, f.initiator(t), t0, 1)
	if _, _, err := handle(t, r, t0, srcA, pkt, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := handle(t, r, t0.Add(59*time.Second), srcA, pkt, 2); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay within the TTL: %v, want ErrReplay", err)
	}
	if reg, unreg := r.ReplayEntries(); reg != 0 || unreg != 1 {
		t.Fatalf("%d registered, %d unregistered entries", reg, unreg)
	}
	// Another key's initiation after the TTL expires the first entry.
	f2 := newFixture(t, 23)
	i2 := f.initiator(t, func(c *InitiatorConfig) { c.Static = f2.iKey })
	if _, _, err := handle(t, r, t0.Add(61*time.Second), srcA, mustInitiation(t, i2, t0, 1), 3); err != nil {
		t.Fatal(err)
	}
	if _, unreg := r.ReplayEntries(); unreg != 1 {
		t.Fatalf("%d unregistered entries after the first expired, want 1", unreg)
	}
}

func TestReplayCacheOrder(t *testing.T) {
	c := newReplayCache(2, time.Minute)
	k := func(b byte) [32]byte { return [32]byte{b} }
	c.put(t0, k(1), timestamp{sec: 1})
	c.put(t0, k(2), timestamp{sec: 2})
	c.put(t0.Add(time.Second), k(1), timestamp{sec: 3}) // rewritten: now the newest
	if ev := c.put(t0.Add(time.Second), k(3), timestamp{sec: 4}); !ev {
		t.Fatal("a full table evicted nothing")
	}
	if _, ok := c.get(t0, k(2)); ok {
		t.Fatal("the least recently written key survived")
	}
	if ts, ok := c.get(t0, k(1)); !ok || ts.sec != 3 {
		t.Fatalf("rewritten key: %v %v", ts, ok)
	}
	if _, ok := c.get(t0.Add(61*time.Second), k(1)); ok {
		t.Fatal("an expired entry was returned")
	}
}
