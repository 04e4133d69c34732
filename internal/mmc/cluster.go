package mmc

import (
	"context"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// Cluster is what the agent-facing side of the MMC needs from the
// replication layer (issue 18): the term to fence orders with, whether
// this member serves agents, and the member list agents should know.
type Cluster interface {
	// Term is the current leader term, stamped on every order to an
	// agent (message.Action.Term). It must never decrease across the
	// cluster's life: agents refuse orders below the highest term they
	// have obeyed (package fence).
	Term() uint64
	// Redirect names the member agents should log in at instead of this
	// one (ok false: this member serves them — it is the leader).
	Redirect() (leader message.Member, ok bool)
	// Members is the member list sent to agents after Welcome; Version 0
	// sends none.
	Members() message.Members
}

// SingleTerm is the term of a single MMC without replication. It cannot
// be deposed, so one constant term is safe across its restarts; raft
// terms start at 1 and only grow, so agents of a single MMC keep obeying
// once it grows into a cluster.
//
// TODO(issue 18, raft slice): a cluster restored from a snapshot into a
// fresh raft configuration restarts raft's terms; the term sent to agents
// must then stay above every term sent before (e.g. a replicated epoch in
// its high bits).
const SingleTerm = 1

// Single is the Cluster of a single MMC: term SingleTerm, serves every
// agent, sends no member list (agents keep their bundle's).
type Single struct{}

// Term implements Cluster.
func (Single) Term() uint64 { return SingleTerm }

// Redirect implements Cluster.
func (Single) Redirect() (message.Member, bool) { return message.Member{}, false }

// Members implements Cluster.
func (Single) Members() message.Members { return message.Members{} }

// order stamps an order to an agent with the leader's term: every
// MMC→agent Action goes through here.
func (s *Server) order(a message.Action) message.Action {
	a.Term = s.cfg.Cluster.Term()
	return a
}

// redirect answers a login at a member that does not serve agents with
// the member that does, then closes with CodeNotLeader. It reports
// whether it did.
func (s *Server) redirect(ctx context.Context, c *sudp.Conn) bool {
	leader, ok := s.cfg.Cluster.Redirect()
	if !ok {
		return false
	}
	s.metrics.refused.WithLabelValues("not-leader").Inc()
	_ = message.Send(ctx, c, message.Redirect{Leader: leader})
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	_ = c.CloseWithError(message.CodeNotLeader, "not the leader")
	return true
}

// sendMembers tells a logged-in agent the cluster's members.
func (s *Server) sendMembers(ctx context.Context, c *sudp.Conn) {
	if m := s.cfg.Cluster.Members(); m.Version > 0 {
		_ = message.Send(ctx, c, m)
	}
}
