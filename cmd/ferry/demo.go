package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/demo"
)

func newDemoCmd() *cobra.Command {
	var (
		o       demo.Options
		asJSON  bool
		wan     string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system on this machine: two sites, an SLA violation, a live migration",
		Long: `Run the whole system on this machine with no configuration: an MMC, two sites
with two hosts each (agents with the simulated hypervisor, real SUDP between
them on loopback), a handful of VMs; then one VM's CPU load is raised past
the SLA and the policy engine live-migrates it to the other site. A live view
shows what happens and why; a summary follows.

--keep leaves the cluster running until Ctrl-C so that 'ferry ctl' can be
tried against it. --json prints only the final summary as one JSON object.
--wan PROFILE (root) puts the two sites in network namespaces on either side
of an emulated WAN link of the WAN lab (e.g. --wan wan: 100 Mbit/s, 50 ms RTT,
1 % loss), so the migration crosses a real lossy, high-RTT path.
--ha runs three MMCs (one raft cluster, child processes) instead of one,
kills the leader with SIGKILL while the migration is in flight and shows
the takeover: the new leader's election, its first write, the agents
re-attaching, the migration completing; the killed member is restarted
at the end and rejoins as a follower. With --json the summary gains an
"ha" object (killed, new_leader, elected_ms, failover_ms,
agents_reattached_ms, rejoined).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.HA && wan != "" {
				return &usageError{"--ha and --wan do not go together (yet)\nRun 'ferry demo --help' for usage."}
			}
			ctx, stop := withSignals(cmd.Context())
			defer stop()
			o.Timeout, o.WAN = timeout, wan
			o.Notice = os.Stderr
			if asJSON {
				// stdout carries the summary only; the live view goes to
				// a terminal on stderr, if there is one.
				if isTerminal(os.Stderr) {
					o.View, o.TTY = os.Stderr, true
				}
			} else {
				o.View, o.TTY = cmd.OutOrStdout(), isTerminal(cmd.OutOrStdout())
			}
			sum, err := demo.Run(ctx, o)
			if asJSON {
				if perr := printJSON(cmd.OutOrStdout(), sum); perr != nil {
					return perr
				}
			} else {
				demo.PrintSummary(cmd.OutOrStdout(), sum)
			}
			if err != nil {
				return fmt.Errorf("demo: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Keep, "keep", false, "leave the cluster running until Ctrl-C")
	f.BoolVar(&asJSON, "json", false, "print the final summary as one JSON object on stdout")
	f.BoolVar(&o.HA, "ha", false, "three MMCs; kill the leader mid-migration and show the takeover")
	f.StringVar(&wan, "wan", "", "put the two sites on either side of an emulated WAN link with this WAN lab profile, e.g. wan (root)")
	f.StringVar(&o.Dir, "data-dir", "", "working directory (default: a temporary one, removed at the end)")
	f.DurationVar(&timeout, "timeout", 3*time.Minute, "give up on the scripted part after this long")
	return cmd
}
