package handshake

import (
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// seeded returns a deterministic io.Reader; every test draws its keys and
// ephemerals from these so failures reproduce exactly.
func seeded(seed byte, stream byte) io.Reader {
	return rand.NewChaCha8([32]byte{seed, stream, 'f', 'e', 'r', 'r', 'y'})
}

var (
	t0       = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	srcA     = netip.MustParseAddrPort("192.0.2.1:40000")
	srcB     = netip.MustParseAddrPort("198.51.100.2:40000")
	clusterA = "dc-paris+dc-lyon"

	// generous keeps the rate limiter out of tests that are not about it.
	generous = ratelimit.Config{Rate: 1e6, Burst: 1 << 20}
)

func pub32(k noise.DHKey) [32]byte {
	var p [32]byte
	copy(p[:], k.Public)
	return p
}

// fixture is one responder key and one enrolled initiator key with its K.
type fixture struct {
	seed     byte
	rKey     noise.DHKey
	iKey     noise.DHKey
	psk      [32]byte
	login    uint8
	allowed  bool
	lookupFn func([32]byte) (Peer, error) // overrides the default lookup
}

func newFixture(t testing.TB, seed byte) *fixture {
	t.Helper()
	rKey, err := GenerateKeypair(seeded(seed, 1))
	if err != nil {
		t.Fatal(err)
	}
	iKey, err := GenerateKeypair(seeded(seed, 2))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{seed: seed, rKey: rKey, iKey: iKey, login: 3, allowed: true}
	if _, err := io.ReadFull(seeded(seed, 3), f.psk[:]); err != nil {
		t.Fatal(err)
	}
	return f
}

var errNoSuchPeer = errors.New("no such peer")

func (f *fixture) lookup(k [32]byte) (Peer, error) {
	if f.lookupFn != nil {
		return f.lookupFn(k)
	}
	if k != pub32(f.iKey) {
		return Peer{}, errNoSuchPeer
	}
	return Peer{ID: "agent-1", PSK: f.psk, Allowed: f.allowed, LoginState: f.login}, nil
}

func (f *fixture) responderConfig() ResponderConfig {
	return ResponderConfig{
		Static:    f.rKey,
		ClusterID: clusterA,
		Lookup:    f.lookup,
		Rand:      seeded(f.seed, 4),
		RateLimit: generous,
	}
}

func (f *fixture) responder(t testing.TB, mut ...func(*ResponderConfig)) *Responder {
	t.Helper()
	cfg := f.responderConfig()
	for _, m := range mut {
		m(&cfg)
	}
	r, err := NewResponder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (f *fixture) initiatorConfig() InitiatorConfig {
	return InitiatorConfig{
		Static:       f.iKey,
		RemoteStatic: pub32(f.rKey),
		PSK:          f.psk,
		ClusterID:    clusterA,
		Rand:         seeded(f.seed, 5),
	}
}

func (f *fixture) initiator(t testing.TB, mut ...func(*InitiatorConfig)) *Initiator {
	t.Helper()
	cfg := f.initiatorConfig()
	for _, m := range mut {
		m(&cfg)
	}
	i, err := NewInitiator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func mustInitiation(t testing.TB, i *Initiator, now time.Time, cid uint64) []byte {
	t.Helper()
	pkt, err := i.Initiation(now, cid)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkt) != InitiationSize {
		t.Fatalf("initiation is %d bytes", len(pkt))
	}
	return pkt
}

// checkAmplification asserts the responder's bound on one exchange.
func checkAmplification(t testing.TB, pkt, reply []byte) {
	t.Helper()
	if len(reply) > AmplificationFactor*len(pkt) {
		t.Fatalf("reply of %d bytes to %d received exceeds %dx", len(reply), len(pkt), AmplificationFactor)
	}
}

// handle runs HandleInitiation and checks the invariants that hold on every
// path: the amplification bound, and reply/session/error consistency.
func handle(t testing.TB, r *Responder, now time.Time, src netip.AddrPort, pkt []byte, cid uint64) ([]byte, *Session, error) {
	t.Helper()
	reply, s, err := r.HandleInitiation(now, src, pkt, cid)
	checkAmplification(t, pkt, reply)
	switch {
	case err == nil:
		if s == nil || len(reply) != ResponseSize || reply[0] != TypeResponse {
			t.Fatalf("success without a session and a response: s=%v reply=%d bytes", s, len(reply))
		}
	case errors.Is(err, ErrCookieRequired):
		if s != nil || len(reply) != CookieReplySize || reply[0] != TypeCookieReply {
			t.Fatalf("cookie path returned s=%v reply=%d bytes", s, len(reply))
		}
	default:
		if s != nil || reply != nil {
			t.Fatalf("error %v with s=%v reply=%d bytes", err, s, len(reply))
		}
	}
	return reply, s, err
}

// mac1Valid returns a copy of pkt with mac1 (and mac2 zeroed) recomputed as
// an attacker who knows the receiver's public key can.
func withMAC1(pkt []byte, receiverPub []byte) []byte {
	out := append([]byte(nil), pkt...)
	k := labelledKey(LabelMAC1, receiverPub)
	switch out[0] {
	case TypeInitiation:
		newMAC(k[:]).compute(out[initMAC1Offset:], out[:initMAC1Offset])
		clear(out[initMAC2Offset:])
	case TypeResponse:
		newMAC(k[:]).compute(out[respMAC1Offset:], out[:respMAC1Offset])
	}
	return out
}
