package mmc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
)

// The MMC's store is replicated (issue 18, docs/ARCHITECTURE.md
// "Replication (raft)"): every write goes through the raft log of a
// replica.Node and reaches the store through the node's FSM. For now the
// cluster has one member, this MMC, bootstrapped on the first start of
// its data directory (an existing store from before raft is seeded as
// the first snapshot); joining members, forwarding writes to the leader
// and the SUDP transport between members are the next slices.

// leaderWait bounds how long New waits for this member to lead.
const leaderWait = 10 * time.Second

// startTimeout is raft's HeartbeatTimeout and ElectionTimeout until this
// member leads. A one-member cluster elects itself once a follower
// timeout (random in [t, 2t)) passes without a leader: 1–2 s with raft's
// default 1 s, measured 1.4–2.0 s from process start to serving, which
// every MMC start and every test that starts one would pay. Starting at
// raft's default LeaderLeaseTimeout (500 ms, the least HeartbeatTimeout
// may be without shortening the lease) halves it; the lease is not
// reloadable, so leaving it at its default keeps a later multi-member
// cluster's leader as tolerant of a slow follower as raft's defaults.
// Once this member leads, raft's 1 s defaults are put back.
const startTimeout = 500 * time.Millisecond

// writeTimeout bounds one write through the log (commit and apply).
const writeTimeout = 10 * time.Second

// replicated is the MMC's raft member and what it owns.
type replicated struct {
	node  *replica.Node
	trans *raft.InmemTransport
}

// openReplicated starts the raft member on dataDir over st, waits until
// it leads and has applied its whole log to st (on a restart raft
// restores its latest snapshot into the store and replays the entries
// after it: the store is only current after that), then routes every
// store write through the log.
//
// The transport is raft's in-memory one: a one-member cluster sends no
// RPC, and raft needs a transport even then. The member's address is its
// id; the join slice replaces the transport with the SUDP stream layer
// (replica.NewTransport) and records the member's SUDP address (AddVoter
// on an existing id updates its address).
func openReplicated(ctx context.Context, dataDir, id string, st *store.Store, cfg Config) (*replicated, error) {
	addr, trans := raft.NewInmemTransport(raft.ServerAddress(id))
	node, err := replica.Open(replica.Config{
		ID:        raft.ServerID(id),
		DataDir:   dataDir,
		Store:     st,
		Transport: trans,
		Logger:    cfg.Logger,
		Tune: func(c *raft.Config) {
			start := startTimeout
			if cfg.raftStart > 0 {
				start = cfg.raftStart
			}
			c.HeartbeatTimeout, c.ElectionTimeout = start, start
			c.LeaderLeaseTimeout = min(c.LeaderLeaseTimeout, start)
		},
	})
	if err != nil {
		trans.Close()
		return nil, err
	}
	r := &replicated{node: node, trans: trans}
	if err := r.awaitLeader(ctx); err != nil {
		r.close()
		return nil, fmt.Errorf("mmc: replicated store at %s: %w", addr, err)
	}
	st.SetApplier(func(c store.Command) (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		defer cancel()
		return node.Apply(ctx, c)
	})
	return r, nil
}

// awaitLeader waits until this member leads and every entry of its log
// is applied to the store (a barrier).
func (r *replicated) awaitLeader(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for r.node.State() != raft.Leader {
		select {
		case err := <-r.node.Fatal():
			return err
		case <-ctx.Done():
			return fmt.Errorf("this member did not become the leader of its one-member cluster within %v (state %s): %w",
				leaderWait, r.node.State(), ctx.Err())
		case <-tick.C:
		}
	}
	def := raft.DefaultConfig()
	if err := r.node.SetTimeouts(def.HeartbeatTimeout, def.ElectionTimeout); err != nil {
		return err
	}
	return r.node.Barrier(ctx)
}

// close shuts the member down (after the store's last write) and its
// transport.
func (r *replicated) close() error {
	err := r.node.Close()
	return errors.Join(err, r.trans.Close())
}
