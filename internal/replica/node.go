// Package replica replicates the MMC's store (internal/store) through
// hashicorp/raft: the raft log carries encoded store commands, the FSM
// applies them to every member's store, snapshots are copies of the whole
// bbolt database, and the transport runs over SUDP streams between
// members authenticated by their static keys (transport.go).
//
// The MMC runs on it as a one-member cluster (internal/mmc,
// replicate.go); joining members are a later slice (see
// docs/ARCHITECTURE.md, "Replication (raft)").
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/store"
)

// SnapshotsRetained is how many snapshots a member keeps on disk.
const SnapshotsRetained = 2

// DefaultApplyTimeout bounds Apply when its context has no deadline.
const DefaultApplyTimeout = 10 * time.Second

// ErrNotLeader is returned (as a *NotLeaderError) for a write or a
// leader-only operation on a member that is not the leader.
var ErrNotLeader = errors.New("replica: not the leader")

// ErrOutcomeUnknown is a write whose leader lost its leadership after
// accepting it: it may or may not have been committed. Store commands
// state their conditions (versions, ids), so reading again and deciding
// again is safe.
var ErrOutcomeUnknown = errors.New("replica: leadership lost; the write may or may not have been applied")

// NotLeaderError names the leader as this member knows it (empty when
// there is none, e.g. during an election).
type NotLeaderError struct {
	LeaderID   raft.ServerID
	LeaderAddr raft.ServerAddress
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "replica: not the leader (no leader known)"
	}
	return fmt.Sprintf("replica: not the leader (the leader is %s at %s)", e.LeaderID, e.LeaderAddr)
}

// Is makes errors.Is(err, ErrNotLeader) hold.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// Config configures a Node.
type Config struct {
	// ID is this member's stable raft id.
	ID raft.ServerID
	// DataDir is the MMC's data directory: raft keeps its log, stable
	// state and snapshots in DataDir/raft.
	DataDir string
	// Store is the replicated state; the node applies the log to it.
	Store *store.Store
	// Transport carries raft's RPCs (NewTransport over SUDP, or raft's
	// in-memory transport in tests). The caller owns it and closes it
	// after the node.
	Transport raft.Transport
	// Join starts a fresh data directory as a member waiting to be added
	// by the cluster's leader; without it a fresh directory bootstraps a
	// one-member cluster. A directory with raft state ignores it.
	Join bool
	// Logger receives raft's logs and the node's.
	Logger *slog.Logger
	// Tune, if set, adjusts raft's configuration after the defaults
	// (tests shorten the timeouts; production keeps raft's 1 s).
	Tune func(*raft.Config)
	// Observer, if set, is told of every entry applied to the store and
	// every snapshot restored into it (FSMObserver).
	Observer FSMObserver
}

// Node is one member of the replicated store.
type Node struct {
	raft  *raft.Raft
	fsm   *FSM
	logs  *raftboltdb.BoltStore
	snaps *snapshotStore
	id    raft.ServerID
	log   *slog.Logger
	met   *nodeMetrics // metrics.go; its observer goroutine runs from Open to Close
}

// Open starts a member on cfg.DataDir.
func Open(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ID == "" || cfg.Store == nil || cfg.Transport == nil {
		return nil, errors.New("replica: Config needs ID, Store and Transport")
	}
	hlog := newHCLog(cfg.Logger.With("component", "raft"))
	dir := filepath.Join(cfg.DataDir, "raft")
	if err := privateDir(dir); err != nil {
		return nil, err
	}
	dbPath := filepath.Join(dir, "raft.db")
	if err := privateFile(dbPath); err != nil {
		return nil, err
	}
	logs, err := raftboltdb.New(raftboltdb.Options{
		Path:        dbPath,
		BoltOptions: &bolt.Options{Timeout: 2 * time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("replica: open %s: %w (is another MMC using this data directory?)", dbPath, err)
	}
	snaps, err := newSnapshotStore(dir, SnapshotsRetained, hlog)
	if err != nil {
		logs.Close()
		return nil, err
	}

	conf := raft.DefaultConfig()
	conf.LocalID = cfg.ID
	conf.Logger = hlog
	if cfg.Tune != nil {
		cfg.Tune(conf)
	}
	if err := raft.ValidateConfig(conf); err != nil {
		logs.Close()
		return nil, fmt.Errorf("replica: %w", err)
	}

	existing, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("replica: %w", err)
	}
	if !existing && !cfg.Join {
		// A new log starts at index 1: a store that recorded a
		// previous log's index (its raft state was lost, or only the
		// database was restored from a backup) would skip its entries
		// as already applied. Its content is seeded below instead.
		if err := cfg.Store.ResetAppliedIndex(); err != nil {
			logs.Close()
			return nil, fmt.Errorf("replica: %w", err)
		}
	}
	seed, err := needsSeed(cfg, snaps)
	if err != nil {
		logs.Close()
		return nil, err
	}
	if !existing && !cfg.Join {
		boot := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: cfg.ID, Address: cfg.Transport.LocalAddr(),
		}}}
		if err := raft.BootstrapCluster(conf, logs, logs, snaps, cfg.Transport, boot); err != nil {
			logs.Close()
			return nil, fmt.Errorf("replica: bootstrap: %w", err)
		}
		cfg.Logger.Info("replica: bootstrapped a one-member cluster", "id", cfg.ID, "addr", cfg.Transport.LocalAddr())
	}

	fsm := NewFSM(cfg.Store, cfg.Logger)
	fsm.observer = cfg.Observer
	r, err := raft.NewRaft(conf, fsm, logs, logs, snaps, cfg.Transport)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("replica: %w", err)
	}
	n := &Node{raft: r, fsm: fsm, logs: logs, snaps: snaps, id: cfg.ID, log: cfg.Logger}
	n.startMetrics()
	if seed {
		ctx, cancel := context.WithTimeout(context.Background(), seedTimeout)
		defer cancel()
		if err := n.seed(ctx); err != nil {
			n.Close()
			return nil, fmt.Errorf("replica: seeding the log with the existing store: %w", err)
		}
		cfg.Logger.Info("replica: the existing store is the cluster's first snapshot", "id", cfg.ID)
	}
	return n, nil
}

// needsSeed reports whether the store has content no log entry wrote:
// not empty, no entry applied to it, and no snapshot taken yet (which
// also catches a crash between the bootstrap and the seed snapshot). A
// joining member's store starts empty.
func needsSeed(cfg Config, snaps raft.SnapshotStore) (bool, error) {
	if cfg.Join {
		return false, nil
	}
	empty, err := cfg.Store.IsEmpty()
	if err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	applied, err := cfg.Store.AppliedIndex()
	if err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	list, err := snaps.List()
	if err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	return !empty && applied == 0 && len(list) == 0, nil
}

// seedTimeout bounds seed: a one-member election and a snapshot.
const seedTimeout = 60 * time.Second

// seed makes a store that predates replication (an MMC's data directory
// from before raft, bootstrapped now) reach the members that join later.
// Its content is in no log entry, so a joiner replaying the log from
// index 1 would never get it. Once this member leads its one-member
// cluster, it snapshots with no trailing log kept: the log then starts
// after the snapshot and every joiner installs it first. Open waits for
// it, so no member can be added before.
func (n *Node) seed(ctx context.Context) error {
	for n.raft.State() != raft.Leader {
		select {
		case <-ctx.Done():
			return fmt.Errorf("no leadership: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	// The leader's first entry (a no-op) applied: there is something
	// to snapshot.
	if err := n.Barrier(ctx); err != nil {
		return err
	}
	old := n.raft.ReloadableConfig()
	none := old
	none.TrailingLogs = 0
	if err := n.raft.ReloadConfig(none); err != nil {
		return err
	}
	err := n.Snapshot(ctx)
	return errors.Join(err, n.raft.ReloadConfig(old))
}

// Close stops the member (it leaves the cluster's configuration as it
// is: removing a member is RemoveServer on the leader) and closes its log.
func (n *Node) Close() error {
	err := n.raft.Shutdown().Error()
	n.stopMetrics()
	return errors.Join(err, n.logs.Close())
}

// ID is this member's raft id.
func (n *Node) ID() raft.ServerID { return n.id }

// Fatal delivers, once, why the state machine halted (see FSM): the
// owner must stop the member.
func (n *Node) Fatal() <-chan error { return n.fsm.Fatal() }

// State is this member's raft role.
func (n *Node) State() raft.RaftState { return n.raft.State() }

// Leader returns the leader as this member knows it (empty when none).
func (n *Node) Leader() (raft.ServerAddress, raft.ServerID) { return n.raft.LeaderWithID() }

// LeaderCh reports this member gaining (true) and losing (false) the
// leadership (raft's LeaderCh: it drops a change if nobody reads).
func (n *Node) LeaderCh() <-chan bool { return n.raft.LeaderCh() }

// Stats is raft's diagnostic map (state, term, last_contact, …).
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// LastContact is when this member last heard from its leader.
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// AppliedIndex is the last log index applied to the store.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

func (n *Node) notLeader() error {
	addr, id := n.raft.LeaderWithID()
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr}
}

// timeoutOf is the time left before ctx's deadline, or def.
func timeoutOf(ctx context.Context, def time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return def
}

// wait waits for f or ctx. raft resolves every future, at the latest
// when it shuts down, so the waiting goroutine always ends.
func wait(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mapErr turns raft's leadership errors into this package's.
func (n *Node) mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return n.notLeader()
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	default:
		return fmt.Errorf("replica: %w", err)
	}
}

// Apply replicates c through the log and returns its result as the
// store computed it (Store.Apply's value and error) once a majority has
// it and this member applied it. On a member that is not the leader it
// returns a *NotLeaderError. ctx bounds the wait; if it expires the
// write may still be applied later.
func (n *Node) Apply(ctx context.Context, c store.Command) (any, error) {
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	b, err := store.EncodeCommand(c)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	f := n.raft.Apply(b, timeoutOf(ctx, DefaultApplyTimeout))
	err = wait(ctx, f)
	n.met.resolved("apply", n.met.apply, start, err)
	if err != nil {
		return nil, n.mapErr(err)
	}
	res, ok := f.Response().(*Result)
	if !ok {
		return nil, fmt.Errorf("replica: unexpected FSM response %T", f.Response())
	}
	return res.Value, res.Err
}

// Barrier returns once every entry committed before it is applied to
// this member's store (leader only): a read after it sees every write
// acknowledged before the call.
func (n *Node) Barrier(ctx context.Context) error {
	start := time.Now()
	err := wait(ctx, n.raft.Barrier(timeoutOf(ctx, DefaultApplyTimeout)))
	n.met.resolved("barrier", n.met.barrier, start, err)
	return n.mapErr(err)
}

// VerifyLeader confirms with a majority that this member still leads.
func (n *Node) VerifyLeader(ctx context.Context) error {
	return n.mapErr(wait(ctx, n.raft.VerifyLeader()))
}

// AddVoter adds (or updates) a voting member (leader only).
func (n *Node) AddVoter(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) error {
	return n.mapErr(wait(ctx, n.raft.AddVoter(id, addr, 0, timeoutOf(ctx, DefaultApplyTimeout))))
}

// AddNonvoter adds a member that replicates without voting (leader
// only): a new member can catch up this way before it is promoted.
func (n *Node) AddNonvoter(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) error {
	return n.mapErr(wait(ctx, n.raft.AddNonvoter(id, addr, 0, timeoutOf(ctx, DefaultApplyTimeout))))
}

// DemoteVoter makes a voting member a non-voter (leader only).
func (n *Node) DemoteVoter(ctx context.Context, id raft.ServerID) error {
	return n.mapErr(wait(ctx, n.raft.DemoteVoter(id, 0, timeoutOf(ctx, DefaultApplyTimeout))))
}

// RemoveServer removes a member (leader only).
func (n *Node) RemoveServer(ctx context.Context, id raft.ServerID) error {
	return n.mapErr(wait(ctx, n.raft.RemoveServer(id, 0, timeoutOf(ctx, DefaultApplyTimeout))))
}

// LeadershipTransfer hands the leadership to another voter: to id at
// addr, or to the most up-to-date one when id is empty (leader only).
func (n *Node) LeadershipTransfer(ctx context.Context, id raft.ServerID, addr raft.ServerAddress) error {
	var f raft.Future
	if id == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		f = n.raft.LeadershipTransferToServer(id, addr)
	}
	return n.mapErr(wait(ctx, f))
}

// Members is the cluster's current configuration.
func (n *Node) Members(ctx context.Context) ([]raft.Server, error) {
	servers, _, err := n.Configuration(ctx)
	return servers, err
}

// Configuration is the cluster's current configuration. (The index it
// returns is raft's ConfigurationFuture.Index, which raft v1.7.2 leaves
// 0 for GetConfiguration: do not rely on it.)
func (n *Node) Configuration(ctx context.Context) ([]raft.Server, uint64, error) {
	f := n.raft.GetConfiguration()
	if err := wait(ctx, f); err != nil {
		return nil, 0, n.mapErr(err)
	}
	return f.Configuration().Servers, f.Index(), nil
}

// Term is this member's current raft term.
func (n *Node) Term() uint64 {
	t, _ := strconv.ParseUint(n.raft.Stats()["term"], 10, 64)
	return t
}

// SetTimeouts changes raft's HeartbeatTimeout and ElectionTimeout while
// the member runs (raft's ReloadConfig; LeaderLeaseTimeout must stay at
// or below heartbeat). A one-member MMC starts with shorter ones to
// elect itself sooner and puts raft's defaults back once it leads.
func (n *Node) SetTimeouts(heartbeat, election time.Duration) error {
	rc := n.raft.ReloadableConfig()
	rc.HeartbeatTimeout, rc.ElectionTimeout = heartbeat, election
	if err := n.raft.ReloadConfig(rc); err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	return nil
}

// Snapshot takes a snapshot now (raft otherwise takes one every
// SnapshotInterval once SnapshotThreshold entries accumulated) and
// truncates the log behind it.
func (n *Node) Snapshot(ctx context.Context) error {
	return n.mapErr(wait(ctx, n.raft.Snapshot()))
}
