package mmc

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// stubCluster is a replicated cluster as the agent-facing side sees it.
type stubCluster struct {
	term    uint64
	leader  *atomic.Pointer[message.Member] // nil or empty: serves
	members message.Members
}

func (c stubCluster) Term() uint64 { return c.term }
func (c stubCluster) Redirect() (message.Member, bool) {
	if c.leader == nil || c.leader.Load() == nil {
		return message.Member{}, false
	}
	return *c.leader.Load(), true
}
func (c stubCluster) Members() message.Members { return c.members }

// TestOrdersCarryTerm: the member list follows Welcome, and every order
// carries the cluster's term (a single MMC's: the fencing term it took
// when it became the leader of its one-member cluster).
func TestOrdersCarryTerm(t *testing.T) {
	if got := startMMC(t, Config{}).order(message.Action{}).Term; got != 1 {
		t.Fatalf("a new single MMC's term is %d, want 1", got)
	}
	members := message.Members{Version: 3, MMCs: []message.Member{{Addr: "10.0.0.1:7400", Key: make([]byte, 32)}}}
	s := startMMC(t, Config{Cluster: stubCluster{term: 7, members: members}})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	c := a.login()
	defer c.Close()
	if e := a.recv(c); e.Type != message.TypeMembers {
		t.Fatalf("after Welcome: %v, want the member list", e.Type)
	} else if m, err := message.Decode[message.Members](e); err != nil || m.Version != 3 || len(m.MMCs) != 1 {
		t.Fatalf("members %+v, %v", m, err)
	}
	var pub [32]byte
	copy(pub[:], a.static.Public)
	done := make(chan error, 1)
	go func() {
		_, err := s.actOn(context.Background(), identity.NodeID(pub), "", message.Action{Op: "vm.delete", VM: "v1"})
		done <- err
	}()
	for {
		e := a.recv(c)
		if e.Type != message.TypeAction {
			continue // policy, challenges
		}
		act, err := message.Decode[message.Action](e)
		if err != nil || act.Term != 7 {
			t.Fatalf("order %+v (%v), want term 7", act, err)
		}
		if err := message.Send(context.Background(), c, message.ActionResult{ID: act.ID, OK: true}); err != nil {
			t.Fatal(err)
		}
		break
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRedirectAtLogin: a member that does not serve agents answers a
// Hello with the member that does, and closes with CodeNotLeader.
func TestRedirectAtLogin(t *testing.T) {
	leader := message.Member{Addr: "10.0.1.1:7400", Key: make([]byte, 32)}
	var redirectTo atomic.Pointer[message.Member]
	s := startMMC(t, Config{Cluster: stubCluster{term: 2, leader: &redirectTo}})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	redirectTo.Store(&leader)
	c := a.dial(identity.DerivePSK(a.code, a.bundle.ClusterID, a.facts))
	defer c.Close()
	if err := message.Send(context.Background(), c, message.Hello{Facts: a.facts}); err != nil {
		t.Fatal(err)
	}
	e := a.recv(c)
	r, err := message.Decode[message.Redirect](e)
	if e.Type != message.TypeRedirect || err != nil || r.Leader.Addr != leader.Addr {
		t.Fatalf("answer to Hello: %v %+v %v, want a redirect to %s", e.Type, r, err, leader.Addr)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session stayed open after the redirect")
	}
	var ce *sudp.CloseError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != message.CodeNotLeader {
		t.Fatalf("closed with %v, want CodeNotLeader", err)
	}
}
