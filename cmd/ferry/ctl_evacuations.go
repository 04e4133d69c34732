package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/evacuation"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/units"
)

// newCtlEvacuateCmd is `hosts evacuate HOST` or `sites evacuate SITE`.
func newCtlEvacuateCmd(c *ctlFlags, scope string) *cobra.Command {
	var to, rate string
	var perLink int
	var postcopy bool
	use, short := "evacuate HOST [--to SITE_OR_HOST]", "Move every VM off a host, as one group of live migrations"
	if scope == evacuation.ScopeSite {
		use, short = "evacuate SITE [--to SITE_OR_HOST]", "Move every VM out of a site (disaster recovery), as one group of live migrations"
	}
	cmd := &cobra.Command{
		Use: use, Short: short, Args: cobra.ExactArgs(1),
		Long: short + ".\n\nEvery VM is placed before the first moves (memory must fit; CPU only ranks the hosts),\n" +
			"at most --per-link migrations run at once between two sites, smallest and calmest VMs first.\n" +
			"Prints the evacuation's id; follow it with `ferry ctl evacuations watch ID`.",
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			req := api.EvacuateRequest{Scope: scope, Source: args[0], To: to, PerLink: perLink, Options: migration.Options{AllowPostcopy: postcopy}}
			if rate != "" {
				bps, err := units.ParseRate(rate)
				if err != nil {
					return fmt.Errorf("--max-bandwidth: %w", err)
				}
				req.MaxRate = bps / 8
			}
			out, err := cl.Evacuate(cmd.Context(), req)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "evacuation %s of %s %s started\n", q(out.ID), scope, q(args[0]))
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination site or host (default: any other host; a host's own site first)")
	cmd.Flags().IntVar(&perLink, "per-link", 0, fmt.Sprintf("migrations at once between two sites (default %d)", evacuation.DefaultPerLink))
	cmd.Flags().StringVar(&rate, "max-bandwidth", "", "cap each migration's stream, e.g. 100mbit")
	cmd.Flags().BoolVar(&postcopy, "postcopy", false, "let a migration that has not converged switch to post-copy (QEMU)")
	return cmd
}

func newCtlSitesCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "sites", Short: "Sites (data centres)"}
	cmd.AddCommand(newCtlEvacuateCmd(c, evacuation.ScopeSite))
	return cmd
}

func newCtlEvacuationsCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "evacuations", Short: "Evacuations: groups of migrations moving a host or a site"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List evacuations", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			gs, err := cl.Evacuations(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), gs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSOURCE\tTO\tSTATE\tDONE\tRUNNING\tQUEUED\tFAILED\tELAPSED")
			for _, g := range gs {
				fmt.Fprintf(tw, "%s\t%s %s\t%s\t%s\t%d/%d\t%d\t%d\t%d\t%s\n", q(g.ID), g.Scope, q(g.Source), q(cmp.Or(g.Target, "any")), g.State,
					g.Completed, len(g.Items), g.Running, g.Queued, g.Failed, (time.Duration(g.ElapsedMS) * time.Millisecond).Round(time.Second))
			}
			return tw.Flush()
		},
	}, &cobra.Command{
		Use: "get ID", Short: "Show one evacuation and its VMs", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			g, err := cl.Evacuation(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), g)
			}
			printEvacuation(cmd.OutOrStdout(), g)
			return nil
		},
	}, &cobra.Command{
		Use: "cancel ID", Short: "Cancel an evacuation: queued VMs stay, running migrations are cancelled", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			g, err := cl.CancelEvacuation(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), g)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "evacuation %s: cancel requested\n", q(g.ID))
			return nil
		},
	}, &cobra.Command{
		Use: "watch ID", Short: "Follow an evacuation until it ends, then print its report",
		Long: "Follow an evacuation until it ends — done / running / queued and the ETA — then its report,\n" +
			"one line per VM. With -o json, only the final object. Exits non-zero unless every VM moved.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var live io.Writer
			if !c.json() {
				live = out
			}
			g, err := watchEvacuation(cmd.Context(), cl, args[0], live)
			if err != nil {
				return err
			}
			if c.json() {
				if err := printJSON(out, g); err != nil {
					return err
				}
			} else {
				printEvacuation(out, g)
			}
			if g.State != evacuation.Completed {
				return fmt.Errorf("evacuation %s %s", g.ID, g.State)
			}
			return nil
		},
	})
	return cmd
}

// watchEvacuation polls the group until it ends, a progress line on w
// (nil: silent) whenever it changes.
func watchEvacuation(ctx context.Context, cl *api.Client, id string, w io.Writer) (api.Evacuation, error) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := ""
	for {
		g, err := cl.Evacuation(ctx, id)
		if err != nil {
			return g, err
		}
		if w != nil {
			line := fmt.Sprintf("evacuation %s: %d/%d moved, %d running, %d queued, %d not moved; %s of %s",
				q(g.ID), g.Completed, len(g.Items), g.Running, g.Queued, g.Failed, units.FormatBytes(g.MemoryMoved), units.FormatBytes(g.MemoryTotal))
			if g.ETAMS > 0 {
				line += fmt.Sprintf("; eta %s", (time.Duration(g.ETAMS) * time.Millisecond).Round(time.Second))
			}
			if line != last {
				fmt.Fprintln(w, line)
				last = line
			}
		}
		if !g.State.Open() {
			return g, nil
		}
		select {
		case <-ctx.Done():
			return g, ctx.Err()
		case <-t.C:
		}
	}
}

func printEvacuation(w io.Writer, g api.Evacuation) {
	fmt.Fprintf(w, "evacuation %s of %s %s to %s: %s — %d moved, %d not moved, %d cancelled, %d running, %d queued; %s\n",
		q(g.ID), g.Scope, q(g.Source), q(cmp.Or(g.Target, "any")), g.State, g.Completed, g.Failed, g.Cancelled, g.Running, g.Queued,
		(time.Duration(g.ElapsedMS) * time.Millisecond).Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VM\tFROM\tTO\tMEMORY\tSTATE\tMIGRATION\tTOTAL\tDOWNTIME\tVERIFIED\tWHY")
	for _, it := range g.Items {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%dms\t%dms\t%v\t%s\n", q(it.VM), q(it.From), q(cmp.Or(it.To, "-")), units.FormatBytes(it.Memory),
			it.State, q(cmp.Or(it.Migration, "-")), it.TotalMS, it.DowntimeMS, it.Verified, q(it.Why))
	}
	_ = tw.Flush()
}
