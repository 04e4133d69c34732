package wire

import (
	"bytes"
	"testing"
)

func TestParseRekey(t *testing.T) {
	msg := bytes.Repeat([]byte{0xab}, RekeyNoiseSize)
	good := AppendRekey(nil, RekeyHeader{Kind: RekeyInitiation, DstCID: 0x0102030405060708, Epoch: 3}, msg)
	if len(good) != RekeySize {
		t.Fatalf("encoded %d bytes, want %d", len(good), RekeySize)
	}
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"initiation", good, true},
		{"response", mut(func(b []byte) []byte { b[1] = RekeyResponse; return b }), true},
		{"short", good[:RekeySize-1], false},
		{"long", append(bytes.Clone(good), 0), false},
		{"empty", nil, false},
		{"data type", mut(func(b []byte) []byte { b[0] = TypeData; return b }), false},
		{"unknown kind", mut(func(b []byte) []byte { b[1] = 0x03; return b }), false},
		{"kind zero", mut(func(b []byte) []byte { b[1] = 0; return b }), false},
		{"epoch zero", mut(func(b []byte) []byte { clear(b[10:18]); return b }), false},
	}
	for _, c := range cases {
		h, m, err := ParseRekey(c.b)
		if (err == nil) != c.ok {
			t.Fatalf("%s: err %v, want ok=%v", c.name, err, c.ok)
		}
		if !c.ok {
			continue
		}
		if h.DstCID != 0x0102030405060708 || h.Epoch != 3 || !bytes.Equal(m, msg) {
			t.Fatalf("%s: parsed %+v %x", c.name, h, m)
		}
	}
}

// FuzzParseRekey: the re-handshake parser never panics, accepts only
// canonical messages (what it accepts re-encodes to the same bytes), and
// never returns a Noise message of another length.
func FuzzParseRekey(f *testing.F) {
	f.Add(AppendRekey(nil, RekeyHeader{Kind: RekeyInitiation, DstCID: 1, Epoch: 1}, make([]byte, RekeyNoiseSize)))
	f.Add(AppendRekey(nil, RekeyHeader{Kind: RekeyResponse, DstCID: 1 << 63, Epoch: 1 << 40}, bytes.Repeat([]byte{0xff}, RekeyNoiseSize)))
	f.Add([]byte{TypeRekey})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, m, err := ParseRekey(b)
		if err != nil {
			return
		}
		if len(m) != RekeyNoiseSize {
			t.Fatalf("noise message of %d bytes", len(m))
		}
		if re := AppendRekey(nil, h, m); !bytes.Equal(re, b) {
			t.Fatalf("re-encoded %x, parsed from %x", re, b)
		}
	})
}
