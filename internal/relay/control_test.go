package relay

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// controlled starts a control endpoint for r admitting controller, serves
// it, and returns a Remote connected from the controller's endpoint.
func controlled(t *testing.T, r *Relay) (*Remote, *sudp.Endpoint, noise.DHKey) {
	t.Helper()
	relayKey, err := handshake.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctlKey, err := handshake.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	psk := [32]byte{8, 8}
	ctlPub := [32]byte(ctlKey.Public)
	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: relayKey, ClusterID: "relay-test",
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			if peer != ctlPub {
				return handshake.Peer{}, errors.New("not a controller")
			}
			return handshake.Peer{ID: "mmc", PSK: psk, Allowed: true}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeControl(ctx, ep, r, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeControl: %v", err)
		}
	})
	ctl, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: ctlKey, ClusterID: "relay-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	conn, err := ctl.Dial(ctxT(t, 10*time.Second), ep.LocalAddr().String(), [32]byte(relayKey.Public), psk)
	if err != nil {
		t.Fatal(err)
	}
	return NewRemote(conn), ep, relayKey
}

// TestRemoteControl: a controller allocates and releases over the control
// connection; agents link through what it allocated; the relay's errors
// come back as the same errors.
func TestRemoteControl(t *testing.T) {
	r := newRelay(t, Config{Limits: Limits{MaxAllocations: 1}})
	rem, _, _ := controlled(t, r)
	ctx := ctxT(t, 30*time.Second)
	kA, kB := randKey(t), randKey(t)
	al, err := rem.Allocate(ctx, kA, kB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rem.Allocate(ctx, kA, kB); !errors.Is(err, ErrTooManyAllocations) {
		t.Fatalf("second allocation: %v", err)
	}
	g := newAgents(t)
	ac, bc := g.connect(t, r, al, kA, kB)
	p := payload(1 << 20)
	sameBytes(t, transfer(t, ac, bc, p), p)
	if err := rem.Release(al.ID); err != nil {
		t.Fatal(err)
	}
	if err := rem.Release(al.ID); !errors.Is(err, ErrUnknownAlloc) {
		t.Fatalf("second release: %v", err)
	}
	if s := r.Stats(); s.AllocsReleased != 1 || s.Allocations != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestControlOnlyForControllers: another key gets no control connection.
func TestControlOnlyForControllers(t *testing.T) {
	r := newRelay(t, Config{})
	_, ep, relayKey := controlled(t, r)
	other, err := handshake.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	oe, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: other, ClusterID: "relay-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer oe.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := oe.Dial(ctx, ep.LocalAddr().String(), [32]byte(relayKey.Public), [32]byte{8, 8}); err == nil {
		t.Fatal("a stranger got a control connection")
	}
	if s := ep.Stats(); s.Handshake.UnknownPeer == 0 && s.Handshake.PeerNotAllowed == 0 {
		t.Fatalf("refusal not counted: %+v", s.Handshake)
	}
}

func TestParseRequest(t *testing.T) {
	key := make([]byte, KeySize)
	enc := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"allocate", enc(controlRequest{Seq: 1, Op: opAllocate, KeyA: key, KeyB: key}), true},
		{"release", enc(controlRequest{Seq: 2, Op: opRelease, ID: 5}), true},
		{"allocate short key", enc(controlRequest{Seq: 1, Op: opAllocate, KeyA: key[:31], KeyB: key}), false},
		{"allocate one key", enc(controlRequest{Seq: 1, Op: opAllocate, KeyA: key}), false},
		{"allocate with id", enc(controlRequest{Seq: 1, Op: opAllocate, KeyA: key, KeyB: key, ID: 3}), false},
		{"release no id", enc(controlRequest{Seq: 1, Op: opRelease}), false},
		{"release with key", enc(controlRequest{Seq: 1, Op: opRelease, ID: 3, KeyA: key}), false},
		{"unknown op", enc(controlRequest{Seq: 1, Op: "list"}), false},
		{"unknown field", []byte(`{"seq":1,"op":"release","id":3,"x":1}`), false},
		{"trailing", []byte(`{"seq":1,"op":"release","id":3}{}`), false},
		{"not json", []byte("release 3"), false},
		{"too large", append([]byte(`{"seq":1,"op":"release","id":3}`), make([]byte, MaxControlMessage)...), false},
	} {
		_, err := parseRequest(tc.b)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// handleControl against a fake allocator: refusals become codes, and a bad
// request reaches no allocator.
type fakeAllocator struct{ calls int }

func (f *fakeAllocator) Allocate(context.Context, [KeySize]byte, [KeySize]byte) (Allocation, error) {
	f.calls++
	return Allocation{}, ErrNoPorts
}

func (f *fakeAllocator) Release(AllocID) error {
	f.calls++
	return errors.New("disk on fire")
}

func TestHandleControl(t *testing.T) {
	f := &fakeAllocator{}
	key := make([]byte, KeySize)
	msg, _ := json.Marshal(controlRequest{Seq: 7, Op: opAllocate, KeyA: key, KeyB: key})
	if rep := handleControl(context.Background(), f, msg, nopLog); rep.Seq != 7 || rep.Error != "ports" {
		t.Fatalf("reply %+v", rep)
	}
	msg, _ = json.Marshal(controlRequest{Seq: 8, Op: opRelease, ID: 1})
	if rep := handleControl(context.Background(), f, msg, nopLog); rep.Error != "internal" {
		t.Fatalf("reply %+v", rep)
	}
	if rep := handleControl(context.Background(), f, []byte(`{"seq":9,"op":"allocate"}`), nopLog); rep.Seq != 9 || rep.Error != "bad_request" || f.calls != 2 {
		t.Fatalf("reply %+v, %d calls", rep, f.calls)
	}
}

func TestAdvertise(t *testing.T) {
	if _, err := New(Config{}); !errors.Is(err, errNoAdvertise) {
		t.Fatalf("unspecified listen, nothing to advertise: %v", err)
	}
	r, err := New(Config{ListenIP: netip.IPv4Unspecified(), Advertise: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	al, err := r.Allocate(context.Background(), randKey(t), randKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if al.AddrA.Addr() != loopback || al.AddrB.Addr() != loopback || al.AddrA.Port() == al.AddrB.Port() {
		t.Fatalf("allocation %+v", al)
	}
}

// FuzzControlRequest: the request parser never panics and accepts only
// well-formed requests.
func FuzzControlRequest(f *testing.F) {
	key := make([]byte, KeySize)
	for _, r := range []controlRequest{{Seq: 1, Op: opAllocate, KeyA: key, KeyB: key}, {Seq: 2, Op: opRelease, ID: 9}} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"seq":1,"op":"release","id":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		switch r.Op {
		case opAllocate:
			if len(r.KeyA) != KeySize || len(r.KeyB) != KeySize {
				t.Fatalf("accepted %+v", r)
			}
		case opRelease:
			if r.ID == 0 {
				t.Fatalf("accepted %+v", r)
			}
		default:
			t.Fatalf("accepted op %q", r.Op)
		}
	})
}

var nopLog = slog.New(slog.DiscardHandler)

// FuzzControlReply: the controller's reply parser never panics, and what
// it accepts re-encodes to an equivalent reply.
func FuzzControlReply(f *testing.F) {
	f.Add([]byte(`{"seq":1,"id":5,"addr_a":"192.0.2.1:40000","addr_b":"192.0.2.1:40001"}`))
	f.Add([]byte(`{"seq":2,"error":"limit"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseReply(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if r2, err := parseReply(again); err != nil || r2 != r {
			t.Fatalf("%+v re-parsed as %+v (%v)", r, r2, err)
		}
	})
}
