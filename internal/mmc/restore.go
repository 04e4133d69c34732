package mmc

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/store"
)

// Disaster recovery (`ferry mmc restore`): a snapshot from `ferry ctl
// mmcs snapshot` becomes the database of a fresh data directory. The MMC
// started on it finds a store with content and no raft state, and seeds
// a new one-member cluster with it (replica.Open): agents, their keys,
// tokens, policy, VMs, migrations and the audit log are the snapshot's.
// What the snapshot does not carry is made new on that start: the
// cluster secret (the old members cannot reach the new cluster; they
// join it again, with join tokens, from empty data directories) and,
// unless the operator puts the old admin.token in the directory first,
// the admin token. The MMC's static key must be an old member's (its
// --key-file), and its address that member's: agents dial only the
// members they last heard of, with their keys, so that is how they find
// the restored MMC, by themselves and without a new approval.
//
// Two things in the snapshot describe the old cluster and are adjusted
// before the database is put in place:
//   - the members on record are forgotten. The new cluster has one
//     member, which records itself when it takes the leadership; an old
//     record holding its address or key would refuse that record
//     (store.MemberSet: no two members share a key or an address), and
//     the old members' records would also refuse their re-joining.
//   - the fencing term is raised by FenceGap. The snapshot's term is the
//     old cluster's when it was taken; elections after it raised the
//     term agents obey, and an agent refuses a leader below it (at
//     login, too). The gap puts the new cluster's first leader above
//     every term the old one can have reached since.

// DefaultFenceGap is how far a restore raises the fencing term above the
// snapshot's: more leader elections than a cluster makes in its life
// (one per failover), and far from the top of the term's 64 bits.
const DefaultFenceGap = 1 << 20

// RestoreOptions configures RestoreDataDir.
type RestoreOptions struct {
	DataDir string
	// From is the snapshot file.
	From io.Reader
	// FenceGap raises the fencing term above the snapshot's (0:
	// DefaultFenceGap).
	FenceGap uint64
	// Key is the public half of the static key the restored MMC will
	// run with. Agents dial the members they last heard of, each with
	// its key (their stored list, which a bundle does not override): a
	// restored MMC is reachable to them only with an old member's key at
	// that member's address. A Key that is no old member's (or none) is
	// refused unless NewKey: then every agent must be enrolled anew.
	Key    *[32]byte
	NewKey bool
}

// RestoreResult describes a restored data directory.
type RestoreResult struct {
	Snapshot api.SnapshotInfo
	// FenceTerm is the term the restored store holds; its first leader
	// takes FenceTerm+1.
	FenceTerm uint64
	// OldMembers are the members the snapshot had on record (forgotten).
	OldMembers []store.Member
	// KeyOf is the old member whose key Key is (nil: none).
	KeyOf *store.Member
}

// ErrNotFresh refuses a restore into a data directory that already
// holds an MMC's state.
var ErrNotFresh = errors.New("mmc: restore: the data directory is not fresh")

// ErrUnknownKey refuses a restore whose MMC key is no old member's
// (RestoreOptions.Key) without RestoreOptions.NewKey.
var ErrUnknownKey = errors.New("mmc: restore: the MMC's key is no old member's: agents could not reach it")

// RestoreDataDir verifies the snapshot in opts.From and makes it the
// database of opts.DataDir, which must hold no database, raft state or
// cluster secret (it may hold a key and an admin token; a cluster.id
// must be the snapshot's). On error the directory holds no database.
func RestoreDataDir(opts RestoreOptions) (RestoreResult, error) {
	var res RestoreResult
	dir := opts.DataDir
	if dir == "" {
		return res, errors.New("mmc: restore: no data directory")
	}
	gap := opts.FenceGap
	if gap == 0 {
		gap = DefaultFenceGap
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, fmt.Errorf("mmc: restore: %w", err)
	}
	for _, name := range []string{dbFile, "raft", ClusterSecretFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return res, fmt.Errorf("%w: %s exists (restore into an empty directory; never over a member's state)", ErrNotFresh, filepath.Join(dir, name))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("mmc: restore: %w", err)
		}
	}

	tmp, err := os.CreateTemp(dir, dbFile+".restore-*")
	if err != nil {
		return res, fmt.Errorf("mmc: restore: %w", err)
	}
	tmpPath := tmp.Name()
	defer os.Remove(tmpPath) // a no-op once renamed
	info, err := api.VerifySnapshot(opts.From, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("mmc: restore: %w", err)
	}
	res.Snapshot = info

	check := func(members []store.Member) error {
		res.OldMembers = members
		for i, m := range members {
			if opts.Key != nil && m.Key == *opts.Key {
				res.KeyOf = &members[i]
			}
		}
		if res.KeyOf == nil && !opts.NewKey {
			return ErrUnknownKey
		}
		return nil
	}
	if res.FenceTerm, err = prepareRestored(tmpPath, info.FenceTerm, gap, check); err != nil {
		if errors.Is(err, ErrUnknownKey) {
			return res, err
		}
		return res, fmt.Errorf("mmc: restore: %w", err)
	}
	// The cluster id before the database: a database in place is a
	// finished restore (a second run refuses it), so everything else
	// must be there first.
	if err := writeClusterID(filepath.Join(dir, ClusterIDFile), info.ClusterIDHex()); err != nil {
		return res, err
	}
	if err := os.Rename(tmpPath, filepath.Join(dir, dbFile)); err != nil {
		return res, fmt.Errorf("mmc: restore: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort: not every file system syncs a directory
		d.Close()
	}
	return res, nil
}

// prepareRestored opens the verified image as a store, shows check its
// members, and makes it a fresh cluster's: no members on record, no
// applied index, the fencing term raised by gap above the snapshot's.
func prepareRestored(path string, term, gap uint64, check func([]store.Member) error) (uint64, error) {
	st, err := store.Open(path)
	if err != nil {
		return 0, fmt.Errorf("the snapshot's image is not a database: %w", err)
	}
	defer st.Close()
	members, err := st.Members()
	if err != nil {
		return 0, err
	}
	if err := check(members); err != nil {
		return 0, err
	}
	for _, m := range members {
		if err := st.RemoveMember(m.ID); err != nil {
			return 0, fmt.Errorf("forgetting member %s: %w", m.ID, err)
		}
	}
	if err := st.ResetAppliedIndex(); err != nil {
		return 0, err
	}
	if term > ^uint64(0)-gap {
		return 0, fmt.Errorf("the snapshot's fencing term %d leaves no room for a gap of %d", term, gap)
	}
	fence, err := st.RaiseFenceTerm(term + gap)
	if err != nil {
		return 0, err
	}
	return fence, st.Close()
}

// writeClusterID writes the snapshot's cluster id, or checks the one in
// place is the same.
func writeClusterID(path, id string) error {
	cur, err := identity.ReadSecretFile(path)
	switch {
	case err == nil:
		if strings.TrimSpace(string(cur)) != id {
			return fmt.Errorf("%w: %s holds cluster id %s, the snapshot is of cluster %s", ErrNotFresh, path, strings.TrimSpace(string(cur)), id)
		}
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return identity.WriteSecretFile(path, []byte(id+"\n"))
	default:
		return fmt.Errorf("mmc: restore: %w", err)
	}
}
