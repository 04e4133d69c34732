package mmc

import (
	"context"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// Standby sessions (message.Hello.Standby). An agent served by the leader
// keeps a second, idle session at another member, which tells it which
// member leads — at once, and whenever the leadership moves. When the
// leader dies the agent's own session would only notice at its idle
// timeout (30 s); the other members notice within raft's election
// timeout and elect a new leader, and the standby session carries the
// news to the agent, which moves at once. The same holds for a leader cut
// off by a partition: the majority's new leader reaches the agent through
// the standby session at a member on the majority's side. A standby
// session orders nothing and writes nothing; it is one per agent (a new
// one replaces the old) and costs the member a connection and a
// goroutine.

// leaderWatch broadcasts changes of the leader this member knows.
type leaderWatch struct {
	mu      sync.Mutex
	ch      chan struct{}
	current string
}

func newLeaderWatch() *leaderWatch { return &leaderWatch{ch: make(chan struct{})} }

// changed is closed at the next change.
func (w *leaderWatch) changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

func (w *leaderWatch) set(leader string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if leader == w.current {
		return
	}
	w.current = leader
	close(w.ch)
	w.ch = make(chan struct{})
}

// runLeaderWatch follows raft's view of the leader (and this member's
// taking up the leadership) until ctx ends.
func (s *Server) runLeaderWatch(ctx context.Context) {
	tick := time.NewTicker(leadershipPoll)
	defer tick.Stop()
	for {
		m, _ := s.currentLeader()
		s.lwatch.set(m.Addr)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// currentLeader is the member agents should be served by, if one is
// known: this member once it has taken up the leadership (not merely
// won an election), else the leader raft names.
func (s *Server) currentLeader() (message.Member, bool) {
	if s.leading.Load() {
		pub := s.ep.PublicKey()
		return message.Member{Addr: string(s.repl.addr), Key: pub[:]}, true
	}
	m, _ := s.cfg.Cluster.Redirect()
	return m, m.Addr != ""
}

// standbys holds the live standby session of each agent.
type standbys struct {
	mu   sync.Mutex
	byID map[string]*sudp.Conn
}

func (b *standbys) add(id string, c *sudp.Conn) {
	b.mu.Lock()
	old := b.byID[id]
	if b.byID == nil {
		b.byID = map[string]*sudp.Conn{}
	}
	b.byID[id] = c
	b.mu.Unlock()
	if old != nil {
		_ = old.CloseWithError(CodeReplaced, "replaced by a newer standby session")
	}
}

func (b *standbys) remove(id string, c *sudp.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.byID[id] == c {
		delete(b.byID, id)
	}
}

// serveStandby tells the agent id which member leads, now and at every
// change, until the session ends.
func (s *Server) serveStandby(ctx context.Context, c *sudp.Conn, id string) {
	s.standby.add(id, c)
	defer s.standby.remove(id, c)
	s.metrics.standby.Inc()
	defer s.metrics.standby.Dec()
	sent := ""
	for {
		changed := s.lwatch.changed()
		if m, ok := s.currentLeader(); ok && m.Addr != sent {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := message.Send(sctx, c, message.Leader{Leader: m})
			cancel()
			if err != nil {
				return
			}
			sent = m.Addr
		}
		select {
		case <-changed:
		case <-c.Done():
			return
		case <-ctx.Done():
			return
		}
	}
}
