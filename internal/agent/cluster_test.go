package agent_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/agent"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// The tests here play the MMC themselves (fakeMMC) so that they choose the
// terms, member lists and redirects an MMC cluster would send; the agent
// is real, on real loopback sockets.

const testCluster = "c-fence-test"

// enrolledAgent is an agent's data directory prepared as if it had
// enrolled: its key, and a state file with a registration code. psk is
// the session key an MMC derives for it.
type enrolledAgent struct {
	dir       string
	pub       [32]byte
	facts     identity.Overrides
	psk       [32]byte
	agent     *agent.Agent // the running agent (run)
	noStandby bool         // run it with Config.NoStandby
}

func newEnrolledAgent(t *testing.T) *enrolledAgent {
	t.Helper()
	dir := t.TempDir()
	k, err := identity.LoadOrCreateKey(dir, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := &enrolledAgent{dir: dir, facts: identity.Overrides{Hostname: "h1", DiskID: "disk-h1", MachineID: "m-h1", MACs: []string{"02:00:00:00:00:01"}}}
	copy(e.pub[:], k.Public)
	f, err := identity.Discover(e.facts)
	if err != nil {
		t.Fatal(err)
	}
	var code identity.Code
	_, _ = rand.Read(code[:])
	st, _ := json.Marshal(map[string]any{"agent_id": identity.NodeID(e.pub), "cluster": testCluster, "code": code[:], "facts": f})
	if err := identity.WriteSecretFile(filepath.Join(dir, agent.StateFile), st); err != nil {
		t.Fatal(err)
	}
	e.psk = identity.DerivePSK(code, testCluster, f)
	return e
}

// run starts the agent on bundle until the returned stop is called.
func (e *enrolledAgent) run(t *testing.T, b identity.Bundle, d hypervisor.Driver) (stop func()) {
	t.Helper()
	a, err := agent.New(agent.Config{DataDir: e.dir, Bundle: b, Name: "h1", Site: "s", Listen: "127.0.0.1:0", Facts: e.facts,
		Driver: d, ReportInterval: time.Hour, DialTimeout: 300 * time.Millisecond, NoStandby: e.noStandby})
	if err != nil {
		t.Fatal(err)
	}
	e.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}
}

// fakeMMC is one MMC member that knows one agent.
type fakeMMC struct {
	t        *testing.T
	ep       *sudp.Endpoint
	redirect atomic.Pointer[message.Member] // answer a Hello with a redirect there
	// standbyLeader, if set, is the leader a standby session is told of
	// (unset: a standby Hello is answered like a login).
	standbyLeader atomic.Pointer[message.Member]
	term          atomic.Uint64 // sent in Welcome
	// once, if set, is the Welcome term of the next login only.
	once   atomic.Uint64
	logins chan *fakeSession
	wg     sync.WaitGroup
}

type fakeSession struct {
	c       *sudp.Conn
	results chan message.ActionResult
}

func newFakeMMC(t *testing.T, ag *enrolledAgent) *fakeMMC {
	t.Helper()
	k, err := handshake.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: k, ClusterID: testCluster,
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			return handshake.Peer{ID: identity.NodeID(peer), PSK: ag.psk, Allowed: peer == ag.pub, LoginState: 3}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMMC{t: t, ep: ep, logins: make(chan *fakeSession, 8)}
	m.term.Store(1)
	ctx, cancel := context.WithCancel(context.Background())
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := ep.Accept(ctx)
			if err != nil {
				return
			}
			m.wg.Add(1)
			go func() { defer m.wg.Done(); m.serve(ctx, c) }()
		}
	}()
	t.Cleanup(func() { cancel(); ep.Close(); m.wg.Wait() })
	return m
}

func (m *fakeMMC) welcomeTerm() uint64 {
	if t := m.once.Swap(0); t != 0 {
		return t
	}
	return m.term.Load()
}

func (m *fakeMMC) member() message.Member {
	k := m.ep.PublicKey()
	return message.Member{Addr: m.ep.LocalAddr().String(), Key: k[:]}
}

func (m *fakeMMC) ref() identity.MMCRef {
	return identity.MMCRef{Addr: m.ep.LocalAddr().String(), Key: handshake.EncodeKey(m.ep.PublicKey())}
}

func (m *fakeMMC) serve(ctx context.Context, c *sudp.Conn) {
	defer c.Close()
	e, err := message.Receive(ctx, c)
	if err != nil || e.Type != message.TypeHello {
		return
	}
	if l := m.standbyLeader.Load(); l != nil {
		if h, err := message.Decode[message.Hello](e); err == nil && h.Standby {
			_ = message.Send(ctx, c, message.Leader{Leader: *l})
			select {
			case <-c.Done():
			case <-ctx.Done():
			}
			return
		}
	}
	if r := m.redirect.Load(); r != nil {
		_ = message.Send(ctx, c, message.Redirect{Leader: *r})
		select {
		case <-c.Done():
		case <-time.After(2 * time.Second):
		}
		_ = c.CloseWithError(message.CodeNotLeader, "not the leader")
		return
	}
	if err := message.Send(ctx, c, message.Welcome{AgentID: "a", Term: m.welcomeTerm()}); err != nil {
		return
	}
	s := &fakeSession{c: c, results: make(chan message.ActionResult, 16)}
	m.logins <- s
	for {
		e, err := message.Receive(ctx, c)
		if err != nil {
			return
		}
		if e.Type == message.TypeActionResult {
			r, _ := message.Decode[message.ActionResult](e)
			s.results <- r
		}
	}
}

func (m *fakeMMC) login(timeout time.Duration) *fakeSession {
	m.t.Helper()
	select {
	case s := <-m.logins:
		return s
	case <-time.After(timeout):
		m.t.Fatalf("no login at %s within %v", m.ep.LocalAddr(), timeout)
		return nil
	}
}

// order sends an action and returns the agent's result.
func (s *fakeSession) order(t *testing.T, a message.Action) message.ActionResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := message.Send(ctx, s.c, a); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-s.results:
		if r.ID != a.ID {
			t.Fatalf("result for action %d, want %d", r.ID, a.ID)
		}
		return r
	case <-ctx.Done():
		t.Fatalf("no result for %s", a.Op)
		return message.ActionResult{}
	}
}

func bundleOf(ms ...identity.MMCRef) identity.Bundle {
	return identity.Bundle{ClusterID: testCluster, MMCs: ms}
}

// TestFencing: once an agent has obeyed an order of term 5, an order of
// a lower term (a deposed leader's) is refused and changes nothing; after
// a restart it still refuses a member serving term 3 (the term was
// persisted); a newer term is obeyed.
func TestFencing(t *testing.T) {
	ag := newEnrolledAgent(t)
	mmc := newFakeMMC(t, ag)
	d := newFakeDriver(newWorld())
	stop := ag.run(t, bundleOf(mmc.ref()), d)
	s := mmc.login(10 * time.Second)

	if r := s.order(t, message.Action{ID: 1, Op: "vm.create", Spec: &hypervisor.Spec{Name: "v1", Memory: 4096, VCPUs: 1}, Term: 5}); !r.OK {
		t.Fatalf("create at term 5: %+v", r)
	}
	if r := s.order(t, message.Action{ID: 2, Op: "vm.pause", VM: "v1", Term: 5}); !r.OK {
		t.Fatalf("pause at the same term: %+v", r)
	}
	for i, term := range []uint64{4, 0} {
		r := s.order(t, message.Action{ID: uint64(3 + i), Op: "vm.resume", VM: "v1", Term: term})
		if r.OK || !strings.Contains(r.Error, "fenced") || r.Fenced != 5 {
			t.Fatalf("resume at term %d after term 5: %+v, want refused naming term 5", term, r)
		}
	}
	if _, st, ok := d.content("v1"); !ok || st != hypervisor.StatePaused {
		t.Fatalf("v1 after refused resumes: exists %v, state %v; want paused", ok, st)
	}
	stop()

	// The highest term survived the restart: a member serving term 3
	// gets no session.
	mmc.once.Store(3)
	mmc.term.Store(5)
	stop = ag.run(t, bundleOf(mmc.ref()), d)
	defer stop()
	s = mmc.login(10 * time.Second)
	select {
	case <-s.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("after a restart, the agent stayed with a member serving term 3 below the term 5 it obeyed")
	}
	s = mmc.login(10 * time.Second)
	if r := s.order(t, message.Action{ID: 1, Op: "vm.delete", VM: "v1", Term: 4}); r.OK || !strings.Contains(r.Error, "fenced") {
		t.Fatalf("delete at term 4 after a restart: %+v, want refused", r)
	}
	if _, _, ok := d.content("v1"); !ok {
		t.Fatal("a refused delete deleted the VM")
	}
	if r := s.order(t, message.Action{ID: 2, Op: "vm.delete", VM: "v1", Term: 6}); !r.OK {
		t.Fatalf("delete at term 6: %+v", r)
	}
	if _, _, ok := d.content("v1"); ok {
		t.Fatal("the VM survived a delete from the newer leader")
	}
	if r := s.order(t, message.Action{ID: 3, Op: "vm.create", Spec: &hypervisor.Spec{Name: "v2", Memory: 4096, VCPUs: 1}, Term: 5}); r.OK {
		t.Fatalf("create at term 5 after term 6: %+v, want refused", r)
	}
	if _, _, ok := d.content("v2"); ok {
		t.Fatal("a refused create created the VM")
	}
}

// deadAddr is a loopback UDP address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// TestDialsEveryMember: the first MMC of the bundle is down; the agent
// logs in at the second.
func TestDialsEveryMember(t *testing.T) {
	ag := newEnrolledAgent(t)
	up := newFakeMMC(t, ag)
	down := up.ref()
	down.Addr = deadAddr(t)
	stop := ag.run(t, bundleOf(down, up.ref()), nil)
	defer stop()
	up.login(10 * time.Second)
}

// TestMembersUpdate: a member list sent over the session is kept, and a
// restarted agent dials its members rather than its bundle's.
func TestMembersUpdate(t *testing.T) {
	ag := newEnrolledAgent(t)
	a, b := newFakeMMC(t, ag), newFakeMMC(t, ag)
	stop := ag.run(t, bundleOf(a.ref()), nil)
	s := a.login(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := message.Send(ctx, s.c, message.Members{Version: 2, MMCs: []message.Member{b.member()}}); err != nil {
		t.Fatal(err)
	}
	// A stale list (lower version) does not replace it.
	if err := message.Send(ctx, s.c, message.Members{Version: 1, MMCs: []message.Member{a.member()}}); err != nil {
		t.Fatal(err)
	}
	// The agent answers an order sent after the lists, so it has handled them.
	if r := s.order(t, message.Action{ID: 1, Op: "peer.close", Intro: &message.Introduction{Topic: "migration/x", PeerID: "p", PeerAddr: "127.0.0.1:1",
		PeerKey: make([]byte, 32), Ticket: make([]byte, 32)}, Term: 1}); !r.OK {
		t.Fatalf("peer.close: %+v", r)
	}
	stop()

	stop = ag.run(t, bundleOf(a.ref()), nil)
	defer stop()
	b.login(10 * time.Second)
	select {
	case <-a.logins:
		t.Fatal("the restarted agent logged in at the member its bundle names, not the one it was told")
	default:
	}
}

// TestRedirect: a member that is not the leader redirects the agent to
// the one that is, which it logs in at.
func TestRedirect(t *testing.T) {
	ag := newEnrolledAgent(t)
	follower, leader := newFakeMMC(t, ag), newFakeMMC(t, ag)
	lm := leader.member()
	follower.redirect.Store(&lm)
	stop := ag.run(t, bundleOf(follower.ref()), nil)
	defer stop()
	leader.login(10 * time.Second)
}
