package board

import (
	"errors"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
)

func body(t testing.TB, v any) []byte {
	t.Helper()
	b, err := message.EncodeBody(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBoardMembersAndRelay(t *testing.T) {
	b := New(Config{})
	b.Open("migration/m1", "src", "dst")
	now := time.Unix(100, 0)
	pc := body(t, PeerConnected{Peer: "dst", Addr: "127.0.0.1:9"})

	e, to, err := b.Post("src", "migration/m1", KindPeerConnected, pc, now)
	if err != nil || e.Seq != 1 || len(to) != 1 || to[0] != "dst" {
		t.Fatalf("post = %+v to %v err %v", e, to, err)
	}
	if _, to, err = b.Post(MMC, "migration/m1", KindNote, body(t, Note{Text: "hi"}), now); err != nil || len(to) != 2 {
		t.Fatalf("MMC post relays to %v (%v), want both members", to, err)
	}

	for _, tc := range []struct {
		name, from, topic, kind string
		body                    []byte
		want                    error
	}{
		{"stranger", "eve", "migration/m1", KindNote, body(t, Note{Text: "x"}), ErrNotMember},
		{"no topic", "src", "migration/m9", KindNote, body(t, Note{Text: "x"}), ErrNoTopic},
		{"unknown kind", "src", "migration/m1", "vm.exfiltrate", body(t, Note{}), ErrUnknownKind},
		{"garbage body", "src", "migration/m1", KindNote, []byte{0xff, 0x00}, ErrMalformed},
		{"wrong shape", "src", "migration/m1", KindPeerConnected, body(t, map[int]int{1: 5}), ErrMalformed},
		{"control chars", "src", "migration/m1", KindNote, body(t, Note{Text: "a\x1b[2Jb"}), ErrMalformed},
	} {
		if _, _, err := b.Post(tc.from, tc.topic, tc.kind, tc.body, now); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}

	got, err := b.Read("dst", "migration/m1", 0)
	if err != nil || len(got) != 2 || got[0].Kind != KindPeerConnected || got[1].From != MMC {
		t.Fatalf("read = %+v, %v", got, err)
	}
	if got, _ := b.Read("", "migration/m1", 1); len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("read after 1 = %+v", got)
	}
	if _, err := b.Read("eve", "migration/m1", 0); !errors.Is(err, ErrNotMember) {
		t.Fatalf("stranger read: %v", err)
	}
	v, err := Decode(got[1].Kind, got[1].Body)
	if n, ok := v.(Note); err != nil || !ok || n.Text != "hi" {
		t.Fatalf("decode = %#v %v", v, err)
	}

	b.Close("migration/m1")
	if _, _, err := b.Post("src", "migration/m1", KindNote, body(t, Note{Text: "late"}), now); !errors.Is(err, ErrClosed) {
		t.Fatalf("post on closed topic: %v", err)
	}
	if got, _ := b.Read("src", "migration/m1", 0); len(got) != 2 {
		t.Fatal("closed topic no longer readable")
	}
}

func TestBoardBounds(t *testing.T) {
	b := New(Config{MaxTopics: 2, MaxEntries: 3})
	for _, n := range []string{"a", "b", "c"} {
		b.Open(n, "x")
	}
	for i := 0; i < 5; i++ {
		if _, _, err := b.Post("x", "a", KindNote, body(t, Note{Text: "n"}), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := b.Read("x", "a", 0); len(got) != 3 || got[0].Seq != 3 {
		t.Fatalf("kept %+v, want seq 3..5", got)
	}
	b.Close("a")
	b.Close("b")
	b.Close("c") // a is forgotten
	if _, err := b.Read("x", "a", 0); !errors.Is(err, ErrNoTopic) {
		t.Fatalf("oldest closed topic kept: %v", err)
	}
	b.Open("b", "x", "y") // reopened: entries kept, no longer evictable
	if ts := b.Topics(); len(ts) != 2 || ts[0] != "b" || ts[1] != "c" {
		t.Fatalf("topics = %v", ts)
	}
}

func FuzzCheck(f *testing.F) {
	f.Add(KindPeerConnected, body(f, PeerConnected{Peer: "p", Addr: "1.2.3.4:5"}))
	f.Add(KindNote, body(f, Note{Text: "hello"}))
	f.Add("x", []byte{})
	f.Fuzz(func(t *testing.T, kind string, b []byte) {
		b0 := New(Config{})
		b0.Open("t", "m")
		_, _, err := b0.Post("m", "t", kind, b, time.Now())
		if err != nil && !errors.Is(err, ErrUnknownKind) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("unexpected error class: %v", err)
		}
		if err == nil {
			if _, err := Decode(kind, b); err != nil {
				t.Fatalf("posted but does not decode: %v", err)
			}
		}
	})
}
