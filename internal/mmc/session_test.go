package mmc

import (
	"context"
	"errors"
	"github.com/flynn/noise"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// fakeAgent speaks the agent side of the protocol by hand, so tests can
// make it misbehave.
type fakeAgent struct {
	t      *testing.T
	ep     *sudp.Endpoint
	bundle identity.Bundle
	facts  identity.Facts
	code   identity.Code
	static noise.DHKey
}

func startMMC(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.DataDir, cfg.Listen, cfg.Admin = t.TempDir(), "127.0.0.1:0", "-"
	cfg.raftStart = testRaftStart
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func newFakeAgent(t *testing.T, s *Server) *fakeAgent {
	k, err := handshake.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: k, ClusterID: s.clusterID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	return &fakeAgent{t: t, ep: ep, static: k, bundle: s.Bundle(), facts: identity.Facts{Hostname: "fake", MACs: []string{"02:00:00:00:00:99"}, DiskID: "fd"}}
}

func (a *fakeAgent) dial(psk [32]byte) *sudp.Conn {
	a.t.Helper()
	keys, _ := a.bundle.Keys()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := a.ep.Dial(ctx, a.bundle.MMCs[0].Addr, keys[0], psk)
	if err != nil {
		a.t.Fatal(err)
	}
	return c
}

func (a *fakeAgent) recv(c *sudp.Conn) message.Envelope {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := message.Receive(ctx, c)
	if err != nil {
		a.t.Fatal(err)
	}
	return e
}

// enrolWithToken runs the enrolment flow and keeps M.
func (a *fakeAgent) enrolWithToken(token string) {
	a.t.Helper()
	ctx := context.Background()
	c := a.dial(identity.EnrolPSK(a.bundle.ClusterID))
	defer c.Close()
	if err := message.Send(ctx, c, message.EnrolRequest{Facts: a.facts, Token: token}); err != nil {
		a.t.Fatal(err)
	}
	rep, err := message.Decode[message.EnrolReply](a.recv(c))
	if err != nil || rep.State != "approved" {
		a.t.Fatalf("enrol: %+v %v", rep, err)
	}
	copy(a.code[:], rep.Code)
	if err := message.Send(ctx, c, message.EnrolAck{}); err != nil {
		a.t.Fatal(err)
	}
	<-c.Done() // the MMC closes once it has the ack
}

// login returns a session past Welcome.
func (a *fakeAgent) login() *sudp.Conn {
	a.t.Helper()
	c := a.dial(identity.DerivePSK(a.code, a.bundle.ClusterID, a.facts))
	if err := message.Send(context.Background(), c, message.Hello{Facts: a.facts}); err != nil {
		a.t.Fatal(err)
	}
	if e := a.recv(c); e.Type != message.TypeWelcome {
		a.t.Fatalf("login: %v", e.Type)
	}
	return c
}

func token(t *testing.T, s *Server, uses int) string {
	tok, id, hash, err := identity.NewToken(s.cfg.Rand)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.st.PutToken(store.Token{ID: id, Hash: hash, Expires: time.Now().Add(time.Hour), UsesLeft: uses}); err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestReauthFailures: a correct answer keeps the session; a wrong answer
// and silence each end it with CodeReauthFailed, audited.
func TestReauthFailures(t *testing.T) {
	s := startMMC(t, Config{ReauthMin: 50 * time.Millisecond, ReauthMax: 100 * time.Millisecond, ReauthTimeout: time.Second})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	rk := identity.DeriveReauthKey(a.code, a.bundle.ClusterID)
	ctx := context.Background()

	for _, mode := range []string{"right", "wrong", "silent"} {
		t.Run(mode, func(t *testing.T) {
			c := a.login()
			defer c.Close()
			hs := c.Session().HandshakeHash
			for round := 0; round < 3; round++ {
				e := a.recv(c)
				for e.Type == message.TypePolicy || e.Type == message.TypeMembers { // pushed after Welcome
					e = a.recv(c)
				}
				ch, err := message.Decode[message.Challenge](e)
				if err != nil || e.Type != message.TypeChallenge {
					t.Fatalf("round %d: %v %v", round, e.Type, err)
				}
				var nonce [identity.NonceLen]byte
				copy(nonce[:], ch.Nonce)
				mac := identity.ReauthMAC(rk, hs, ch.Seq, nonce)
				if mode == "silent" {
					break
				}
				if mode == "wrong" {
					mac[0] ^= 1
				}
				if err := message.Send(ctx, c, message.ChallengeAnswer{Seq: ch.Seq, MAC: mac[:]}); err != nil {
					t.Fatal(err)
				}
				if mode != "right" {
					break
				}
			}
			if mode == "right" {
				if !s.reg.online(s.byKeyID(a)) {
					t.Fatal("session ended although every answer was right")
				}
				return
			}
			select {
			case <-c.Done():
			case <-time.After(3 * time.Second):
				t.Fatal("session survived a failed re-authentication")
			}
			var ce *sudp.CloseError
			if !errors.As(c.Err(), &ce) || ce.Code != CodeReauthFailed {
				t.Fatalf("closed with %v, want CodeReauthFailed", c.Err())
			}
		})
	}
	entries, _ := s.st.Audit(0, 0)
	n := 0
	for _, e := range entries {
		if e.Action == "reauth.failed" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d reauth.failed audit entries, want 2", n)
	}
}

func (s *Server) byKeyID(a *fakeAgent) string {
	return identity.NodeID(a.ep.PublicKey())
}

// TestTokenGuessingThrottled: after the burst, guesses from one source are
// refused without even consulting the database; another source is not
// affected.
func TestTokenGuessingThrottled(t *testing.T) {
	s := startMMC(t, Config{})
	now := time.Now()
	guess := "fjt1.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	src := netip.MustParseAddr("192.0.2.7")
	var throttled int
	for i := 0; i < 20; i++ {
		if _, err := s.checkToken(guess, src, now); err != nil && err.Error() == "too many token attempts from this source" {
			throttled++
		}
	}
	if throttled != 15 {
		t.Fatalf("%d of 20 guesses throttled, want 15 (burst 5)", throttled)
	}
	good := token(t, s, 1)
	if _, err := s.checkToken(good, src, now); err == nil {
		t.Fatal("a valid token from a throttled source got through while throttled")
	}
	if _, err := s.checkToken(good, netip.MustParseAddr("192.0.2.8"), now); err != nil {
		t.Fatalf("another source: %v", err)
	}
}

// TestEnrolmentSessionIsRestricted: a key that is not approved gets only an
// enrolment session; anything but an enrolment request on it ends the
// session, is counted and audited, and changes nothing.
func TestEnrolmentSessionIsRestricted(t *testing.T) {
	s := startMMC(t, Config{})
	a := newFakeAgent(t, s)
	// Pending: enrol without a token.
	c := a.dial(identity.EnrolPSK(a.bundle.ClusterID))
	ctx := context.Background()
	if err := message.Send(ctx, c, message.EnrolRequest{Facts: a.facts}); err != nil {
		t.Fatal(err)
	}
	if rep, err := message.Decode[message.EnrolReply](a.recv(c)); err != nil || rep.State != "pending" {
		t.Fatalf("%+v %v", rep, err)
	}
	c.Close()
	// The pending key tries to act as an approved agent on a new session.
	for _, m := range []struct {
		typ  message.Type
		body message.Body
	}{
		{message.TypeHello, message.Hello{Facts: a.facts}},
		{message.TypeTimeRequest, message.TimeRequest{T1: 1}},
		{message.TypeChallengeAnswer, message.ChallengeAnswer{Seq: 1, MAC: make([]byte, 32)}},
	} {
		c := a.dial(identity.EnrolPSK(a.bundle.ClusterID))
		if c.Session().LoginState != LoginPending {
			t.Fatalf("login state %d, want pending", c.Session().LoginState)
		}
		if err := message.Send(ctx, c, m.body); err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%v on an enrolment session did not end it", m.typ)
		}
		var ce *sudp.CloseError
		if !errors.As(c.Err(), &ce) || ce.Code != CodeProtocol {
			t.Fatalf("%v: closed with %v, want CodeProtocol", m.typ, c.Err())
		}
	}
	// A made-up K for the pending key does not even complete a handshake.
	keys, _ := a.bundle.Keys()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if c, err := a.ep.Dial(dctx, a.bundle.MMCs[0].Addr, keys[0], [32]byte{1, 2, 3}); err == nil {
		c.Close()
		t.Fatal("a pending key logged in with a guessed psk")
	}
	ag, err := s.st.Agent(s.byKeyID(a))
	if err != nil || ag.State != store.StatePending || s.reg.online(ag.ID) {
		t.Fatalf("after the attempts: %+v %v", ag, err)
	}
	entries, _ := s.st.Audit(0, 0)
	n := 0
	for _, e := range entries {
		if e.Action == "enrol.unexpected" && e.Outcome == "denied" {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d enrol.unexpected audit entries, want 3", n)
	}
}

// TestRevokeBeforeHello: a revocation that lands after an agent's handshake
// but before its Hello must not let the session through (the race window
// the session registration closes).
func TestRevokeBeforeHello(t *testing.T) {
	s := startMMC(t, Config{})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	c := a.dial(identity.DerivePSK(a.code, a.bundle.ClusterID, a.facts))
	defer c.Close()
	if _, err := s.decide(s.byKeyID(a), store.StateRevoked, "admin", "test"); err != nil {
		t.Fatal(err)
	}
	// The MMC may already have closed the session (it saw the revocation
	// first); if not, the Hello must not get a Welcome.
	if err := message.Send(context.Background(), c, message.Hello{Facts: a.facts}); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if e, err := message.Receive(ctx, c); err == nil {
			t.Fatalf("revoked agent got %v", e.Type)
		}
	}
	if s.reg.online(s.byKeyID(a)) {
		t.Fatal("revoked agent registered as online")
	}
}

// TestPendingLimit: beyond MaxPending, a new enrolment is deferred (retry
// later) and nothing is stored.
func TestPendingLimit(t *testing.T) {
	s := startMMC(t, Config{MaxPending: 2})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		a := newFakeAgent(t, s)
		c := a.dial(identity.EnrolPSK(a.bundle.ClusterID))
		if err := message.Send(ctx, c, message.EnrolRequest{Facts: a.facts}); err != nil {
			t.Fatal(err)
		}
		e := a.recv(c)
		switch {
		case i < 2 && e.Type != message.TypeEnrolReply:
			t.Fatalf("enrolment %d: %v", i, e.Type)
		case i == 2:
			r, err := message.Decode[message.Refused](e)
			if e.Type != message.TypeRefused || err != nil || !r.Retry {
				t.Fatalf("enrolment beyond the limit: %v %+v %v", e.Type, r, err)
			}
		}
		c.Close()
	}
	if agents, _ := s.st.Agents(); len(agents) != 2 {
		t.Fatalf("%d records, want 2", len(agents))
	}
}

// A message for a session waits for its Welcome: the session is reachable
// by orders before the Welcome is sent, each message rides its own
// stream, and an order that overtook the Welcome ended the agent's login
// ("dst went away during peer.expect" under the race detector).
func TestSendWaitsForWelcome(t *testing.T) {
	s := startMMC(t, Config{})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	c := a.login() // any live connection serves as the session's
	ss := &session{c: c, welcomed: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ss.send(ctx, message.EventAck{Seq: 1}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("send before the Welcome: %v, want it held until the deadline", err)
	}
	close(ss.welcomed)
	if err := ss.send(context.Background(), message.EventAck{Seq: 2}); err != nil {
		t.Fatalf("send after the Welcome: %v", err)
	}
	c.Close()
	gone := &session{c: c, welcomed: make(chan struct{})}
	if err := gone.send(context.Background(), message.EventAck{Seq: 3}); !errors.Is(err, errSessionGone) {
		t.Fatalf("send on a session that ended before its Welcome: %v", err)
	}
}

// TestProtocolVersions: an agent speaking a control protocol this MMC
// does not is refused at login with the reason, alarmed and audited; one
// from before the field (protocol 0 = 1) and one of another release with
// the same protocol log in, and the record and the API say which release
// each runs and whether it is the MMC's.
func TestProtocolVersions(t *testing.T) {
	s := startMMC(t, Config{Version: "1.4.0"})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	psk := identity.DerivePSK(a.code, a.bundle.ClusterID, a.facts)
	hello := func(h message.Hello) message.Envelope {
		t.Helper()
		c := a.dial(psk)
		t.Cleanup(func() { c.Close() })
		h.Facts = a.facts
		if err := message.Send(context.Background(), c, h); err != nil {
			t.Fatal(err)
		}
		return a.recv(c)
	}

	e := hello(message.Hello{Version: "9.0.0", Protocol: message.ProtocolVersion + 1})
	r, err := message.Decode[message.Refused](e)
	if e.Type != message.TypeRefused || err != nil || !strings.Contains(r.Reason, "upgrade the MMCs first") {
		t.Fatalf("newer protocol: %v %+v %v", e.Type, r, err)
	}
	if n, last := countAudit(t, s, "login.protocol"); n != 1 || last.Outcome != "denied" {
		t.Fatalf("protocol refusal audited %d times (%+v)", n, last)
	}
	evs, _ := s.st.Events(0, 0, true)
	if len(evs) != 1 || evs[0].Kind != "protocol-mismatch" {
		t.Fatalf("alarms %+v, want one protocol-mismatch", evs)
	}

	for _, tc := range []struct {
		h    message.Hello
		skew bool
	}{
		{message.Hello{Version: "1.3.2"}, true}, // before the field: protocol 1
		{message.Hello{Version: "1.4.0", Protocol: message.ProtocolVersion}, false},
	} {
		e := hello(tc.h)
		w, err := message.Decode[message.Welcome](e)
		if e.Type != message.TypeWelcome || err != nil || w.Version != "1.4.0" || w.Protocol != message.ProtocolVersion {
			t.Fatalf("%+v: %v %+v %v", tc.h, e.Type, w, err)
		}
		var pub [32]byte
		copy(pub[:], a.static.Public)
		rec, _ := s.st.Agent(identity.NodeID(pub))
		if rec.Version != tc.h.Version || rec.Protocol != 1 {
			t.Fatalf("record %q protocol %d, want %q and 1", rec.Version, rec.Protocol, tc.h.Version)
		}
		if v := s.view(rec); v.Version != tc.h.Version || v.VersionSkew != tc.skew {
			t.Fatalf("view %q skew %v, want %q skew %v", v.Version, v.VersionSkew, tc.h.Version, tc.skew)
		}
	}
}
