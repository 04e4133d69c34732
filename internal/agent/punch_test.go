package agent_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/punch"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// punchPeer is the listening side of an introduction, played by the
// test: an SUDP endpoint that admits the agent's key with the ticket and
// sends punches from its own socket.
type punchPeer struct {
	ep     *sudp.Endpoint
	key    [32]byte
	ticket [32]byte
}

func newPunchPeer(t *testing.T, agentKey [32]byte) *punchPeer {
	t.Helper()
	k, err := handshake.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &punchPeer{ticket: [32]byte{7, 7, 7}}
	p.ep, err = sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: k, ClusterID: testCluster,
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			if peer != agentKey {
				return handshake.Peer{}, errors.New("not introduced")
			}
			return handshake.Peer{ID: "agent", PSK: p.ticket, Allowed: true}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.ep.Close() })
	p.key = p.ep.PublicKey()
	return p
}

// punchOrder is a dial order naming addr as the listener's address,
// punching from now for window.
func (p *punchPeer) punchOrder(id uint64, topic, addr string, window time.Duration) message.Action {
	return message.Action{ID: id, Op: "peer.dial", Term: 1, Intro: &message.Introduction{Topic: topic, PeerID: "peer-x", PeerAddr: addr,
		PeerKey: p.key[:], Ticket: p.ticket[:], Expires: time.Now().Add(time.Minute).UnixNano(),
		PunchAt: time.Now().UnixNano(), Window: int64(window)}}
}

// TestPunchRedialsPunchSource: the address the MMC saw for the listener
// is not where its packets come from (its NAT gave the flow towards the
// dialer a new port — here, a dead port stands for the old mapping). The
// listener's punch, authenticated by the introduction's ticket, names
// its real address; the dialer dials it and the link comes up. A punch
// with another introduction's token names nothing, and the dial fails
// when its window ends.
func TestPunchRedialsPunchSource(t *testing.T) {
	ag := newEnrolledAgent(t)
	m := newFakeMMC(t, ag)
	stop := ag.run(t, bundleOf(m.ref()), nil)
	defer stop()
	s := m.login(10 * time.Second)
	agentAddr := s.c.RemoteAddr()

	for _, c := range []struct {
		name   string
		ticket [32]byte // the punches' token's ticket
		linked bool
	}{
		{"authentic punch", [32]byte{7, 7, 7}, true},
		{"forged punch", [32]byte{6, 6, 6}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPunchPeer(t, ag.pub)
			topic := "migration/" + map[bool]string{true: "p1", false: "p2"}[c.linked]
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			result := make(chan message.ActionResult, 1)
			go func() { result <- s.order(t, p.punchOrder(1, topic, deadAddr(t), 2*time.Second)) }()
			// The listener punches, as the real one does, every Retry.
			go func() {
				tick := time.NewTicker(punch.Retry)
				defer tick.Stop()
				for seq := uint32(0); ctx.Err() == nil; seq++ {
					_ = p.ep.SendRaw(agentAddr, punch.Append(nil, punch.TokenFor(c.ticket, topic), seq))
					select {
					case <-ctx.Done():
					case <-tick.C:
					}
				}
			}()
			actx, acancel := context.WithTimeout(ctx, 4*time.Second)
			defer acancel()
			conn, err := p.ep.Accept(actx)
			if !c.linked {
				if err == nil {
					t.Fatal("a forged punch drew the dialer's handshake")
				}
				if r := <-result; r.OK {
					t.Fatalf("dial with forged punches only: %+v", r)
				}
				return
			}
			if err != nil {
				t.Fatalf("the dialer never dialled the punch's source: %v", err)
			}
			hello, _, err := message.First[message.PeerHello](ctx, conn, 5*time.Second)
			if err != nil || hello.Topic != topic {
				t.Fatalf("hello %+v, %v", hello, err)
			}
			if err := message.Send(ctx, conn, message.PeerHello{Topic: topic, From: "peer-x"}); err != nil {
				t.Fatal(err)
			}
			if r := <-result; !r.OK {
				t.Fatalf("dial: %+v", r)
			}
		})
	}
}

// TestListenerHelloBesideTheLink: the dialer reports its link up once
// the handshake is done and its own hello sent — before the listener's
// hello, which only confirms what the handshake proved — and closes the
// link when that hello, checked beside it, turns out wrong.
func TestListenerHelloBesideTheLink(t *testing.T) {
	ag := newEnrolledAgent(t)
	m := newFakeMMC(t, ag)
	stop := ag.run(t, bundleOf(m.ref()), nil)
	defer stop()
	s := m.login(10 * time.Second)
	p := newPunchPeer(t, ag.pub)
	const topic = "migration/h1"
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	order := p.punchOrder(1, topic, p.ep.LocalAddr().String(), 2*time.Second)
	order.Intro.PunchAt, order.Intro.Window = 0, 0 // a plain dial
	result := make(chan message.ActionResult, 1)
	go func() { result <- s.order(t, order) }()
	conn, err := p.ep.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hello, _, err := message.First[message.PeerHello](ctx, conn, 5*time.Second); err != nil || hello.Topic != topic {
		t.Fatalf("hello %+v, %v", hello, err)
	}
	select {
	case r := <-result:
		if !r.OK {
			t.Fatalf("dial: %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the dialer waits for the listener's hello before reporting its link up")
	}
	if err := message.Send(ctx, conn, message.PeerHello{Topic: "migration/other", From: "peer-x"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a hello for another topic left the link open")
	}
}
