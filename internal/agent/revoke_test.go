package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/agent"
	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/mmc"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// hostileAgent is an enrolled agent that ignores its revocation: it
// keeps the direct links the MMC introduced it to open for as long as
// the other side lets it.
type hostileAgent struct {
	t      *testing.T
	ep     *sudp.Endpoint
	id     string
	bundle identity.Bundle
	facts  identity.Facts
	code   identity.Code

	mu    sync.Mutex
	links []*sudp.Conn
}

func newHostileAgent(t *testing.T, b identity.Bundle) *hostileAgent {
	k, err := handshake.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: k, ClusterID: b.ClusterID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	return &hostileAgent{t: t, ep: ep, id: identity.NodeID(ep.PublicKey()), bundle: b,
		facts: identity.Facts{Hostname: "evil", MACs: []string{"02:00:00:00:00:66"}, DiskID: "evil-disk"}}
}

func (h *hostileAgent) dialMMC(ctx context.Context, psk [32]byte) *sudp.Conn {
	h.t.Helper()
	keys, _ := h.bundle.Keys()
	c, err := h.ep.Dial(ctx, h.bundle.MMCs[0].Addr, keys[0], psk)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// enrol enrols with a token and logs in; the session then answers the
// MMC's actions (peer.dial: connects and keeps the link) until ctx ends.
func (h *hostileAgent) enrol(ctx context.Context, token string) {
	h.t.Helper()
	c := h.dialMMC(ctx, identity.EnrolPSK(h.bundle.ClusterID))
	if err := message.Send(ctx, c, message.EnrolRequest{Facts: h.facts, Name: "evil", Token: token}); err != nil {
		h.t.Fatal(err)
	}
	e, err := message.Receive(ctx, c)
	if err != nil {
		h.t.Fatal(err)
	}
	rep, err := message.Decode[message.EnrolReply](e)
	if err != nil || rep.State != "approved" {
		h.t.Fatalf("hostile enrolment: %+v %v", rep, err)
	}
	copy(h.code[:], rep.Code)
	_ = message.Send(ctx, c, message.EnrolAck{})
	<-c.Done()

	s := h.dialMMC(ctx, identity.DerivePSK(h.code, h.bundle.ClusterID, h.facts))
	if err := message.Send(ctx, s, message.Hello{Facts: h.facts, Name: "evil"}); err != nil {
		h.t.Fatal(err)
	}
	if e, err := message.Receive(ctx, s); err != nil || e.Type != message.TypeWelcome {
		h.t.Fatalf("hostile login: %v %v", e.Type, err)
	}
	go func() {
		defer s.Close()
		for {
			e, err := message.Receive(ctx, s)
			if err != nil {
				return // revoked: the MMC session ends, the links stay
			}
			if e.Type != message.TypeAction {
				continue
			}
			act, err := message.Decode[message.Action](e)
			if err != nil {
				return
			}
			res := message.ActionResult{ID: act.ID, OK: true}
			if act.Op == "peer.dial" {
				if err := h.dialPeer(ctx, act.Intro); err != nil {
					res = message.ActionResult{ID: act.ID, Error: err.Error()}
				}
			}
			_ = message.Send(ctx, s, res)
		}
	}()
}

func (h *hostileAgent) dialPeer(ctx context.Context, in *message.Introduction) error {
	var key, ticket [32]byte
	copy(key[:], in.PeerKey)
	copy(ticket[:], in.Ticket)
	c, err := h.ep.Dial(ctx, in.PeerAddr, key, ticket)
	if err != nil {
		return err
	}
	if err := message.Send(ctx, c, message.PeerHello{Topic: in.Topic, From: h.id}); err != nil {
		return err
	}
	if _, err := message.Receive(ctx, c); err != nil {
		return err
	}
	h.mu.Lock()
	h.links = append(h.links, c)
	h.mu.Unlock()
	return nil
}

// TestRevokedPeerLinksClose: revoking an agent closes the direct links
// other agents hold with it at once — even if the revoked agent ignores
// its revocation and keeps them open — and the other agent refuses its
// key from then on.
func TestRevokedPeerLinksClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	srv, err := mmc.New(mmc.Config{DataDir: filepath.Join(dir, "mmc"), Listen: "127.0.0.1:0", Admin: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	mctx, stopMMC := context.WithCancel(ctx)
	mdone := make(chan struct{})
	go func() { defer close(mdone); _ = srv.Run(mctx) }()
	defer func() { stopMMC(); <-mdone }()
	cl := &api.Client{Base: srv.AdminURL(), Token: srv.AdminToken()}
	tok, err := cl.CreateToken(ctx, time.Hour, 2)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := agent.New(agent.Config{DataDir: filepath.Join(dir, "dst"), Bundle: srv.Bundle(), Token: tok.Token, Name: "dst", Site: "s",
		Listen: "127.0.0.1:0", ReportInterval: time.Second,
		Facts: identity.Overrides{Hostname: "dst", DiskID: "disk-dst", MachineID: "m-dst", MACs: []string{"02:00:00:00:00:01"}}})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	adone := make(chan struct{})
	go func() { defer close(adone); _ = dst.Run(actx) }()
	defer func() { stopAgent(); <-adone }()
	evil := newHostileAgent(t, srv.Bundle())
	evil.enrol(actx, tok.Token)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		hs, err := cl.Hosts(ctx)
		n := 0
		for _, h := range hs {
			if h.Online {
				n++
			}
		}
		if err == nil && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents online: %d (%v)", n, err)
		}
	}

	const topic = "migration/t1"
	if err := srv.Introduce(ctx, topic, dst.ID(), evil.id); err != nil {
		t.Fatal(err)
	}
	var link *sudp.Conn
	for deadline := time.Now().Add(10 * time.Second); link == nil; time.Sleep(20 * time.Millisecond) {
		if link = agent.LinkForTest(dst, topic); link == nil && time.Now().After(deadline) {
			t.Fatal("the introduced link did not come up")
		}
	}

	start := time.Now()
	if _, err := cl.AgentAction(ctx, evil.id, "revoke"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-link.Done():
		t.Logf("the destination's link with the revoked agent closed %v after the revocation: %v", time.Since(start).Round(time.Millisecond), link.Err())
	case <-time.After(3 * time.Second):
		t.Fatal("the link with the revoked agent is still open 3 s after the revocation")
	}
	if agent.LinkForTest(dst, topic) != nil {
		t.Fatal("the destination still lists the link")
	}
	evil.mu.Lock()
	theirs := evil.links[0]
	evil.mu.Unlock()
	select {
	case <-theirs.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("the revoked agent's end of the link is still open")
	}
	entries, err := cl.Audit(ctx, 0, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		if e.Action == "peer.withdraw" && e.Target == dst.ID() && e.Outcome == "ok" && strings.Contains(e.Detail, evil.id) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no peer.withdraw audit entry for %s: %s", dst.ID(), fmt.Sprint(entries))
	}
}
