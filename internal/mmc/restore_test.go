package mmc

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/store"
)

// snapshotOf frames a snapshot of the store at path, as the leader's
// handler does (spoolSnapshot), with cluster id id.
func snapshotOf(t *testing.T, st *store.Store, id [16]byte) []byte {
	t.Helper()
	sn, err := st.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	var img bytes.Buffer
	if _, err := sn.WriteTo(&img); err != nil {
		t.Fatal(err)
	}
	idx, _ := sn.AppliedIndex()
	term, _ := sn.FenceTerm()
	var out bytes.Buffer
	sw, err := api.NewSnapshotWriter(&out, api.SnapshotHeader{ClusterID: id, AppliedIndex: idx, FenceTerm: term, TakenAt: time.Now(), ImageLen: int64(img.Len())})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Write(img.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// oldClusterStore is a store as a three-member cluster leaves it: three
// members on record, a fencing term, an applied index, a token.
func oldClusterStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "old.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	for i, addr := range []string{"10.0.0.1:7946", "10.0.1.1:7946", "10.0.2.1:7946"} {
		if _, err := st.ApplyIndexed(uint64(10+i), &store.MemberSet{Member: store.Member{ID: "m" + string(rune('a'+i)), Addr: addr, Key: [32]byte{byte(i + 1)}, Added: now}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if _, err := st.ApplyIndexed(uint64(20+i), &store.LeaderTerm{ID: "ma", RaftTerm: uint64(i + 1), At: now}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutToken(store.Token{ID: "tok1", Created: now, Expires: now.Add(time.Hour), UsesLeft: 1}); err != nil {
		t.Fatal(err)
	}
	return st
}

var testClusterID = [16]byte{0xfe, 0xed, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}

// TestRestoreDataDir: the snapshot becomes a fresh directory's database,
// its cluster id the directory's, without the old members' records,
// with no applied index (the MMC seeds a new log with it) and with the
// fencing term raised by the gap.
func TestRestoreDataDir(t *testing.T) {
	file := snapshotOf(t, oldClusterStore(t), testClusterID)
	dir := filepath.Join(t.TempDir(), "restored")
	key := [32]byte{2} // member mb's
	res, err := RestoreDataDir(RestoreOptions{DataDir: dir, From: bytes.NewReader(file), FenceGap: 1000, Key: &key})
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.FenceTerm != 5 || res.FenceTerm != 1005 || len(res.OldMembers) != 3 || res.Snapshot.AppliedIndex != 24 ||
		res.KeyOf == nil || res.KeyOf.ID != "mb" {
		t.Fatalf("result %+v", res)
	}
	fi, err := os.Stat(filepath.Join(dir, dbFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v", dbFile, err, fi)
	}
	id, err := os.ReadFile(filepath.Join(dir, ClusterIDFile))
	if err != nil || strings.TrimSpace(string(id)) != "feed0102030405060708090a0b0c0d0e" {
		t.Fatalf("cluster.id %q %v", id, err)
	}
	st, err := store.Open(filepath.Join(dir, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ms, _ := st.Members()
	term, _ := st.FenceTerm()
	idx, _ := st.AppliedIndex()
	toks, _ := st.Tokens()
	if len(ms) != 0 || term != 1005 || idx != 0 || len(toks) != 1 {
		t.Fatalf("restored store: members %v, fence term %d, applied index %d, tokens %d", ms, term, idx, len(toks))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("the directory holds %d entries, want the database and cluster.id: %v", len(ents), ents)
	}
	// A second restore into it is refused.
	if _, err := RestoreDataDir(RestoreOptions{DataDir: dir, From: bytes.NewReader(file), Key: &key}); !errors.Is(err, ErrNotFresh) {
		t.Fatalf("a restore over a restored directory: %v", err)
	}
}

// A directory holding a member's state is refused, and so is a damaged
// file; either way no database is left behind.
func TestRestoreRefuses(t *testing.T) {
	file := snapshotOf(t, oldClusterStore(t), testClusterID)
	oldKey, newKey := [32]byte{1}, [32]byte{9}
	cases := []struct {
		name  string
		setup func(dir string)
		file  []byte
		key   *[32]byte
		want  error
	}{
		{"a key no old member has", func(string) {}, file, &newKey, ErrUnknownKey},
		{"no key", func(string) {}, file, nil, ErrUnknownKey},
		{"raft state", func(dir string) { os.MkdirAll(filepath.Join(dir, "raft"), 0o700) }, file, nil, ErrNotFresh},
		{"a cluster secret", func(dir string) { os.WriteFile(filepath.Join(dir, ClusterSecretFile), []byte("x"), 0o600) }, file, nil, ErrNotFresh},
		{"another cluster's id", func(dir string) {
			os.WriteFile(filepath.Join(dir, ClusterIDFile), []byte("00000000000000000000000000000000\n"), 0o600)
		}, file, nil, ErrNotFresh},
		{"truncated", func(string) {}, file[:len(file)/2], nil, api.ErrSnapshotTruncated},
		{"damaged", func(string) {}, func() []byte { b := bytes.Clone(file); b[len(b)/2] ^= 1; return b }(), nil, api.ErrSnapshotChecksum},
		{"another version", func(string) {}, func() []byte { b := bytes.Clone(file); b[9] = 9; return b }(), nil, api.ErrSnapshotVersion},
	}
	for _, tc := range cases {
		dir := t.TempDir()
		tc.setup(dir)
		before, _ := os.ReadDir(dir)
		key := tc.key
		if key == nil && tc.want != ErrUnknownKey {
			key = &oldKey
		}
		_, err := RestoreDataDir(RestoreOptions{DataDir: dir, From: bytes.NewReader(tc.file), Key: key})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		after, _ := os.ReadDir(dir)
		if len(after) != len(before) {
			t.Errorf("%s: the directory went from %v to %v", tc.name, before, after)
		}
	}
	// An existing database is never replaced.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, dbFile), []byte("live"), 0o600)
	if _, err := RestoreDataDir(RestoreOptions{DataDir: dir, From: bytes.NewReader(file), NewKey: true}); !errors.Is(err, ErrNotFresh) {
		t.Fatalf("over a database: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, dbFile)); string(b) != "live" {
		t.Fatal("the existing database was touched")
	}
}

// TestSnapshotRestoreCluster: a snapshot taken at a follower of a
// three-member cluster (forwarded to the leader) holds every write
// acknowledged before it; restored into a fresh directory (NewKey: the
// agents would be enrolled anew), an MMC with a NEW key started at the
// old leader's address leads a one-member cluster
// with the old state and a fencing term above every old one. (The old
// leader's record holds that address: kept, it would refuse the new
// member's own record and the MMC could not take up the leadership.)
func TestSnapshotRestoreCluster(t *testing.T) {
	ms := startCluster(t)
	ctx := context.Background()
	leader := leaderOf(t, ms, 5*time.Second)
	var follower *member
	for _, m := range ms {
		if m != leader {
			follower = m
			break
		}
	}
	tok, err := follower.client().CreateToken(ctx, time.Hour, 3)
	if err != nil {
		t.Fatal(err)
	}
	// A 503 (the leadership moved while forwarded: a loaded machine
	// under -race misses heartbeats at the tests' short timeouts) is
	// retried as an operator would: a snapshot changes nothing.
	var file bytes.Buffer
	var info api.SnapshotInfo
	for try := 0; ; try++ {
		file.Reset()
		info, err = follower.client().Snapshot(ctx, &file)
		var se *api.StatusError
		if err == nil || try == 4 || !errors.As(err, &se) || se.Status != 503 {
			break
		}
		time.Sleep(500 * time.Millisecond)
		leader = leaderOf(t, ms, 5*time.Second)
	}
	if err != nil {
		t.Fatalf("a snapshot at a follower: %v", err)
	}
	oldTerm := leader.s.term.Load()
	if info.FenceTerm != oldTerm || info.ClusterIDHex() != leader.s.clusterID || info.AppliedIndex == 0 {
		t.Fatalf("snapshot %+v; the leader's fencing term is %d, cluster %s", info.SnapshotHeader, oldTerm, leader.s.clusterID)
	}
	if ents, _ := filepath.Glob(filepath.Join(leader.dir, "snapshot-*")); len(ents) != 0 {
		t.Fatalf("the leader left its spool behind: %v", ents)
	}
	oldAddr := leader.s.Addr().String()
	for _, m := range ms {
		m.stop()
	}

	dir := filepath.Join(t.TempDir(), "restored")
	res, err := RestoreDataDir(RestoreOptions{DataDir: dir, From: &file, NewKey: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.OldMembers) != 3 || res.KeyOf != nil {
		t.Fatalf("old members %+v", res.OldMembers)
	}
	s, err := New(Config{DataDir: dir, Listen: oldAddr, Admin: "127.0.0.1:0", raftStart: 150 * time.Millisecond, ReauthMin: time.Hour})
	if err != nil {
		t.Fatalf("starting the restored MMC: %v", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(rctx) }()
	defer func() { cancel(); <-done }()
	if !s.leading.Load() {
		t.Fatal("the restored MMC does not lead")
	}
	if s.clusterID != leader.s.clusterID {
		t.Fatalf("cluster id %s, want the snapshot's %s", s.clusterID, leader.s.clusterID)
	}
	if got := s.term.Load(); got != oldTerm+DefaultFenceGap+1 {
		t.Fatalf("fencing term %d, want %d", got, oldTerm+DefaultFenceGap+1)
	}
	cl := &api.Client{Base: s.AdminURL(), Token: s.AdminToken()}
	toks, err := cl.Tokens(ctx)
	if err != nil || !hasTokenInfo(toks, tok.ID) {
		t.Fatalf("the token written before the snapshot: %v %v", toks, err)
	}
	list, err := cl.MMCs(ctx)
	if err != nil || len(list) != 1 || list[0].State != "leader" || list[0].Address != oldAddr {
		t.Fatalf("members of the restored cluster: %+v %v", list, err)
	}
	recs, _ := s.st.Members()
	if len(recs) != 1 || recs[0].ID != s.repl.id {
		t.Fatalf("member records %+v", recs)
	}
	if _, err := cl.CreateToken(ctx, time.Hour, 1); err != nil {
		t.Fatalf("a write on the restored cluster: %v", err)
	}
}
