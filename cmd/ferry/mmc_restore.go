package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/mmc"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// newMMCRestoreCmd is `ferry mmc restore`: disaster recovery from a
// snapshot (`ferry ctl mmcs snapshot`) into a fresh data directory.
func newMMCRestoreCmd() *cobra.Command {
	var dir, from, keyFile string
	var gap uint64
	var newKey bool
	cmd := &cobra.Command{
		Use:   "restore --data-dir DIR --from FILE",
		Short: "Restore a cluster snapshot into a fresh data directory (disaster recovery)",
		Long: `Restore a snapshot taken with 'ferry ctl mmcs snapshot FILE' into a fresh
data directory. The file is verified (format, SHA-256) before anything is
written; DIR must hold no database, raft state or cluster secret.

Then 'ferry mmc --data-dir DIR' starts a one-member cluster with the
snapshot's state: agents and their credentials, tokens, policy, VMs,
migrations, audit. A new cluster secret is made on that start: the other
members join again from empty data directories with join tokens. A new
admin token is made too, unless DIR/admin.token (mode 0600) is the old
one, copied in before the start.

Agents dial the members they last heard of, each with its static key.
The restored MMC must run with an old member's key (--key-file here and
for 'ferry mmc'; default DIR/node.key) at that member's address: then
the agents reconnect by themselves, without a new approval. A key no old
member had is refused unless --new-key (every agent must then be
enrolled anew).

The fencing term is raised by --fence-gap above the snapshot's, so that
agents which obeyed leaders elected after the snapshot obey the restored
one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				return &usageError{"--from FILE is required\nRun 'ferry mmc restore --help' for usage."}
			}
			kf := keyFile
			if kf == "" {
				kf = filepath.Join(dir, identity.KeyFile)
			}
			opts := mmc.RestoreOptions{DataDir: dir, FenceGap: gap, NewKey: newKey}
			switch pub, err := publicKeyOf(kf); {
			case errors.Is(err, fs.ErrNotExist) && keyFile == "":
				// The restored MMC would make a new key.
			case err != nil:
				return err
			default:
				opts.Key = &pub
			}
			f, err := os.Open(from)
			if err != nil {
				return err
			}
			defer f.Close()
			opts.From = f
			res, err := mmc.RestoreDataDir(opts)
			if errors.Is(err, mmc.ErrUnknownKey) {
				fmt.Fprintln(cmd.ErrOrStderr(), "the snapshot's members (give one's key with --key-file, and start the MMC at its address):")
				for _, m := range res.OldMembers {
					fmt.Fprintf(cmd.ErrOrStderr(), "  %s  %s  key %s\n", q(m.ID), q(m.Addr), handshake.EncodeKey(m.Key))
				}
				return fmt.Errorf("%w (key %s); --new-key restores anyway, and every agent must then be enrolled anew", err, kf)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "restored %s into %s\n", from, dir)
			fmt.Fprintf(out, "  cluster id     %s\n", res.Snapshot.ClusterIDHex())
			fmt.Fprintf(out, "  taken at       %s (raft index %d)\n", res.Snapshot.TakenAt.Format(time.RFC3339), res.Snapshot.AppliedIndex)
			fmt.Fprintf(out, "  fencing term   %d in the snapshot, %d now (the first leader takes %d)\n", res.Snapshot.FenceTerm, res.FenceTerm, res.FenceTerm+1)
			fmt.Fprintf(out, "  sha256         %x\n", res.Snapshot.SHA256)
			fmt.Fprintln(out, "  old members (forgotten; they join again with join tokens, from empty data directories):")
			for _, m := range res.OldMembers {
				fmt.Fprintf(out, "    %s  %s  key %s\n", q(m.ID), q(m.Addr), handshake.EncodeKey(m.Key))
			}
			advertise := "ADDR"
			if res.KeyOf != nil {
				advertise = res.KeyOf.Addr
				fmt.Fprintf(out, "  key            %s is old member %s's: start the MMC at %s and agents reconnect by themselves\n", kf, q(res.KeyOf.ID), q(res.KeyOf.Addr))
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: the restored MMC's key is no old member's (--new-key): no agent can reach it; every agent must be enrolled anew.\n")
			}
			keyFlag := ""
			if keyFile != "" {
				keyFlag = " --key-file " + keyFile
			}
			fmt.Fprintf(out, "next: ferry mmc --data-dir %s%s --listen UDPADDR --advertise %s --admin HTTPADDR\n", dir, keyFlag, q(advertise))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "data-dir", defaultMMCDir, "the fresh data directory to restore into")
	f.StringVar(&from, "from", "", "the snapshot file ('ferry ctl mmcs snapshot FILE')")
	f.StringVar(&keyFile, "key-file", "", "the static key the restored MMC will use (checked against the old members'; default DATA/node.key if present)")
	f.Uint64Var(&gap, "fence-gap", mmc.DefaultFenceGap, "raise the fencing term this far above the snapshot's")
	f.BoolVar(&newKey, "new-key", false, "restore although the MMC's key is no old member's (no agent can reach it: all must be enrolled anew)")
	return cmd
}

// publicKeyOf is the public half of the static key in path (which must
// exist: it is never created here).
func publicKeyOf(path string) ([32]byte, error) {
	if _, err := os.Stat(path); err != nil {
		return [32]byte{}, err
	}
	k, err := identity.LoadOrCreateKeyFile(path, nil)
	if err != nil {
		return [32]byte{}, err
	}
	clear(k.Private)
	return [32]byte(k.Public), nil
}
