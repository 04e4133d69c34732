package main

import (
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/api"
)

// newCtlMMCsCmd is `ferry ctl mmcs`: the MMC cluster's members, growing
// it, shrinking it and moving its leadership.
func newCtlMMCsCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "mmcs", Short: "The MMC cluster: members, join tokens, removal, leadership"}
	var ttl time.Duration
	joinToken := &cobra.Command{
		Use:   "join-token",
		Short: "Create a token that lets one new MMC join the cluster (printed once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			t, err := cl.CreateMMCJoinToken(cmd.Context(), ttl)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), t)
			}
			// The token alone on stdout, so that TOKEN=$(ferry ctl mmcs
			// join-token) works; the hint goes to stderr. The hint says
			// TOKEN rather than repeating the secret where logs of
			// stderr might keep it.
			fmt.Fprintln(cmd.OutOrStdout(), q(t.Token))
			fmt.Fprintf(cmd.ErrOrStderr(), "This token lets one MMC join the cluster until %s. On the new MMC, with an empty data directory, run\n"+
				"  ferry mmc --data-dir DIR --listen UDPADDR --admin HTTPADDR --join BUNDLE --join-token TOKEN\n"+
				"where BUNDLE is what 'ferry mmc bundle' prints on any member.\n", t.Expires.Format(time.RFC3339))
			return nil
		},
	}
	joinToken.Flags().DurationVar(&ttl, "ttl", 0, "validity (default: the MMC's, 1h)")
	cmd.AddCommand(newCtlMMCsSnapshotCmd(c))
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List the cluster's members with their raft state", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			ms, err := cl.MMCs(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), ms)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDRESS\tADMIN\tSTATE\tVOTER\tTERM\tAPPLIED\tLAST CONTACT\tERROR")
			for _, m := range ms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\n", q(m.ID), q(m.Address), q(m.Admin), q(m.State), m.Voter,
					orDash(m.Term), orDash(m.AppliedIndex), lastContact(m.LastContactMS), q(m.Error))
			}
			return tw.Flush()
		},
	}, joinToken, &cobra.Command{
		Use: "remove ID", Short: "Remove a member from the cluster", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			if err := cl.RemoveMMC(cmd.Context(), args[0]); err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), api.Created{ID: args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "MMC %s removed from the cluster\n", q(args[0]))
			return nil
		},
	}, &cobra.Command{
		Use: "transfer-leadership [ID]", Short: "Hand leadership to voter ID (default: the most up-to-date voter)", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			var id string
			if len(args) == 1 {
				id = args[0]
			}
			r, err := cl.TransferLeadership(cmd.Context(), id)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "leadership transferred to %s\n", q(r.Leader))
			return nil
		},
	})
	return cmd
}

// orDash prints a raft counter; 0 is "not known" (a member that did not
// answer).
func orDash(n uint64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatUint(n, 10)
}

// lastContact prints a follower's time since it heard from the leader;
// "-" where there is none (the leader, an unreachable member).
func lastContact(ms *int64) string {
	if ms == nil {
		return "-"
	}
	return (time.Duration(*ms) * time.Millisecond).String()
}
