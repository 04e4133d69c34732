package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
)

// snapshotView is `ferry ctl mmcs snapshot FILE -o json`.
type snapshotView struct {
	File         string    `json:"file"`
	ClusterID    string    `json:"cluster_id"`
	AppliedIndex uint64    `json:"applied_index"`
	FenceTerm    uint64    `json:"fence_term"`
	TakenAt      time.Time `json:"taken_at"`
	Bytes        int64     `json:"bytes"`
	SHA256       string    `json:"sha256"`
}

// newCtlMMCsSnapshotCmd is `ferry ctl mmcs snapshot FILE`: a consistent
// backup of the cluster's state, verified, written 0600 (it holds every
// agent's key) and renamed into place only once whole.
func newCtlMMCsSnapshotCmd(c *ctlFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "snapshot FILE",
		Short: "Save a consistent snapshot of the cluster's state to FILE (restore: 'ferry mmc restore')",
		Long: `Save a consistent snapshot of the MMC cluster's state (agents and their
keys, tokens, policy, VMs, migrations, audit) to FILE. The leader takes it
after a raft barrier: every write acknowledged before the command is in it.
The file is verified (SHA-256) as it arrives, written with mode 0600 and
renamed into place only when whole. Keep it as safe as the MMC's database:
it holds every agent's credentials. 'ferry mmc restore --from FILE' turns it
into a fresh data directory.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			path := args[0]
			tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
			if err != nil {
				return err
			}
			defer os.Remove(tmp.Name()) // a no-op once renamed
			info, err := cl.Snapshot(cmd.Context(), tmp)
			if err == nil {
				err = tmp.Sync()
			}
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Rename(tmp.Name(), path); err != nil {
				return err
			}
			v := snapshotView{File: path, ClusterID: info.ClusterIDHex(), AppliedIndex: info.AppliedIndex, FenceTerm: info.FenceTerm,
				TakenAt: info.TakenAt, Bytes: info.Size, SHA256: fmt.Sprintf("%x", info.SHA256)}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "snapshot of cluster %s at raft index %d (fencing term %d, %s) saved to %s: %d bytes, sha256 %s\n",
				v.ClusterID, v.AppliedIndex, v.FenceTerm, v.TakenAt.Format(time.RFC3339), q(path), v.Bytes, v.SHA256)
			return nil
		},
	}
}
