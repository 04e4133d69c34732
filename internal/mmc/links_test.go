package mmc

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
)

// TestIntroductions: a revocation finds every agent the revoked one was
// introduced to, once; old and excess introductions are forgotten; the
// withdrawals owed to offline agents are bounded and delivered once.
func TestIntroductions(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	in := newIntroductions()
	in.add("a", "b", now)
	in.add("c", "a", now)
	in.add("b", "c", now)
	in.add("a", "b", now.Add(time.Minute)) // again: one pair
	got := in.revoke("a")
	slices.Sort(got)
	if !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("peers of a: %v", got)
	}
	if got := in.revoke("a"); len(got) != 0 {
		t.Fatalf("a revoked twice: %v", got)
	}
	if got := in.revoke("b"); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("peers of b: %v", got)
	}

	// Introductions older than introMemory are forgotten at the next add.
	in.add("x", "y", now)
	in.add("p", "q", now.Add(introMemory+time.Second))
	if got := in.revoke("x"); len(got) != 0 {
		t.Fatalf("a forgotten introduction reached: %v", got)
	}
	// At most maxIntroductions, the oldest dropped first.
	for i := range maxIntroductions + 5 {
		in.add("hub", fmt.Sprint(i), now.Add(introMemory+time.Duration(i+2)*time.Second))
	}
	if n := len(in.pairs); n != maxIntroductions {
		t.Fatalf("%d introductions held, bound %d", n, maxIntroductions)
	}

	// Owed withdrawals: one per (agent, revoked peer), bounded, collected once.
	w := message.Withdrawal{PeerID: "a", PeerKey: make([]byte, 32)}
	in.owe("b", w)
	in.owe("b", w)
	if got := in.collect("b"); len(got) != 1 || got[0].PeerID != "a" {
		t.Fatalf("owed to b: %+v", got)
	}
	if got := in.collect("b"); len(got) != 0 {
		t.Fatalf("collected twice: %+v", got)
	}
	for i := range maxWithdrawalsHeld + 10 {
		in.owe(fmt.Sprint("agent", i), w)
	}
	if in.nOwed != maxWithdrawalsHeld {
		t.Fatalf("%d withdrawals held, bound %d", in.nOwed, maxWithdrawalsHeld)
	}
}

// TestWithdrawalOwedAtLogin: an agent that was offline when a peer it had
// been introduced to was revoked is told at its next login.
func TestWithdrawalOwedAtLogin(t *testing.T) {
	s := startMMC(t, Config{})
	bad, peer := newFakeAgent(t, s), newFakeAgent(t, s)
	peer.facts.Hostname = "peer"
	bad.enrolWithToken(token(t, s, 1))
	peer.enrolWithToken(token(t, s, 1))
	badID, peerID := s.byKeyID(bad), s.byKeyID(peer)
	s.reg.intros.add(peerID, badID, time.Now())
	if _, err := s.decide(badID, store.StateRevoked, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	c := peer.login()
	defer c.Close()
	for {
		e := peer.recv(c)
		if e.Type != message.TypeAction {
			continue
		}
		act, err := message.Decode[message.Action](e)
		if err != nil || act.Op != "peer.withdraw" || act.Withdraw == nil || act.Withdraw.PeerID != badID {
			t.Fatalf("first action after login: %+v %v", act, err)
		}
		pub := bad.ep.PublicKey()
		if string(act.Withdraw.PeerKey) != string(pub[:]) {
			t.Fatal("withdrawal names another key")
		}
		return
	}
}

// TestWithdrawalOwedAfterFailure: a withdrawal that could not be delivered
// to an online agent (it did not answer within withdrawTimeout, or its
// session died under it) is owed like one to an offline agent, not
// dropped: the agent is told at its next login, instead of accepting the
// revoked agent's key until the introduction expires.
func TestWithdrawalOwedAfterFailure(t *testing.T) {
	s := startMMC(t, Config{})
	bad, peer := newFakeAgent(t, s), newFakeAgent(t, s)
	peer.facts.Hostname = "peer"
	bad.enrolWithToken(token(t, s, 1))
	peer.enrolWithToken(token(t, s, 1))
	badID, peerID := s.byKeyID(bad), s.byKeyID(peer)
	stale := peer.login() // online, but never answers
	waitUntil(t, "the peer's session", func() bool { return s.reg.session(peerID) != nil })
	s.reg.intros.add(peerID, badID, time.Now())
	if _, err := s.decide(badID, store.StateRevoked, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	stale.Close()
	c := peer.login()
	defer c.Close()
	for {
		e := peer.recv(c)
		if e.Type != message.TypeAction {
			continue
		}
		act, err := message.Decode[message.Action](e)
		if err != nil || act.Op != "peer.withdraw" || act.Withdraw == nil || act.Withdraw.PeerID != badID {
			t.Fatalf("first action after login: %+v %v", act, err)
		}
		return
	}
}
