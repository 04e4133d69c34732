package mmc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
)

// Raft timeouts of the multi-member tests: shorter than raft's 1 s so that
// failovers take a fraction of a second, long enough for a loaded
// machine under -race not to flap.
func tuneTestCluster(c *raft.Config) {
	c.HeartbeatTimeout, c.ElectionTimeout = 400*time.Millisecond, 400*time.Millisecond
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 10 * time.Millisecond
}

// member is one running MMC of a test cluster.
type member struct {
	s      *Server
	dir    string
	cancel context.CancelFunc
	done   chan struct{}
}

func (m *member) stop() {
	if m.cancel != nil {
		m.cancel()
		<-m.done
		m.cancel = nil
	}
}

func (m *member) client() *api.Client {
	return &api.Client{Base: m.s.AdminURL(), Token: m.s.AdminToken(), HTTP: &http.Client{Timeout: 20 * time.Second}}
}

// startMember starts an MMC on dir (joining with jc when set).
func startMember(t *testing.T, dir string, jc *JoinConfig) *member {
	t.Helper()
	s, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Admin: "127.0.0.1:0", raftStart: 200 * time.Millisecond,
		raftTune: tuneTestCluster, Join: jc, ReauthMin: time.Hour})
	if err != nil {
		t.Fatalf("starting the MMC in %s: %v", dir, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{s: s, dir: dir, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(m.done); s.Run(ctx) }()
	t.Cleanup(m.stop)
	return m
}

// startCluster starts one MMC and joins two more to it.
func startCluster(t *testing.T) []*member {
	t.Helper()
	first := startMember(t, t.TempDir(), nil)
	ms := []*member{first}
	for range 2 {
		tok, err := first.client().CreateMMCJoinToken(context.Background(), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, startMember(t, t.TempDir(), &JoinConfig{Bundle: first.s.Bundle(), Token: tok.Token}))
	}
	return ms
}

// leaderOf waits until one of ms leads (and has taken up the leadership).
func leaderOf(t *testing.T, ms []*member, within time.Duration) *member {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, m := range ms {
			if m.cancel != nil && m.s.leading.Load() {
				return m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no member led within %v", within)
	return nil
}

// TestClusterJoinForwardAndFailover: two MMCs join a first one with
// one-use tokens; every member lists the three voters and answers every
// command (a follower forwards to the leader); the admin token is the
// same everywhere; when the leader stops, another takes over, writes
// through a survivor succeed, and what was written before is there.
func TestClusterJoinForwardAndFailover(t *testing.T) {
	ms := startCluster(t)
	ctx := context.Background()
	for _, m := range ms[1:] {
		if m.s.AdminToken() != ms[0].s.AdminToken() {
			t.Fatal("a joined member has its own admin token, not the cluster's")
		}
		b, err := os.ReadFile(filepath.Join(m.dir, AdminTokenFile))
		if err != nil || strings.TrimSpace(string(b)) != ms[0].s.AdminToken() {
			t.Fatalf("%s holds %q, want the cluster's admin token (%v)", AdminTokenFile, b, err)
		}
	}
	leader := leaderOf(t, ms, 5*time.Second)
	var follower *member
	for _, m := range ms {
		if m != leader {
			follower = m
			break
		}
	}
	list, err := follower.client().MMCs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leaders := 0
	for _, m := range list {
		if !m.Voter {
			t.Errorf("member %s does not vote: %+v", m.ID, m)
		}
		if m.State == "leader" {
			leaders++
		}
		if m.State == "unreachable" || m.Admin == "" || m.Address == "" {
			t.Errorf("member %+v", m)
		}
	}
	if len(list) != 3 || leaders != 1 {
		t.Fatalf("mmcs list at a follower: %+v", list)
	}
	// A write at a follower reaches the leader and every member's store.
	tok, err := follower.client().CreateToken(ctx, time.Hour, 1)
	if err != nil {
		t.Fatalf("a write at a follower: %v", err)
	}
	waitFor(t, 5*time.Second, "the token on every member's store", func() bool {
		for _, m := range ms {
			toks, err := m.s.st.Tokens()
			if err != nil || !hasToken(toks, tok.ID) {
				return false
			}
		}
		return true
	})
	// Every member's bundle lists the three.
	waitFor(t, 5*time.Second, "bundles listing every member", func() bool {
		for _, m := range ms {
			if len(m.s.Bundle().MMCs) != 3 {
				return false
			}
			b, err := os.ReadFile(filepath.Join(m.dir, BundleFile))
			if err != nil {
				return false
			}
			got, err := identity.ParseBundle(strings.TrimSpace(string(b)))
			if err != nil || len(got.MMCs) != 3 {
				return false
			}
		}
		return true
	})

	termBefore := leader.s.term.Load()
	leader.stop()
	var survivors []*member
	for _, m := range ms {
		if m != leader {
			survivors = append(survivors, m)
		}
	}
	next := leaderOf(t, survivors, 10*time.Second)
	if next.s.term.Load() <= termBefore {
		t.Fatalf("the new leader's fencing term %d is not above the old one's %d", next.s.term.Load(), termBefore)
	}
	for _, m := range survivors {
		if _, err := m.client().CreateToken(ctx, time.Hour, 1); err != nil {
			t.Fatalf("a write at a survivor after the failover: %v", err)
		}
		toks, err := m.client().Tokens(ctx)
		if err != nil || !hasTokenInfo(toks, tok.ID) {
			t.Fatalf("the token written before the failover is gone: %v", err)
		}
	}
}

func hasToken(ts []store.Token, id string) bool {
	for _, t := range ts {
		if t.ID == id {
			return true
		}
	}
	return false
}

func hasTokenInfo(ts []api.TokenInfo, id string) bool {
	for _, t := range ts {
		if t.ID == id {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestJoinRefusals: an agent's join token, a used MMC token and a
// garbage token admit no MMC, and a refused joiner leaves the cluster as
// it was.
func TestJoinRefusals(t *testing.T) {
	first := startMember(t, t.TempDir(), nil)
	ctx := context.Background()
	agentTok, err := first.client().CreateToken(ctx, time.Hour, 5)
	if err != nil {
		t.Fatal(err)
	}
	mmcTok, err := first.client().CreateMMCJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	toks, err := first.client().Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if want := map[string]string{agentTok.ID: "agent", mmcTok.ID: "mmc"}[tk.ID]; tk.Purpose != want {
			t.Errorf("token %s listed for %q, want %q", tk.ID, tk.Purpose, want)
		}
	}
	startMember(t, t.TempDir(), &JoinConfig{Bundle: first.s.Bundle(), Token: mmcTok.Token})
	for _, tc := range []struct{ name, token string }{
		{"an agent's join token", agentTok.Token},
		{"a used MMC token", mmcTok.Token},
		{"a garbage token", "fjt1.nope"},
	} {
		_, err := New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Admin: "-", raftTune: tuneTestCluster,
			Join: &JoinConfig{Bundle: first.s.Bundle(), Token: tc.token}})
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: join returned %v, want a refusal", tc.name, err)
		}
	}
	list, err := first.client().MMCs(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("members after the refusals: %+v %v", list, err)
	}
}

// TestFollowerRedirectsAgents: an agent (or an enrolling host) that
// reaches a follower is sent to the leader.
func TestFollowerRedirectsAgents(t *testing.T) {
	ms := startCluster(t)
	leader := leaderOf(t, ms, 5*time.Second)
	var follower *member
	for _, m := range ms {
		if m != leader {
			follower = m
		}
	}
	a := newFakeAgent(t, follower.s)
	a.bundle = identity.Bundle{ClusterID: follower.s.clusterID, MMCs: follower.s.Bundle().MMCs}
	// Dial the follower by its own key.
	c, err := a.ep.Dial(context.Background(), follower.s.Addr().String(), follower.s.ep.PublicKey(), follower.s.enrolPSK)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := message.Send(context.Background(), c, message.EnrolRequest{Facts: a.facts, Name: "h"}); err != nil {
		t.Fatal(err)
	}
	e := a.recv(c)
	r, err := message.Decode[message.Redirect](e)
	if e.Type != message.TypeRedirect || err != nil || r.Leader.Addr != string(leader.s.repl.addr) {
		t.Fatalf("the follower answered %v %+v %v, want a redirect to the leader at %s", e.Type, r, err, leader.s.repl.addr)
	}
	if [32]byte(r.Leader.Key) != leader.s.ep.PublicKey() {
		t.Fatal("the redirect names the leader's address with another key")
	}
}

// TestTransferLeadershipAndRemove: `mmcs transfer-leadership ID` at a
// follower hands the leadership to the member named; `mmcs remove`
// takes a member out of the configuration and off every member's list
// and bundle, and its key gets no more raft streams; the last member
// cannot be removed.
func TestTransferLeadershipAndRemove(t *testing.T) {
	ms := startCluster(t)
	ctx := context.Background()
	leader := leaderOf(t, ms, 5*time.Second)
	var others []*member
	for _, m := range ms {
		if m != leader {
			others = append(others, m)
		}
	}
	target := others[1]
	res, err := others[0].client().TransferLeadership(ctx, target.s.repl.id)
	if err != nil {
		t.Fatal(err)
	}
	if res.Leader != target.s.repl.id {
		t.Fatalf("transfer to %s: the leader is %s", target.s.repl.id, res.Leader)
	}
	waitFor(t, 5*time.Second, "the member named leading", func() bool { return target.s.leading.Load() })
	// Remove the old leader (now a follower), at the member that leads.
	gone := leader
	// A leadership lost while the change commits leaves its outcome
	// unknown (503): the operator looks and tries again.
	waitFor(t, 10*time.Second, "the member removed", func() bool {
		err := leaderOf(t, ms, 5*time.Second).client().RemoveMMC(ctx, gone.s.repl.id)
		var se *api.StatusError
		return err == nil || errors.As(err, &se) && se.Status == http.StatusNotFound
	})
	var rest []*member
	for _, m := range ms {
		if m != gone {
			rest = append(rest, m)
		}
	}
	var why string
	defer func() {
		if t.Failed() {
			t.Log("last state:", why)
		}
	}()
	waitFor(t, 10*time.Second, "two members listed and bundled everywhere", func() bool {
		for i, m := range rest {
			list, err := m.client().MMCs(ctx)
			if err != nil || len(list) != 2 || len(m.s.Bundle().MMCs) != 2 {
				why = fmt.Sprintf("member %d: list %+v (%v), bundle %d", i, list, err, len(m.s.Bundle().MMCs))
				return false
			}
			for _, x := range list {
				if x.ID == gone.s.repl.id {
					why = "listed"
					return false
				}
			}
			if _, ok := m.s.repl.members.Has(gone.s.ep.PublicKey()); ok {
				why = fmt.Sprintf("member %d still has the key", i)
				return false
			}
		}
		return true
	})
	// The two left still commit.
	if _, err := rest[0].client().CreateToken(ctx, time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	if err := rest[0].client().RemoveMMC(ctx, "no-such-member"); err == nil {
		t.Fatal("removing an unknown member succeeded")
	}
}

// TestLeaderPromotesCaughtUpNonVoters: a member left a non-voter (its
// join session or the leader lost after it was added) is made a voter by
// the leader once it has caught up.
func TestLeaderPromotesCaughtUpNonVoters(t *testing.T) {
	ms := startCluster(t)
	leader := leaderOf(t, ms, 5*time.Second)
	var follower *member
	for _, m := range ms {
		if m != leader {
			follower = m
			break
		}
	}
	ctx := context.Background()
	if err := leader.s.repl.node.DemoteVoter(ctx, raft.ServerID(follower.s.repl.id)); err != nil {
		t.Fatal(err)
	}
	if follower.s.isVoter(ctx) && leader.s.isVoterID(ctx, follower.s.repl.id) {
		t.Fatal("the demoted member still votes")
	}
	waitFor(t, 10*time.Second, "the non-voter promoted again", func() bool { return leader.s.isVoterID(ctx, follower.s.repl.id) })
}

// isVoterID reports whether member id votes in this member's view.
func (s *Server) isVoterID(ctx context.Context, id string) bool {
	servers, _, err := s.repl.node.Configuration(ctx)
	if err != nil {
		return false
	}
	for _, sv := range servers {
		if string(sv.ID) == id {
			return sv.Suffrage == raft.Voter
		}
	}
	return false
}

// TestAgentLearnsMembersAndLeader: an agent logged in at the leader is
// sent the three members after its Welcome; a standby session at a
// follower names the leader at once and the new one when the leader
// stops.
func TestAgentLearnsMembersAndLeader(t *testing.T) {
	ms := startCluster(t)
	leader := leaderOf(t, ms, 5*time.Second)
	a := newFakeAgent(t, leader.s)
	a.bundle = leader.s.Bundle()
	// The leader first: the fake agent dials the bundle's first member.
	for i, m := range a.bundle.MMCs {
		if m.Addr == string(leader.s.repl.addr) {
			a.bundle.MMCs[0], a.bundle.MMCs[i] = a.bundle.MMCs[i], a.bundle.MMCs[0]
		}
	}
	a.enrolWithToken(token(t, leader.s, 1))
	c := a.login()
	defer c.Close()
	// Messages ride their own streams: the policy may come first.
	e := a.recv(c)
	for e.Type != message.TypeMembers && e.Type == message.TypePolicy {
		e = a.recv(c)
	}
	list, err := message.Decode[message.Members](e)
	if e.Type != message.TypeMembers || err != nil || list.Version == 0 || len(list.MMCs) != 3 {
		t.Fatalf("after Welcome: %v %+v %v, want the three members", e.Type, list, err)
	}
	var follower *member
	for _, m := range ms {
		if m != leader {
			follower = m
		}
	}
	psk := identity.DerivePSK(a.code, a.bundle.ClusterID, a.facts)
	sc, err := a.ep.Dial(context.Background(), follower.s.Addr().String(), follower.s.ep.PublicKey(), psk)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := message.Send(context.Background(), sc, message.Hello{Facts: a.facts, Standby: true}); err != nil {
		t.Fatal(err)
	}
	named := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e, err := message.Receive(ctx, sc)
		if err != nil {
			t.Fatalf("standby session: %v", err)
		}
		l, err := message.Decode[message.Leader](e)
		if e.Type != message.TypeLeader || err != nil {
			t.Fatalf("standby session: %v %v", e.Type, err)
		}
		return l.Leader.Addr
	}
	if got := named(); got != string(leader.s.repl.addr) {
		t.Fatalf("the standby session names %s, want the leader %s", got, leader.s.repl.addr)
	}
	leader.stop()
	next := named()
	if next == string(leader.s.repl.addr) || next == "" {
		t.Fatalf("after the leader stopped the standby session names %q", next)
	}
	if nl := leaderOf(t, ms, 10*time.Second); string(nl.s.repl.addr) != next {
		t.Fatalf("the standby session named %s, the leader is %s", next, nl.s.repl.addr)
	}
}
