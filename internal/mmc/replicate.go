package mmc

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// The MMC's store is replicated (issue 18, docs/ARCHITECTURE.md
// "Replication (raft)"): every write goes through the raft log of a
// replica.Node and reaches the store through the node's FSM. Raft's RPCs
// run over SUDP streams on the MMC's own endpoint (replica.StreamLayer):
// a connection whose peer key is a member's carries raft and forwarded
// admin requests; every other connection is an agent's. A fresh data
// directory without --join bootstraps a one-member cluster; members join
// with a one-use token (join.go).

// leaderWait bounds how long New waits for a one-member cluster's member
// to lead.
const leaderWait = 10 * time.Second

// startTimeout is raft's HeartbeatTimeout and ElectionTimeout until this
// member leads a one-member cluster. A one-member cluster elects itself
// once a follower timeout (random in [t, 2t)) passes without a leader:
// 1–2 s with raft's default 1 s, measured 1.4–2.0 s from process start
// to serving, which every MMC start and every test that starts one would
// pay. Starting at raft's default LeaderLeaseTimeout (500 ms, the least
// HeartbeatTimeout may be without shortening the lease) halves it; the
// lease is not reloadable, so leaving it at its default keeps a
// multi-member cluster's leader as tolerant of a slow follower as raft's
// defaults. Once this member leads — or at once, when the configuration
// has other members — the configured timeouts (Config.RaftTimeout,
// DefaultRaftTimeout) are put in force.
const startTimeout = 500 * time.Millisecond

// writeTimeout bounds one write through the log (commit and apply).
const writeTimeout = 10 * time.Second

// ClusterSecretFile holds the secret every member of the cluster holds:
// raft connections between members are keyed with it (replica.ClusterPSK).
const ClusterSecretFile = "cluster.secret"

// replicated is the MMC's raft member and what it owns.
type replicated struct {
	node    *replica.Node
	layer   *replica.StreamLayer
	trans   *raft.NetworkTransport
	members *replica.Members
	psk     [32]byte
	id      string
	addr    raft.ServerAddress
}

// replicaOptions are what openReplicated needs besides the store.
type replicaOptions struct {
	dataDir  string
	id       string
	addr     string // raft address: this MMC's advertised SUDP address
	ep       *sudp.Endpoint
	secret   []byte
	join     bool
	observer replica.FSMObserver
	cfg      Config
}

// openReplicated starts the raft member on the data directory over st.
// A member that is the only voter of its configuration (a single MMC)
// waits until it leads and has applied its whole log to st (on a restart
// raft restores its latest snapshot into the store and replays the
// entries after it: the store is only current after that); a member of
// a larger cluster returns at once — the leadership loop (leader.go)
// takes it from there. Every store write goes through the log from then
// on: on a member that is not the leader a write fails with
// replica.ErrNotLeader.
func openReplicated(ctx context.Context, st *store.Store, o replicaOptions) (*replicated, error) {
	psk, err := replica.ClusterPSK(o.secret)
	if err != nil {
		return nil, err
	}
	members := replica.NewMembers()
	recorded, err := st.Members()
	if err != nil {
		return nil, err
	}
	for _, m := range recorded {
		members.Set(raft.ServerAddress(m.Addr), m.Key)
	}
	addr := raft.ServerAddress(o.addr)
	layer := replica.NewStreamLayer(replica.StreamLayerConfig{
		Endpoint: o.ep, Advertise: addr, Members: members, PSK: psk, Logger: o.cfg.Logger,
	})
	trans := replica.NewTransport(layer, o.cfg.Logger)
	node, err := replica.Open(replica.Config{
		ID:        raft.ServerID(o.id),
		DataDir:   o.dataDir,
		Store:     st,
		Transport: trans,
		Join:      o.join,
		Logger:    o.cfg.Logger,
		Observer:  o.observer,
		Tune: func(c *raft.Config) {
			// The lease cannot exceed the heartbeat timeout and is not
			// reloadable: start no shorter than half the configured
			// timeout, so a long --raft-timeout keeps its long lease
			// (at 2 s, a 1 s lease, not 500 ms) on the member that
			// bootstraps the cluster too.
			start := max(startTimeout, o.cfg.RaftTimeout/2)
			if o.cfg.raftStart > 0 {
				start = o.cfg.raftStart
			}
			o.cfg.tuneRaft(c)
			if o.join {
				return // joining a cluster: its timeouts from the start
			}
			c.HeartbeatTimeout, c.ElectionTimeout = start, start
			c.LeaderLeaseTimeout = min(c.LeaderLeaseTimeout, start)
		},
	})
	if err != nil {
		trans.Close()
		return nil, err
	}
	r := &replicated{node: node, layer: layer, trans: trans, members: members, psk: psk, id: o.id, addr: addr}
	if o.join {
		return r, nil
	}
	servers, _, err := node.Configuration(ctx)
	if err != nil {
		r.close()
		return nil, err
	}
	if len(servers) > 1 {
		if err := r.defaultTimeouts(o.cfg); err != nil {
			r.close()
			return nil, err
		}
		return r, nil
	}
	if err := r.awaitLeader(ctx, o.cfg); err != nil {
		r.close()
		return nil, fmt.Errorf("mmc: replicated store at %s: %w", addr, err)
	}
	return r, nil
}

// defaultTimeouts puts raft's timeouts back (or the test override).
func (r *replicated) defaultTimeouts(cfg Config) error {
	def := raft.DefaultConfig()
	cfg.tuneRaft(def)
	return r.node.SetTimeouts(def.HeartbeatTimeout, def.ElectionTimeout)
}

// tuneRaft applies the configured timeouts to raft's defaults.
func (cfg Config) tuneRaft(c *raft.Config) {
	if cfg.RaftTimeout > 0 {
		c.HeartbeatTimeout, c.ElectionTimeout = cfg.RaftTimeout, cfg.RaftTimeout
		c.LeaderLeaseTimeout = cfg.RaftTimeout / 2
	}
	if cfg.raftTune != nil {
		cfg.raftTune(c)
	}
}

// awaitLeader waits until this member leads and every entry of its log
// is applied to the store (a barrier).
func (r *replicated) awaitLeader(ctx context.Context, cfg Config) error {
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
	if err := r.defaultTimeouts(cfg); err != nil {
		return err
	}
	return r.node.Barrier(ctx)
}

// apply is the store's applier: every write through the log.
func (r *replicated) apply(c store.Command) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	return r.node.Apply(ctx, c)
}

// close shuts the member down (after the store's last write), then its
// transport and stream layer.
func (r *replicated) close() error {
	err := r.node.Close()
	return errors.Join(err, r.trans.Close()) // the transport closes the layer
}

// loadClusterSecret returns the cluster secret in dataDir, creating it
// on the first start of a member that bootstraps a cluster (a joiner
// writes the one the leader sent before it gets here).
func loadClusterSecret(dataDir string, cfg Config) ([]byte, error) {
	path := filepath.Join(dataDir, ClusterSecretFile)
	hexSecret, err := loadOrCreate(path, 32, cfg.Rand)
	if err != nil {
		return nil, err
	}
	return decodeHex32(hexSecret)
}
