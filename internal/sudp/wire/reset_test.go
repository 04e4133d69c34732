package wire

import (
	"errors"
	"testing"
)

func TestResetTokenFrame(t *testing.T) {
	tok := [ResetTokenLen]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	b := AppendResetToken(AppendPing(nil), tok)
	if len(b) != 1+1+ResetTokenLen {
		t.Fatalf("frame is %d bytes", len(b)-1)
	}
	fs := parseAll(t, b)
	if len(fs) != 2 || fs[1].Type != FrameResetToken || fs[1].Token != tok {
		t.Fatalf("parsed %+v", fs)
	}
	var p Parser
	var f Frame
	p.Reset(b[:len(b)-1]) // truncated
	p.Next(&f)
	if _, err := p.Next(&f); !errors.Is(err, ErrFrame) {
		t.Fatalf("truncated RESET_TOKEN: %v", err)
	}
}

func TestResetTokenOfDatagram(t *testing.T) {
	b := make([]byte, MinResetSize)
	b[0] = TypeData
	b[MinResetSize-1] = 0xaa
	tok, ok := ResetToken(b)
	if !ok || tok[ResetTokenLen-1] != 0xaa {
		t.Fatalf("%x %v", tok, ok)
	}
	for _, bad := range [][]byte{b[:MinResetSize-1], append([]byte{TypeResponse}, b[1:]...), append([]byte{TypeData, 0x80}, b[2:]...)} {
		if _, ok := ResetToken(bad); ok {
			t.Fatalf("%x taken for a reset", bad[:2])
		}
	}
}
