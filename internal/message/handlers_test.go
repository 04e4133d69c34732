package message

import (
	"context"
	"errors"
	"testing"
)

// Every body encodes under its own type, and every type has a name.
func TestBodiesKnowTheirType(t *testing.T) {
	for _, b := range []Body{EnrolRequest{}, EnrolReply{}, Hello{}, Welcome{}, Refused{}, Challenge{Nonce: make([]byte, 32)},
		ChallengeAnswer{}, TimeRequest{}, TimeReply{}, EnrolAck{}, Report{}, Action{}, ActionResult{}, Policy{}, PolicyAck{},
		Event{Kind: "k", Level: "info"}, EventAck{}, BoardPost{}, BoardEntry{}, BoardRead{}, PeerHello{}} {
		raw, err := Marshal(b)
		if err != nil {
			t.Fatalf("%T: %v", b, err)
		}
		e, err := Unmarshal(raw)
		if err != nil || e.Type != b.Type() {
			t.Fatalf("%T: decoded type %v (%v), want %v", b, e.Type, err, b.Type())
		}
		if name := b.Type().String(); name == "" || name[:5] == "type-" {
			t.Errorf("%T: type %d has no name", b, b.Type())
		}
	}
}

func TestHandlers(t *testing.T) {
	h := Handlers{}
	var got []uint64
	On(h, func(_ context.Context, a EventAck) error { got = append(got, a.Seq); return nil })
	boom := errors.New("boom")
	On(h, func(_ context.Context, p PolicyAck) error { return boom })
	env := func(b Body) Envelope {
		raw, _ := Marshal(b)
		e, err := Unmarshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	ctx := context.Background()
	if err := h.Dispatch(ctx, env(EventAck{Seq: 7})); err != nil || len(got) != 1 || got[0] != 7 {
		t.Fatalf("dispatch: %v, handled %v", err, got)
	}
	if err := h.Dispatch(ctx, env(PolicyAck{})); !errors.Is(err, boom) {
		t.Fatalf("a handler's error: %v", err)
	}
	if err := h.Dispatch(ctx, env(Welcome{})); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("a type without a handler: %v", err)
	}
	// A body of the wrong shape never reaches its handler.
	bad := env(EventAck{Seq: 1})
	bad.Body = []byte{0x61, 'x'} // a CBOR text string, not a map
	if err := h.Dispatch(ctx, bad); !errors.Is(err, ErrMalformed) || len(got) != 1 {
		t.Fatalf("a malformed body: %v, handled %v", err, got)
	}
}
