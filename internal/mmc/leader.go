package mmc

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/inventory"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// Only the leader is active. Every member keeps the store (raft's FSM
// writes it), its view of the agents for the handshake, and the
// cluster's member list; the leader alone serves agents, runs the
// orchestrator, the policy loop and the expiry and retention jobs, and
// answers the admin API (the others forward to it, forward.go). Agents
// that reach another member are sent to the leader (message.Redirect).
// This is the shape of Nomad's and Consul's establishLeadership /
// revokeLeadership: on gaining the leadership a member makes sure its
// store holds everything committed before (a barrier), takes a new
// fencing term, reloads what it derives from the store and starts the
// leader's work; on losing it, it stops that work and ends every agent
// session, so that agents go to the new leader.

// leadershipPoll is how often the leadership loop looks at raft's state.
// raft's LeaderCh drops a change nobody reads at that moment; polling
// cannot miss one, and 20 ms is small beside an election (≥ 1 s).
const leadershipPoll = 20 * time.Millisecond

// runLeadership runs the leader's work whenever this member leads, until
// ctx ends.
func (s *Server) runLeadership(ctx context.Context) {
	tick := time.NewTicker(leadershipPoll)
	defer tick.Stop()
	for {
		for s.repl.node.State() != raft.Leader {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		lctx, cancel := context.WithCancel(ctx)
		// A single MMC established its leadership in New already.
		if s.leading.Load() && s.repl.node.State() == raft.Leader {
			var wg sync.WaitGroup
			s.startLeaderWork(lctx, &wg)
			s.lead(ctx, tick)
			s.revoke(ctx, cancel, &wg)
			continue
		}
		if err := s.establish(lctx); err != nil {
			cancel()
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("mmc: could not take up the leadership; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		var wg sync.WaitGroup
		s.startLeaderWork(lctx, &wg)
		s.leading.Store(true)
		s.lead(ctx, tick)
		s.revoke(ctx, cancel, &wg)
	}
}

// lead returns once this member no longer leads (or ctx ended).
func (s *Server) lead(ctx context.Context, tick *time.Ticker) {
	s.log.Info("mmc: leading the cluster", "term", s.term.Load(), "raft_term", s.repl.node.Term())
	for s.repl.node.State() == raft.Leader && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// revoke gives up the leadership: the leader's work stops and every
// agent session ends, so that agents go to the new leader (their
// sessions here would carry orders from a member that can no longer
// write).
func (s *Server) revoke(ctx context.Context, stop context.CancelFunc, work *sync.WaitGroup) {
	s.leading.Store(false)
	stop()
	work.Wait()
	for _, ss := range s.reg.live() {
		ss.end(message.CodeNotLeader, "this MMC is no longer the leader")
	}
	if ctx.Err() == nil {
		s.log.Warn("mmc: lost the leadership", "state", s.repl.node.State().String())
	}
}

// establish takes up the leadership: every entry committed before is
// applied here (barrier), a new fencing term is taken through the log
// (so a deposed leader's orders are refused by agents that saw this
// one's), this member's own record is current, and everything the
// leader derives from the store is reloaded from it.
func (s *Server) establish(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := s.repl.node.Barrier(ctx); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	term, err := s.st.TakeLeaderTerm(s.repl.id, s.repl.node.Term(), s.cfg.Now())
	if err != nil {
		return fmt.Errorf("fencing term: %w", err)
	}
	s.term.Store(term)
	if err := s.recordSelf(ctx); err != nil {
		return err
	}
	agents, err := s.st.Agents()
	if err != nil {
		return err
	}
	s.invMu.Lock()
	s.inv = inventory.New()
	s.invMu.Unlock()
	s.reg.load(agents)
	if err := s.loadInventory(); err != nil {
		return err
	}
	if err := s.pol.reload(); err != nil {
		return err
	}
	s.syncMembers(ctx)
	return nil
}

// recordSelf keeps this member's record (address, key, admin URL) and
// its raft address current: a single MMC from before clustering has
// neither, and a member restarted with another address must be reached
// there.
func (s *Server) recordSelf(ctx context.Context) error {
	me := store.Member{ID: s.repl.id, Addr: string(s.repl.addr), Key: s.ep.PublicKey(), Admin: s.AdminURL(), Added: s.cfg.Now()}
	ms, err := s.st.Members()
	if err != nil {
		return err
	}
	i := slices.IndexFunc(ms, func(m store.Member) bool { return m.ID == me.ID })
	if i < 0 || ms[i].Addr != me.Addr || ms[i].Key != me.Key || ms[i].Admin != me.Admin {
		if _, err := s.st.SetMember(me); err != nil {
			return fmt.Errorf("recording this member: %w", err)
		}
		s.repl.members.Set(s.repl.addr, me.Key)
	}
	servers, _, err := s.repl.node.Configuration(ctx)
	if err != nil {
		return err
	}
	for _, sv := range servers {
		if string(sv.ID) == s.repl.id && sv.Address != s.repl.addr && sv.Suffrage == raft.Voter {
			if err := s.repl.node.AddVoter(ctx, sv.ID, s.repl.addr); err != nil {
				return fmt.Errorf("updating this member's raft address: %w", err)
			}
		}
	}
	return nil
}

// startLeaderWork starts the leader's jobs under ctx.
func (s *Server) startLeaderWork(ctx context.Context, wg *sync.WaitGroup) {
	jobs := []func(context.Context){
		s.orch.run,
		s.runPromotions,
		func(ctx context.Context) { s.runPolicy(ctx, s.cfg.PolicyInterval) },
		s.runEvacuations,
		s.runExpiry,
		s.runRetention,
	}
	wg.Add(len(jobs))
	for _, job := range jobs {
		go func() {
			defer wg.Done()
			job(ctx)
		}()
	}
}

// raftCluster is the Cluster of a replicated MMC.
type raftCluster struct{ s *Server }

// Term implements Cluster: the fencing term this member took when it
// became the leader (store.LeaderTerm).
func (c raftCluster) Term() uint64 { return c.s.term.Load() }

// Redirect implements Cluster: a member that is not the leader (or has
// not finished taking up the leadership) sends agents to the leader; an
// empty Member means no leader is known (an election is under way).
func (c raftCluster) Redirect() (message.Member, bool) {
	if c.s.leading.Load() {
		return message.Member{}, false
	}
	addr, _ := c.s.repl.node.Leader()
	if addr == "" || addr == c.s.repl.addr {
		return message.Member{}, true
	}
	key, ok := c.s.repl.members.Key(addr)
	if !ok {
		return message.Member{}, true
	}
	return message.Member{Addr: string(addr), Key: key[:]}, true
}

// Members implements Cluster. A one-member cluster sends none: the
// agents' bundle names it already, and an MMC that was never given an
// --advertise address would send its loopback default to agents that
// reach it from elsewhere.
func (c raftCluster) Members() message.Members {
	if m := c.s.agentMembers.Load(); m != nil && len(m.MMCs) > 1 {
		return *m
	}
	return message.Members{}
}

// storeObserver keeps what a member derives from the store current with
// the entries raft applies (replica.FSMObserver). It runs on raft's FSM
// goroutine: it only marks what changed; runSync does the work.
type storeObserver struct{ s *Server }

func (o storeObserver) Applied(c store.Command, v any, err error) {
	switch c := c.(type) {
	case *store.MemberSet, *store.MemberRemove:
		o.s.dirty.markMembers()
	case *store.AgentCreate:
		o.s.dirty.markAgent(c.Agent.ID)
	case *store.AgentLogin:
		o.s.dirty.markAgent(c.ID)
	case *store.AgentDecide:
		o.s.dirty.markAgent(c.ID)
	case *store.AgentCodeConfirmed:
		o.s.dirty.markAgent(c.ID)
	case *store.AgentExpire:
		o.s.dirty.markAgent(c.ID)
	}
}

func (o storeObserver) Restored() { o.s.dirty.markAll() }

// maxDirtyAgents bounds the agents queued for runSync; beyond it the
// whole registry is reloaded instead.
const maxDirtyAgents = 4096

// dirtySet is what changed in the store since runSync last looked.
type dirtySet struct {
	mu      sync.Mutex
	agents  map[string]struct{}
	all     bool
	members bool
	wake    chan struct{} // buffered 1
}

func newDirtySet() *dirtySet {
	return &dirtySet{agents: map[string]struct{}{}, wake: make(chan struct{}, 1)}
}

func (d *dirtySet) markAgent(id string) {
	d.mu.Lock()
	if len(d.agents) < maxDirtyAgents {
		d.agents[id] = struct{}{}
	} else {
		d.all = true
	}
	d.mu.Unlock()
	d.signal()
}

func (d *dirtySet) markMembers() {
	d.mu.Lock()
	d.members = true
	d.mu.Unlock()
	d.signal()
}

func (d *dirtySet) markAll() {
	d.mu.Lock()
	d.all, d.members = true, true
	d.mu.Unlock()
	d.signal()
}

func (d *dirtySet) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dirtySet) take() (agents []string, all, members bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id := range d.agents {
		agents = append(agents, id)
	}
	clear(d.agents)
	all, members = d.all, d.members
	d.all, d.members = false, false
	return agents, all, members
}

// runSync brings the registry and the member list up to date with the
// store whenever the observer marks a change, and checks the raft
// configuration every second (a member removed changes no record
// before the configuration).
func (s *Server) runSync(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.dirty.wake:
		case <-tick.C:
			s.dirty.markMembers()
			continue
		}
		agents, all, members := s.dirty.take()
		if all {
			if as, err := s.st.Agents(); err == nil {
				s.reg.load(as)
			} else {
				s.log.Warn("mmc: reloading agents", "err", err)
			}
		} else {
			for _, id := range agents {
				a, err := s.st.Agent(id)
				if errors.Is(err, store.ErrNotFound) {
					continue
				}
				if err != nil {
					s.log.Warn("mmc: reloading agent", "agent", id, "err", err)
					continue
				}
				s.reg.publish(a)
			}
		}
		if members {
			s.syncMembers(ctx)
		}
	}
}

// syncMembers rebuilds the members' key directory, the bundle file and
// the list agents are sent from the store's records and raft's
// configuration; if this member leads and the list changed, every agent
// is sent it.
func (s *Server) syncMembers(ctx context.Context) {
	recs, err := s.st.Members()
	if err != nil {
		s.log.Warn("mmc: reading members", "err", err)
		return
	}
	for _, m := range recs {
		s.repl.members.Set(raft.ServerAddress(m.Addr), m.Key)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	servers, _, err := s.repl.node.Configuration(cctx)
	cancel()
	if err != nil {
		return
	}
	inConfig := map[raft.ServerAddress]bool{}
	for _, sv := range servers {
		inConfig[sv.Address] = true
	}
	// A member no longer in the configuration and no longer on record
	// gets no raft streams; one still on record (being added) keeps its
	// key.
	onRecord := map[string]bool{}
	for _, m := range recs {
		onRecord[m.Addr] = true
	}
	for _, addr := range s.repl.members.Addrs() {
		if !inConfig[addr] && !onRecord[string(addr)] {
			s.repl.members.Remove(addr)
		}
	}
	// The list's version is the log index applied when it changed
	// (raft v1.7.2 does not tell a configuration's index): it grows with
	// every change, across leaders too — a new leader has applied every
	// entry its predecessors committed.
	var list message.Members
	var bundle []identity.MMCRef
	for _, m := range recs {
		if !inConfig[raft.ServerAddress(m.Addr)] {
			continue
		}
		list.MMCs = append(list.MMCs, message.Member{Addr: m.Addr, Key: slices.Clone(m.Key[:])})
		bundle = append(bundle, identity.MMCRef{Addr: m.Addr, Key: handshake.EncodeKey(m.Key)})
	}
	if len(list.MMCs) == 0 || len(list.MMCs) > message.MaxMembers {
		return
	}
	old := s.agentMembers.Load()
	if old != nil && slices.EqualFunc(old.MMCs, list.MMCs, func(a, b message.Member) bool {
		return a.Addr == b.Addr && string(a.Key) == string(b.Key)
	}) {
		return
	}
	list.Version = max(s.repl.node.AppliedIndex(), 1)
	if old != nil {
		list.Version = max(list.Version, old.Version+1)
	}
	s.agentMembers.Store(&list)
	s.writeBundle(bundle)
	if s.leading.Load() && list.Version > 0 && len(list.MMCs) > 1 {
		for _, ss := range s.reg.live() {
			go func() {
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				_ = ss.send(sctx, list)
			}()
		}
	}
}

// writeBundle rewrites DATA/bundle to list every member.
func (s *Server) writeBundle(mmcs []identity.MMCRef) {
	if len(mmcs) == 0 {
		return
	}
	b := identity.Bundle{ClusterID: s.clusterID, MMCs: mmcs}
	if err := identity.WriteSecretFile(filepath.Join(s.cfg.DataDir, BundleFile), []byte(b.Encode()+"\n")); err != nil {
		s.log.Warn("mmc: writing the bundle", "err", err)
	}
}

// promoteEvery is how often the leader looks for non-voters to promote.
const promoteEvery = time.Second

// promoteSlack is how far behind the leader's applied index a non-voter
// may be and still be made a voter (entries committed while it was
// asked).
const promoteSlack = 256

// runPromotions makes caught-up non-voters voters, until ctx ends.
func (s *Server) runPromotions(ctx context.Context) {
	t := time.NewTicker(promoteEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.promoteCaughtUp(ctx)
	}
}

// promoteCaughtUp makes a voter of every non-voter on record that has
// applied the log to within promoteSlack of this leader. A join's own
// session does this at once (serveJoin); this finishes a join whose
// session or leader was lost after the joiner was added as a non-voter.
func (s *Server) promoteCaughtUp(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	servers, _, err := s.repl.node.Configuration(cctx)
	if err != nil {
		return
	}
	s.forgetStaleMembers(cctx, servers)
	for _, sv := range servers {
		if sv.Suffrage != raft.Nonvoter {
			continue
		}
		st := s.memberStatus(cctx, sv.Address, api.MMCMember{ID: string(sv.ID), Address: string(sv.Address)})
		if st.State == "unreachable" || st.AppliedIndex+promoteSlack < s.repl.node.AppliedIndex() {
			continue
		}
		if err := s.repl.node.AddVoter(cctx, sv.ID, sv.Address); err != nil {
			s.log.Warn("mmc: promoting a caught-up member", "member", sv.ID, "err", err)
			continue
		}
		s.log.Info("mmc: a caught-up member is a voter now", "member", sv.ID, "applied", st.AppliedIndex)
		s.dirty.markMembers()
	}
}

// staleMemberAge is how long a member may be on record without being in
// the configuration: a join records the member just before adding it.
const staleMemberAge = time.Minute

// forgetStaleMembers removes the records of members the configuration
// no longer has (a removal whose record was not removed: the leader was
// lost in between).
func (s *Server) forgetStaleMembers(ctx context.Context, servers []raft.Server) {
	recs, err := s.st.Members()
	if err != nil {
		return
	}
	now := s.cfg.Now()
	for _, m := range recs {
		if m.ID == s.repl.id || slices.ContainsFunc(servers, func(sv raft.Server) bool { return string(sv.ID) == m.ID }) {
			continue
		}
		if now.Sub(m.Added) < staleMemberAge {
			continue
		}
		if err := s.st.RemoveMember(m.ID); err != nil {
			s.log.Warn("mmc: forgetting a removed member's record", "member", m.ID, "err", err)
			continue
		}
		s.log.Info("mmc: forgot the record of a member no longer in the configuration", "member", m.ID)
		s.dirty.markMembers()
	}
}
