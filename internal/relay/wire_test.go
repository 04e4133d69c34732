package relay

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/ferry-vm/ferry/internal/punch"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// Magic is foreign to SUDP (its endpoints hand it over, its packets never
// start with it) and is not the hole punch's type.
func TestMagicIsForeign(t *testing.T) {
	if Magic < sudp.ForeignMin || Magic == punch.Type {
		t.Fatalf("magic %#x: ForeignMin %#x, punch %#x", Magic, sudp.ForeignMin, punch.Type)
	}
}

func TestMsgRoundTrip(t *testing.T) {
	m := Msg{Kind: KindBind, ID: 0x0102030405060708, Counter: 0x1112131415161718}
	b := AppendMsg([]byte("prefix"), m, &keyA)[len("prefix"):]
	want := "fe01" + "0102030405060708" + "1112131415161718"
	if len(b) != MsgSize || hex.EncodeToString(b[:18]) != want {
		t.Fatalf("encoded %x", b)
	}
	got, err := ParseMsg(b)
	if err != nil || got != m {
		t.Fatalf("parsed %+v, %v", got, err)
	}
	if !VerifyMsg(b, &keyA) {
		t.Fatal("own MAC refused")
	}
	if VerifyMsg(b, &keyB) {
		t.Fatal("MAC valid under another key")
	}
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		if VerifyMsg(c, &keyA) {
			t.Fatalf("bit flip at byte %d passes the MAC", i)
		}
	}
}

func TestParseMsgRefuses(t *testing.T) {
	good := AppendMsg(nil, Msg{Kind: KindAck, ID: 1, Counter: 2}, &keyA)
	for _, tc := range []struct {
		name string
		b    []byte
		err  error
	}{
		{"empty", nil, ErrMsgSize},
		{"short", good[:MsgSize-1], ErrMsgSize},
		{"long", append(bytes.Clone(good), 0), ErrMsgSize},
		{"sudp type", append([]byte{0x04}, good[1:]...), ErrNotRelay},
		{"kind 0", append([]byte{Magic, 0}, good[2:]...), ErrMsgKind},
		{"kind 3", append([]byte{Magic, 3}, good[2:]...), ErrMsgKind},
	} {
		if _, err := ParseMsg(tc.b); err != tc.err {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
		}
		if VerifyMsg(tc.b, &keyA) && tc.err == ErrMsgSize {
			t.Errorf("%s: verified", tc.name)
		}
	}
}

// FuzzParseMsg: the parser never panics, accepts only 50-byte datagrams
// with the magic and a known kind, and whatever verifies under the key is
// exactly what AppendMsg makes of the parsed fields.
func FuzzParseMsg(f *testing.F) {
	f.Add(AppendMsg(nil, Msg{Kind: KindBind, ID: 1, Counter: 1}, &keyA))
	f.Add(AppendMsg(nil, Msg{Kind: KindAck, ID: 1, Counter: 1}, &keyA))
	f.Add([]byte{Magic})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMsg(b)
		ok := VerifyMsg(b, &keyA)
		if err != nil {
			if ok && len(b) == MsgSize && b[0] == Magic && (b[1] == KindBind || b[1] == KindAck) {
				t.Fatalf("refused %x: %v", b, err)
			}
			return
		}
		if len(b) != MsgSize || b[0] != Magic || (m.Kind != KindBind && m.Kind != KindAck) {
			t.Fatalf("accepted %x as %+v", b, m)
		}
		if ok != bytes.Equal(AppendMsg(nil, m, &keyA), b) {
			t.Fatalf("verify %v for %x", ok, b)
		}
	})
}
