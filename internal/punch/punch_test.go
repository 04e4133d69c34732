package punch

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestRoundTripAndBinding(t *testing.T) {
	tk := [32]byte{1, 2, 3}
	tok := TokenFor(tk, "migration/m1")
	b := Append(nil, tok, 7)
	if len(b) != Size || b[0] != Type {
		t.Fatalf("punch %x", b)
	}
	got, seq, err := Parse(b)
	if err != nil || !got.Equal(tok) || seq != 7 {
		t.Fatalf("parse: %x %d %v", got, seq, err)
	}
	// The token is the introduction's: another topic, another ticket —
	// another token; and it does not carry the ticket.
	if TokenFor(tk, "migration/m2").Equal(tok) || TokenFor([32]byte{9}, "migration/m1").Equal(tok) {
		t.Fatal("token not bound to ticket and topic")
	}
	if bytes.Contains(b, tk[:3]) && bytes.Contains(b, tk[:]) {
		t.Fatal("the punch carries the ticket")
	}
	for _, bad := range [][]byte{nil, {Type}, b[:Size-1], append(bytes.Clone(b), 0), {0x04, Version}} {
		if _, _, err := Parse(bad); !errors.Is(err, ErrNotPunch) {
			t.Errorf("Parse(%x): %v", bad, err)
		}
	}
	v2 := bytes.Clone(b)
	v2[1] = 2
	if _, _, err := Parse(v2); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: %v", err)
	}
}

func TestStartAndWindow(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	for _, c := range []struct {
		l, d      time.Duration
		lead, win time.Duration
	}{
		{0, 0, 20 * ms, MinWindow},
		{50 * ms, 50 * ms, 45 * ms, MinWindow},          // 25 + 20
		{100 * ms, 200 * ms, 120 * ms, 3 * time.Second}, // the slower order: 100 + 20; 10 × 300 ms
		{200 * ms, 100 * ms, 120 * ms, 3 * time.Second},
		{3 * time.Second, 0, 1520 * ms, MaxWindow},
		{5 * time.Second, 0, 2 * time.Second, MaxWindow},
	} {
		if got := Start(now, c.l, c.d).Sub(now); got != c.lead {
			t.Errorf("Start(%v, %v): lead %v, want %v", c.l, c.d, got, c.lead)
		}
		if got := Window(c.l, c.d); got != c.win {
			t.Errorf("Window(%v, %v) = %v, want %v", c.l, c.d, got, c.win)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Append(nil, TokenFor([32]byte{1}, "t"), 1))
	f.Add([]byte{Type, 2})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, seq, err := Parse(b)
		if err != nil {
			return
		}
		if !bytes.Equal(Append(nil, tok, seq), b) {
			t.Fatalf("%x parsed but does not re-encode", b)
		}
	})
}
