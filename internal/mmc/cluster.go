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
	// one (ok false: this member serves them — it is the leader; an
	// empty Addr: no leader is known).
	Redirect() (leader message.Member, ok bool)
	// Members is the member list sent to agents after Welcome; Version 0
	// sends none.
	Members() message.Members
}

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
	s.awaitEstablished(ctx)
	leader, ok := s.cfg.Cluster.Redirect()
	if !ok {
		return false
	}
	s.metrics.refused.WithLabelValues("not-leader").Inc()
	if leader.Addr == "" {
		// No leader known (an election): the agent retries after its
		// backoff.
		_ = c.CloseWithError(message.CodeNotLeader, "no leader")
		return true
	}
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
