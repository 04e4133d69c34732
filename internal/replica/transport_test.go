package replica

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flynn/noise"
	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

func genKey(t *testing.T) noise.DHKey {
	t.Helper()
	k, err := handshake.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pubKey(k noise.DHKey) [32]byte {
	var p [32]byte
	copy(p[:], k.Public)
	return p
}

func testPSK(t *testing.T) [32]byte {
	secret := make([]byte, 32)
	rand.Read(secret)
	psk, err := ClusterPSK(secret)
	if err != nil {
		t.Fatal(err)
	}
	return psk
}

// sudpMember is one member's SUDP endpoint (serving only raft here) and
// stream layer.
type sudpMember struct {
	key   noise.DHKey
	ep    *sudp.Endpoint
	layer *StreamLayer
	trans *raft.NetworkTransport
}

func listenMember(t *testing.T, members *Members, psk [32]byte) *sudpMember {
	return listenMemberAt(t, members, psk, genKey(t), "127.0.0.1:0")
}

func listenMemberAt(t *testing.T, members *Members, psk [32]byte, key noise.DHKey, at string) *sudpMember {
	t.Helper()
	m := &sudpMember{key: key}
	ep, err := sudp.Listen(sudp.Config{
		Listen:    at,
		Static:    m.key,
		ClusterID: "test",
		Lookup:    members.Lookup(psk),
	})
	if err != nil {
		t.Fatal(err)
	}
	m.ep = ep
	addr := raft.ServerAddress(ep.LocalAddr().String())
	layer := NewStreamLayer(StreamLayerConfig{Endpoint: ep, Advertise: addr, Members: members, PSK: psk})
	m.layer = layer
	members.Set(addr, pubKey(m.key))
	layer.AcceptFrom(ep)
	m.trans = NewTransport(layer, nil)
	t.Cleanup(func() {
		m.trans.Close()
		ep.Close()
	})
	return m
}

// The happy path of TestThreeMembersInmem over real sockets: raft's
// NetworkTransport on SUDP streams between members authenticated by
// their static keys.
func TestThreeMembersOverSUDP(t *testing.T) {
	ctx := ctxT(t)
	psk := testPSK(t)
	dir := NewMembers()
	ms := newMembers(t, 3)
	sm := make([]*sudpMember, 3)
	for i := range sm {
		sm[i] = listenMember(t, dir, psk)
	}
	for i, m := range ms {
		m.start(sm[i].trans, i > 0)
	}
	l := leader(t, ms)
	if l != ms[0] {
		t.Fatalf("the leader is %s", l.id)
	}
	for i, m := range ms[1:] {
		if err := l.node.AddVoter(ctx, m.id, sm[i+1].trans.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		if _, err := l.node.Apply(ctx, audit(fmt.Sprint("entry ", i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.node.Apply(ctx, policy(1)); err != nil {
		t.Fatal(err)
	}
	converge(t, l, ms)

	// Kill the leader (its endpoint too): a new one is elected over SUDP
	// and takes writes.
	ms[0].stop()
	sm[0].trans.Close()
	sm[0].ep.Close()
	l = leader(t, ms)
	if _, err := l.node.Apply(ctx, policy(2)); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
	converge(t, l, ms)
	if v, _ := ms[1].st.Meta("policy"); v != `{"version":2}` {
		t.Fatalf("policy on a survivor: %s", v)
	}

	// The old leader restarts on the same address and key: the survivors'
	// connections to its previous run are dead, they handshake again.
	sm[0] = listenMemberAt(t, dir, psk, sm[0].key, string(sm[0].trans.LocalAddr()))
	ms[0].start(sm[0].trans, false)
	if _, err := l.node.Apply(ctx, audit("after restart")); err != nil {
		t.Fatal(err)
	}
	converge(t, l, ms)
}

// A key that is not a member's cannot open raft streams: its handshake
// is refused on an endpoint serving raft only, and a connection the
// MMC's accept loop hands over from a non-member (an agent's session on
// the shared endpoint) is refused and counted.
func TestNonMemberCannotOpenRaftStreams(t *testing.T) {
	psk := testPSK(t)
	dir := NewMembers()
	a := listenMember(t, dir, psk)
	outsider := genKey(t)
	oep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: outsider, ClusterID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer oep.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Right member key, right psk, but the outsider is not a member.
	if c, err := oep.Dial(ctx, a.ep.LocalAddr().String(), pubKey(a.key), psk); err == nil {
		c.Close()
		t.Fatal("a non-member completed the handshake")
	}
	if dir.RefusedLookups() == 0 {
		t.Fatal("the refused handshake was not counted")
	}

	// A shared endpoint that accepts anyone (as the MMC's accepts
	// agents), routing every connection to the layer.
	shared := genKey(t)
	sep, err := sudp.Listen(sudp.Config{
		Listen: "127.0.0.1:0", Static: shared, ClusterID: "test",
		Lookup: func([32]byte) (handshake.Peer, error) {
			return handshake.Peer{ID: "agent", PSK: psk, Allowed: true}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sep.Close()
	layer := NewStreamLayer(StreamLayerConfig{Endpoint: sep, Advertise: raft.ServerAddress(sep.LocalAddr().String()), Members: dir, PSK: psk})
	defer layer.Close()
	layer.AcceptFrom(sep)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	c, err := oep.Dial(ctx2, sep.LocalAddr().String(), pubKey(shared), psk)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.OpenStream(ctx2)
	if err == nil {
		s.Write([]byte{0})
	}
	select {
	case <-c.Done():
	case <-ctx2.Done():
		t.Fatal("the non-member's connection stayed open")
	}
	if layer.RefusedConns() != 1 {
		t.Fatalf("refused connections: %d", layer.RefusedConns())
	}
	acc := make(chan error, 1)
	go func() {
		_, err := layer.Accept()
		acc <- err
	}()
	layer.Close()
	if err := <-acc; !errors.Is(err, ErrLayerClosed) {
		t.Fatalf("Accept gave a stream or %v", err)
	}

	// Dialing an address that is not in the directory fails before any
	// packet is sent.
	if _, err := a.layer.Dial("127.0.0.1:1", time.Second); err == nil {
		t.Fatal("dialed an unknown member")
	}
}

func TestClusterPSK(t *testing.T) {
	if _, err := ClusterPSK(make([]byte, 16)); err == nil {
		t.Fatal("short secret accepted")
	}
	s1 := make([]byte, 32)
	s2 := make([]byte, 32)
	s2[0] = 1
	p1, _ := ClusterPSK(s1)
	p1b, _ := ClusterPSK(s1)
	p2, _ := ClusterPSK(s2)
	if p1 != p1b || p1 == p2 || p1 == ([32]byte{}) {
		t.Fatal("ClusterPSK is not a deterministic function of the secret")
	}
}
