package handshake

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"testing"
	"time"
)

// TestForwardSecrecy: an attacker records a handshake and traffic, and
// later obtains both static private keys and the psk. Replaying the
// recorded initiation to a responder holding the stolen keys yields a new
// session's keys, not the recorded one's (the responder's ephemeral is
// fresh); a fresh initiator holding them cannot even accept the recorded
// response (it lacks the recorded ephemeral private key). Neither set of
// keys opens a recorded packet.
func TestForwardSecrecy(t *testing.T) {
	f := newFixture(t, 41)
	now := time.Unix(1_700_000_000, 0)
	i := f.initiator(t)
	init := mustInitiation(t, i, now, 1)
	resp, rs, err := f.responder(t).HandleInitiation(now, srcA, init, 2)
	if err != nil || rs == nil {
		t.Fatalf("handshake: %v", err)
	}
	is, err := i.HandleResponse(now, resp)
	if err != nil {
		t.Fatal(err)
	}
	if is.SendKey != rs.RecvKey {
		t.Fatal("the two ends disagree on the keys")
	}
	recorded := seal(t, is.SendKey, []byte("VM memory page 42"))

	// The attacker as responder, with the stolen responder key and psk (the
	// fixture's lookup hands it the psk) and its own randomness.
	_, s2, err := f.responder(t, func(c *ResponderConfig) { c.Rand = seeded(99, 1) }).HandleInitiation(now, srcA, init, 3)
	if err != nil || s2 == nil {
		t.Fatalf("attacker's replay: %v", err)
	}
	if s2.SendKey == rs.SendKey || s2.RecvKey == rs.RecvKey {
		t.Fatal("replaying the recorded initiation with the stolen keys reproduced the session keys")
	}
	// The attacker as initiator, with the stolen initiator key and psk.
	i2 := f.initiator(t, func(c *InitiatorConfig) { c.Rand = seeded(98, 1) })
	mustInitiation(t, i2, now.Add(time.Second), 1)
	if _, err := i2.HandleResponse(now, resp); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("recorded response accepted by a new initiator: %v", err)
	}
	for _, k := range [][32]byte{s2.SendKey, s2.RecvKey} {
		if open(k, recorded) {
			t.Fatal("a key derived from the stolen secrets opened recorded traffic")
		}
	}
	if !open(is.SendKey, recorded) {
		t.Fatal("control: the real key does not open the record")
	}
}

func seal(t *testing.T, key [32]byte, msg []byte) []byte {
	b, err := aes.NewCipher(key[:])
	if err != nil {
		t.Fatal(err)
	}
	g, _ := cipher.NewGCM(b)
	return g.Seal(nil, make([]byte, g.NonceSize()), msg, nil)
}

func open(key [32]byte, ct []byte) bool {
	b, _ := aes.NewCipher(key[:])
	g, _ := cipher.NewGCM(b)
	_, err := g.Open(nil, make([]byte, g.NonceSize()), ct, nil)
	return err == nil
}
