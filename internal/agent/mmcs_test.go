package agent

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

func TestDialOrder(t *testing.T) {
	now := time.Unix(1000, 0)
	a, b, c := mmcMember{Addr: "a", Key: [32]byte{1}}, mmcMember{Addr: "b", Key: [32]byte{2}}, mmcMember{Addr: "c", Key: [32]byte{3}}
	x := mmcMember{Addr: "x", Key: [32]byte{9}}
	list := []mmcMember{a, b, c}
	later := func(d time.Duration) memberBackoff { return memberBackoff{failures: 1, notBefore: now.Add(d)} }
	for _, tt := range []struct {
		name     string
		last     [32]byte
		redirect *mmcMember
		backoff  map[[32]byte]memberBackoff
		want     []mmcMember
	}{
		{"list order", [32]byte{}, nil, nil, []mmcMember{a, b, c}},
		{"last that served first", b.Key, nil, nil, []mmcMember{b, a, c}},
		{"redirect first", b.Key, &x, nil, []mmcMember{x, b, a, c}},
		{"redirect to a member is not repeated", [32]byte{}, &c, nil, []mmcMember{c, a, b}},
		{"backing off skipped", b.Key, nil, map[[32]byte]memberBackoff{b.Key: later(time.Second)}, []mmcMember{a, c}},
		{"backoff over", a.Key, nil, map[[32]byte]memberBackoff{a.Key: later(0)}, []mmcMember{a, b, c}},
		{"all backing off: the one free soonest", [32]byte{}, nil, map[[32]byte]memberBackoff{
			a.Key: later(3 * time.Second), b.Key: later(time.Second), c.Key: later(2 * time.Second)}, []mmcMember{b}},
		{"a redirect ignores backoff", [32]byte{}, &a, map[[32]byte]memberBackoff{
			a.Key: later(3 * time.Second), b.Key: later(time.Second), c.Key: later(2 * time.Second)}, []mmcMember{a}},
	} {
		if got := dialOrder(list, tt.last, tt.redirect, tt.backoff, now); !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A member that keeps failing waits longer each time, up to maxBackoff.
func TestMemberBackoff(t *testing.T) {
	m := &mmcs{backoff: map[[32]byte]memberBackoff{}}
	x := mmcMember{Addr: "x", Key: [32]byte{1}}
	now := time.Unix(1000, 0)
	var got []time.Duration
	for range 6 {
		m.failed(x, now)
		got = append(got, m.backoff[x.Key].notBefore.Sub(now))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, maxBackoff, maxBackoff}
	if !slices.Equal(got, want) {
		t.Fatalf("backoff %v, want %v", got, want)
	}
	m.worked(x)
	if _, ok := m.backoff[x.Key]; ok || m.last != x.Key {
		t.Fatal("a member that served is still backing off, or not first next time")
	}
}

// The term and member list survive reopening; a data directory moved to
// another cluster forgets both (the old cluster's terms would fence the
// new one's orders).
func TestMMCStatePersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), OutboxFile)
	key := handshake.EncodeKey([32]byte{7})
	bundle := identity.Bundle{ClusterID: "c1", MMCs: []identity.MMCRef{{Addr: "10.0.0.1:7400", Key: key}}}
	open := func(b identity.Bundle) (*mmcs, func()) {
		o, err := openOutbox(path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := openMMCs(o.db, b)
		if err != nil {
			t.Fatal(err)
		}
		return m, func() { _ = o.close() }
	}
	m, done := open(bundle)
	if _, err := m.obey(9); err != nil {
		t.Fatal(err)
	}
	if kept, err := m.update(message.Members{Version: 4, MMCs: []message.Member{{Addr: "10.0.1.1:7400", Key: make([]byte, 32)}}}); !kept || err != nil {
		t.Fatalf("update: %v %v", kept, err)
	}
	done()

	m, done = open(bundle)
	if m.term != 9 || m.version != 4 || len(m.list) != 1 || m.list[0].Addr != "10.0.1.1:7400" {
		t.Fatalf("reopened: term %d, version %d, list %+v", m.term, m.version, m.list)
	}
	if _, err := m.obey(8); err == nil {
		t.Fatal("term 8 obeyed after term 9 was persisted")
	}
	done()

	other := bundle
	other.ClusterID = "c2"
	m, done = open(other)
	defer done()
	if m.term != 0 || m.version != 0 || len(m.list) != 1 || m.list[0].Addr != "10.0.0.1:7400" {
		t.Fatalf("another cluster: term %d, version %d, list %+v; want the bundle's and no term", m.term, m.version, m.list)
	}
}
