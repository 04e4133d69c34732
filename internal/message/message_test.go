package message

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ferry-vm/ferry/internal/identity"
)

func TestRoundTrip(t *testing.T) {
	req := EnrolRequest{Facts: identity.Facts{Hostname: "h1", MACs: []string{"02:00:00:00:00:01"}, DiskID: "d"}, Name: "h1", Site: "a", Token: "fjt1.x"}
	b, err := Marshal(TypeEnrolRequest, req)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := Marshal(TypeEnrolRequest, req)
	if !bytes.Equal(b, b2) {
		t.Fatal("encoding is not deterministic")
	}
	e, err := Unmarshal(b)
	if err != nil || e.Type != TypeEnrolRequest {
		t.Fatal(e.Type, err)
	}
	got, err := Decode[EnrolRequest](e)
	if err != nil || got.Name != "h1" || got.Facts.DiskID != "d" || got.Token != "fjt1.x" {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestRejects(t *testing.T) {
	good, _ := Marshal(TypeChallenge, Challenge{Seq: 1, Nonce: make([]byte, identity.NonceLen)})
	badNonce, _ := Marshal(TypeChallenge, Challenge{Seq: 1, Nonce: make([]byte, 3)})
	noHost, _ := Marshal(TypeEnrolRequest, EnrolRequest{})
	v2 := bytes.Clone(good)
	v2[2] = 2 // envelope version field: {1: 1, ...} → {1: 2, ...}
	tests := []struct {
		name string
		b    []byte
		dec  func(Envelope) error
	}{
		{"empty", nil, nil},
		{"garbage", []byte{0xff, 0x00, 0x13}, nil},
		{"truncated", good[:len(good)-2], nil},
		{"future version", v2, nil},
		{"oversized", make([]byte, MaxSize+1), nil},
		{"short nonce", badNonce, func(e Envelope) error { _, err := Decode[Challenge](e); return err }},
		{"enrolment without hostname", noHost, func(e Envelope) error { _, err := Decode[EnrolRequest](e); return err }},
	}
	for _, tt := range tests {
		e, err := Unmarshal(tt.b)
		if err == nil && tt.dec != nil {
			err = tt.dec(e)
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", tt.name, err)
		}
	}
	if e, err := Unmarshal(good); err != nil {
		t.Fatal(err)
	} else if _, err := Decode[Challenge](e); err != nil {
		t.Fatal(err)
	}
}

// FuzzUnmarshal: no input crashes the decoder, and whatever decodes
// re-encodes to a message that decodes to the same type.
func FuzzUnmarshal(f *testing.F) {
	for _, m := range []struct {
		t Type
		v any
	}{
		{TypeEnrolRequest, EnrolRequest{Facts: identity.Facts{Hostname: "h", IPs: []string{"10.0.0.1"}}, Token: "t"}},
		{TypeEnrolReply, EnrolReply{State: "approved", Code: make([]byte, 32)}},
		{TypeHello, Hello{Facts: identity.Facts{Hostname: "h"}}},
		{TypeChallenge, Challenge{Seq: 9, Nonce: make([]byte, 32)}},
		{TypeChallengeAnswer, ChallengeAnswer{Seq: 9, MAC: make([]byte, 32)}},
		{TypeTimeReply, TimeReply{T1: 1, T2: 2, T3: 3}},
	} {
		b, _ := Marshal(m.t, m.v)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Unmarshal(b)
		if err != nil {
			return
		}
		var derr error
		switch e.Type {
		case TypeEnrolRequest:
			_, derr = Decode[EnrolRequest](e)
		case TypeEnrolReply:
			_, derr = Decode[EnrolReply](e)
		case TypeHello:
			_, derr = Decode[Hello](e)
		case TypeChallenge:
			_, derr = Decode[Challenge](e)
		case TypeChallengeAnswer:
			_, derr = Decode[ChallengeAnswer](e)
		case TypeTimeRequest:
			_, derr = Decode[TimeRequest](e)
		case TypeTimeReply:
			_, derr = Decode[TimeReply](e)
		}
		if derr != nil && !errors.Is(derr, ErrMalformed) {
			t.Fatalf("decode error not wrapped: %v", derr)
		}
	})
}
