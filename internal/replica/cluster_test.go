package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/store"
)

// fastRaft shortens raft's timeouts for tests (production keeps raft's
// 1 s defaults) and lets a forced snapshot truncate the log, so that a
// new member must install it.
func fastRaft(c *raft.Config) {
	// Short, but not so short that a leader loses its lease when the
	// race detector and a loaded CI machine delay one heartbeat (at
	// 200/100 ms, growing to three members failed that way under -race).
	c.HeartbeatTimeout = 500 * time.Millisecond
	c.ElectionTimeout = 500 * time.Millisecond
	c.LeaderLeaseTimeout = 250 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotThreshold = 1 << 20
	c.SnapshotInterval = time.Hour
	c.TrailingLogs = 1
}

// member is one MMC's replicated state in a test: its data directory,
// store and node.
type member struct {
	t     *testing.T
	id    raft.ServerID
	dir   string
	st    *store.Store
	node  *Node
	trans raft.Transport
}

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "mmc.db"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// start opens the member's store and node on trans.
func (m *member) start(trans raft.Transport, join bool) {
	m.t.Helper()
	m.st = openStore(m.t, m.dir)
	m.trans = trans
	n, err := Open(Config{ID: m.id, DataDir: m.dir, Store: m.st, Transport: trans, Join: join, Tune: fastRaft})
	if err != nil {
		m.t.Fatal(err)
	}
	m.node = n
}

// stop shuts the member down (as a crash would, without leaving the
// configuration); its data directory stays.
func (m *member) stop() {
	if m.node == nil {
		return
	}
	if err := m.node.Close(); err != nil {
		m.t.Error(err)
	}
	m.st.Close()
	m.node = nil
}

func (m *member) dump() string {
	var b strings.Builder
	if err := m.st.Dump(&b); err != nil {
		m.t.Fatal(err)
	}
	return b.String()
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leader waits until exactly one running member leads and returns it.
func leader(t *testing.T, ms []*member) *member {
	t.Helper()
	var l *member
	waitFor(t, "a leader", 15*time.Second, func() bool {
		l = nil
		for _, m := range ms {
			if m.node != nil && m.node.State() == raft.Leader {
				if l != nil {
					return false
				}
				l = m
			}
		}
		return l != nil
	})
	return l
}

// converge waits until every running member's store has the same dump
// as want's, and returns it.
func converge(t *testing.T, want *member, ms []*member) string {
	t.Helper()
	var diff string
	deadline := time.Now().Add(15 * time.Second)
	for {
		w := want.dump()
		diff = ""
		for _, m := range ms {
			if m.node != nil && m.dump() != w {
				diff = fmt.Sprintf("%s differs from %s:\n%s\nvs\n%s", m.id, want.id, m.dump(), w)
			}
		}
		if diff == "" {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatal(diff)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func policy(v int) *store.PolicyPut {
	return &store.PolicyPut{Doc: fmt.Appendf(nil, `{"version":%d}`, v)}
}

func audit(action string) *store.AuditAppend {
	return &store.AuditAppend{Entries: []store.AuditEntry{{Time: time.Unix(1700000000, 0).UTC(), Actor: "admin", Action: action, Outcome: "ok"}}}
}

// inmemCluster links in-memory transports: every member reaches every
// other. A restarted member gets a new transport, relinked.
type inmemCluster struct {
	trans map[raft.ServerAddress]*raft.InmemTransport
}

func (c *inmemCluster) transport(addr raft.ServerAddress) *raft.InmemTransport {
	_, tr := raft.NewInmemTransport(addr)
	if old := c.trans[addr]; old != nil {
		old.DisconnectAll()
	}
	c.trans[addr] = tr
	for a, o := range c.trans {
		if a != addr {
			tr.Connect(a, o)
			o.Connect(addr, tr)
		}
	}
	return tr
}

func newMembers(t *testing.T, n int) []*member {
	ms := make([]*member, n)
	for i := range ms {
		ms[i] = &member{t: t, id: raft.ServerID(fmt.Sprintf("mmc%d", i+1)), dir: t.TempDir()}
		t.Cleanup(ms[i].stop)
	}
	return ms
}

// The replication core end to end on raft's in-memory transport: a
// one-member cluster grows to three online, every store holds the same
// content, a killed leader is replaced and the new one takes writes, the
// killed member restarts from its data directory and catches up, and a
// fourth member added after a snapshot truncated the log installs the
// snapshot and holds the same content.
func TestThreeMembersInmem(t *testing.T) {
	ctx := ctxT(t)
	ic := &inmemCluster{trans: map[raft.ServerAddress]*raft.InmemTransport{}}
	ms := newMembers(t, 4)
	addr := func(m *member) raft.ServerAddress { return raft.ServerAddress(m.id) }

	ms[0].start(ic.transport(addr(ms[0])), false) // fresh, no join: bootstraps
	ms[1].start(ic.transport(addr(ms[1])), true)
	ms[2].start(ic.transport(addr(ms[2])), true)
	l := leader(t, ms[:3])
	if l != ms[0] {
		t.Fatalf("the leader is %s, not the bootstrapped member", l.id)
	}
	for _, m := range ms[1:3] {
		if err := l.node.AddVoter(ctx, m.id, addr(m)); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []store.Command{
		&store.MetaEnsure{Key: "cluster", Value: "c1"},
		policy(1),
		audit("one"),
		&store.AgentCreate{Agent: store.Agent{ID: "a1", Name: "h1", State: store.StatePending}},
		audit("two"),
	} {
		if _, err := l.node.Apply(ctx, c); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
	}
	v, err := l.node.Apply(ctx, &store.MetaEnsure{Key: "cluster", Value: "other"})
	if err != nil || v != "c1" {
		t.Fatalf("the leader's result: %v, %v", v, err)
	}
	converge(t, l, ms[:3])

	// A follower refuses a write and names the leader.
	var nl *NotLeaderError
	if _, err := ms[1].node.Apply(ctx, audit("x")); !errors.As(err, &nl) || !errors.Is(err, ErrNotLeader) || nl.LeaderID != l.id {
		t.Fatalf("write on a follower: %v", err)
	}
	if members, err := l.node.Members(ctx); err != nil || len(members) != 3 {
		t.Fatalf("members: %v, %v", members, err)
	}

	// Kill the leader: another takes over and accepts writes.
	old := l
	old.stop()
	ic.trans[addr(old)].DisconnectAll()
	l = leader(t, ms[:3])
	if l == old {
		t.Fatal("the stopped member still leads")
	}
	if _, err := l.node.Apply(ctx, policy(2)); err != nil {
		t.Fatalf("write on the new leader: %v", err)
	}
	if _, err := l.node.Apply(ctx, audit("after failover")); err != nil {
		t.Fatal(err)
	}

	// The old leader restarts from its data directory (it has state: no
	// bootstrap, no join) and catches up.
	old.start(ic.transport(addr(old)), false)
	converge(t, l, ms[:3])
	if got, _ := old.st.Meta("cluster"); got != "c1" {
		t.Fatalf("restarted member: meta %q", got)
	}

	// Snapshot, truncating the log (TrailingLogs 1), then add a fourth
	// member: it can only get the state by installing the snapshot.
	if _, err := l.node.Apply(ctx, audit("before snapshot")); err != nil {
		t.Fatal(err)
	}
	if err := l.node.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.node.Apply(ctx, audit("after snapshot")); err != nil {
		t.Fatal(err)
	}
	ms[3].start(ic.transport(addr(ms[3])), true)
	if err := l.node.AddVoter(ctx, ms[3].id, addr(ms[3])); err != nil {
		t.Fatal(err)
	}
	converge(t, l, ms)
	if s := ms[3].node.Stats()["last_snapshot_index"]; s == "0" || s == "" {
		t.Fatalf("the new member did not install a snapshot (last_snapshot_index %q)", s)
	}
	entries, err := ms[3].st.Audit(0, 100)
	if err != nil || len(entries) != 5 {
		t.Fatalf("new member's audit: %d entries, %v", len(entries), err)
	}
}

// A command refused by its own condition is a result, the same on
// every member, and leaves every store the same.
func TestRefusedCommandIsAResultEverywhere(t *testing.T) {
	// Through the FSMs directly: the same log on three fresh stores.
	log := []store.Command{policy(1), policy(1), policy(3), audit("x"), policy(2)}
	var results [3][]string
	var dumps [3]string
	for i := range 3 {
		st := openStore(t, t.TempDir())
		defer st.Close()
		f := NewFSM(st, nil)
		for j, c := range log {
			b, err := store.EncodeCommand(c)
			if err != nil {
				t.Fatal(err)
			}
			r := f.Apply(&raft.Log{Index: uint64(j + 1), Term: 1, Type: raft.LogCommand, Data: b}).(*Result)
			results[i] = append(results[i], fmt.Sprint(r.Value, r.Err))
			if j == 1 && !errors.Is(r.Err, store.ErrStale) {
				t.Fatalf("a repeated policy version: %v", r.Err)
			}
		}
		if f.Halted() != nil {
			t.Fatalf("a refusal halted the FSM: %v", f.Halted())
		}
		var b strings.Builder
		if err := st.Dump(&b); err != nil {
			t.Fatal(err)
		}
		dumps[i] = b.String()
	}
	for i := 1; i < 3; i++ {
		if fmt.Sprint(results[i]) != fmt.Sprint(results[0]) || dumps[i] != dumps[0] {
			t.Fatalf("member %d diverged: %v vs %v", i, results[i], results[0])
		}
	}

	// Through raft: the proposer gets the refusal, the members agree.
	ctx := ctxT(t)
	ic := &inmemCluster{trans: map[raft.ServerAddress]*raft.InmemTransport{}}
	ms := newMembers(t, 3)
	for i, m := range ms {
		m.start(ic.transport(raft.ServerAddress(m.id)), i > 0)
	}
	l := leader(t, ms)
	for _, m := range ms[1:] {
		if err := l.node.AddVoter(ctx, m.id, raft.ServerAddress(m.id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.node.Apply(ctx, policy(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.node.Apply(ctx, policy(1)); !errors.Is(err, store.ErrStale) {
		t.Fatalf("stale policy through raft: %v", err)
	}
	converge(t, l, ms)
}

// An entry this member cannot decode (a newer member's command kind)
// halts the FSM: nothing more is applied, no snapshot is taken, and the
// cause is reported once.
func TestUndecodableEntryHalts(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	f := NewFSM(st, nil)
	good, err := store.EncodeCommand(&store.MetaEnsure{Key: "k", Value: "v"})
	if err != nil {
		t.Fatal(err)
	}
	if r := f.Apply(&raft.Log{Index: 1, Data: good}).(*Result); r.Err != nil {
		t.Fatal(r.Err)
	}
	future := []byte(`{"kind":"vm.teleport","body":{}}`)
	r := f.Apply(&raft.Log{Index: 2, Term: 3, Data: future}).(*Result)
	if !errors.Is(r.Err, ErrHalted) || !errors.Is(r.Err, store.ErrBadCommand) {
		t.Fatalf("undecodable entry: %v", r.Err)
	}
	select {
	case err := <-f.Fatal():
		if !strings.Contains(err.Error(), "entry 2") {
			t.Fatalf("fatal cause: %v", err)
		}
	default:
		t.Fatal("no fatal report")
	}
	later, _ := store.EncodeCommand(&store.MetaEnsure{Key: "later", Value: "v"})
	if r := f.Apply(&raft.Log{Index: 3, Data: later}).(*Result); !errors.Is(r.Err, ErrHalted) {
		t.Fatalf("entry after the halt: %v", r.Err)
	}
	if v, _ := st.Meta("later"); v != "" {
		t.Fatal("an entry after the halt was applied")
	}
	if _, err := f.Snapshot(); !errors.Is(err, ErrHalted) {
		t.Fatalf("snapshot of a halted FSM: %v", err)
	}
	select {
	case err := <-f.Fatal():
		t.Fatalf("reported twice: %v", err)
	default:
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// The raft directory, its log and its snapshots are private to the
// MMC's user; a directory or log others can read is refused.
func TestFileModes(t *testing.T) {
	ctx := ctxT(t)
	ic := &inmemCluster{trans: map[raft.ServerAddress]*raft.InmemTransport{}}
	m := newMembers(t, 1)[0]
	m.start(ic.transport("m"), false)
	leader(t, []*member{m})
	if _, err := m.node.Apply(ctx, audit("x")); err != nil {
		t.Fatal(err)
	}
	if err := m.node.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(m.dir, "raft")
	if got := mode(t, dir); got != 0o700 {
		t.Fatalf("raft dir %v", got)
	}
	if got := mode(t, filepath.Join(dir, "raft.db")); got != 0o600 {
		t.Fatalf("raft.db %v", got)
	}
	snaps, err := filepath.Glob(filepath.Join(dir, "snapshots", "*"))
	if err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots: %v, %v", snaps, err)
	}
	for _, p := range []string{filepath.Join(dir, "snapshots"), snaps[0]} {
		if got := mode(t, p); got != 0o700 {
			t.Fatalf("%s: %v", p, got)
		}
	}
	for _, f := range []string{"state.bin", "meta.json"} {
		if got := mode(t, filepath.Join(snaps[0], f)); got != 0o600 {
			t.Fatalf("%s: %v", f, got)
		}
	}
	m.stop()

	// Others can read the log: refused.
	db := filepath.Join(dir, "raft.db")
	if err := os.Chmod(db, 0o644); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, m.dir)
	defer st.Close()
	_, tr := raft.NewInmemTransport("m")
	if _, err := Open(Config{ID: "m", DataDir: m.dir, Store: st, Transport: tr}); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable raft.db: %v", err)
	}
	os.Chmod(db, 0o600)
	// Others can enter the directory: refused.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{ID: "m", DataDir: m.dir, Store: st, Transport: tr}); err == nil || !strings.Contains(err.Error(), "0700") {
		t.Fatalf("world-readable raft dir: %v", err)
	}
	os.Chmod(dir, 0o700)
	// Snapshot files another tool widened are narrowed at start.
	if err := os.Chmod(filepath.Join(snaps[0], "state.bin"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := Open(Config{ID: "m", DataDir: m.dir, Store: st, Transport: tr, Tune: fastRaft})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if got := mode(t, filepath.Join(snaps[0], "state.bin")); got != 0o600 {
		t.Fatalf("snapshot not narrowed at start: %v", got)
	}
}

// A store that predates replication (an MMC upgraded to raft) becomes
// the cluster's first snapshot, so members that join later get its
// content although no log entry wrote it.
func TestExistingStoreSeedsJoiners(t *testing.T) {
	ctx := ctxT(t)
	ic := &inmemCluster{trans: map[raft.ServerAddress]*raft.InmemTransport{}}
	ms := newMembers(t, 3)
	pre := openStore(t, ms[0].dir)
	if err := pre.CreateAgent(store.Agent{ID: "old", Name: "h0", State: store.StatePending}); err != nil {
		t.Fatal(err)
	}
	if _, err := pre.Apply(audit("before raft")); err != nil {
		t.Fatal(err)
	}
	pre.Close()

	for i, m := range ms {
		m.start(ic.transport(raft.ServerAddress(m.id)), i > 0)
	}
	l := leader(t, ms)
	for _, m := range ms[1:] {
		if err := l.node.AddVoter(ctx, m.id, raft.ServerAddress(m.id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.node.Apply(ctx, audit("after raft")); err != nil {
		t.Fatal(err)
	}
	converge(t, l, ms)
	if _, err := ms[2].st.Agent("old"); err != nil {
		t.Fatalf("a joiner lacks the pre-raft content: %v", err)
	}
	// Restarted, the first member does not seed again (it has a snapshot
	// and applied entries) and keeps its content.
	ms[0].stop()
	ic.trans["mmc1"].DisconnectAll()
	ms[0].start(ic.transport("mmc1"), false)
	l = leader(t, ms)
	converge(t, l, ms)
}

// A batch applies the entries before an undecodable one, halts at it and
// refuses every later one; raft's configuration entries get no result.
func TestApplyBatchHaltsAtUndecodableEntry(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	f := NewFSM(st, nil)
	enc := func(k string) []byte {
		b, err := store.EncodeCommand(&store.MetaEnsure{Key: k, Value: "v"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	logs := []*raft.Log{
		{Index: 1, Type: raft.LogCommand, Data: enc("one")},
		{Index: 2, Type: raft.LogConfiguration, Data: []byte("not a command")},
		{Index: 3, Type: raft.LogCommand, Data: enc("three")},
		{Index: 4, Term: 2, Type: raft.LogCommand, Data: []byte(`{"kind":"vm.teleport","body":{}}`)},
		{Index: 5, Type: raft.LogCommand, Data: enc("five")},
	}
	out := f.ApplyBatch(logs)
	if len(out) != len(logs) {
		t.Fatalf("%d results for %d entries", len(out), len(logs))
	}
	for _, i := range []int{0, 2} {
		if r := out[i].(*Result); r.Err != nil || r.Value != "v" {
			t.Fatalf("entry %d: %+v", i+1, r)
		}
	}
	if out[1] != nil {
		t.Fatalf("configuration entry: %+v", out[1])
	}
	for _, i := range []int{3, 4} {
		if r := out[i].(*Result); !errors.Is(r.Err, ErrHalted) {
			t.Fatalf("entry %d: %+v", i+1, r)
		}
	}
	if v, _ := st.Meta("three"); v != "v" {
		t.Fatal("the entry before the undecodable one was not applied")
	}
	if v, _ := st.Meta("five"); v != "" {
		t.Fatal("an entry after the undecodable one was applied")
	}
	select {
	case err := <-f.Fatal():
		if !strings.Contains(err.Error(), "entry 4") {
			t.Fatalf("fatal cause: %v", err)
		}
	default:
		t.Fatal("no fatal report")
	}
	if r := f.ApplyBatch(logs[:1])[0].(*Result); !errors.Is(r.Err, ErrHalted) {
		t.Fatalf("a batch after the halt: %+v", r)
	}
}
