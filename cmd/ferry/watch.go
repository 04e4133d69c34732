package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/units"
)

// watchEvery is how often `migrations watch` reads the migration.
const watchEvery = 250 * time.Millisecond

func newCtlWatchCmd(c *ctlFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "watch ID",
		Short: "Follow a migration with a live progress bar until it ends",
		Long: "Follow a migration until it ends: a live progress bar (round, remaining, rate, dirty rate,\n" +
			"expected downtime, ETA), then the final report. With -o json, only the final record.\n" +
			"Exits non-zero unless the migration completed.",
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
			m, err := watchMigration(cmd.Context(), cl, args[0], live, isTerminal(out))
			if err != nil {
				return err
			}
			if c.json() {
				if err := printJSON(out, m); err != nil {
					return err
				}
			} else {
				printMigrationReport(out, m)
			}
			if m.State != "completed" {
				return fmt.Errorf("migration %s %s", m.ID, m.State)
			}
			return nil
		},
	}
}

// watchMigration polls migration id until it is no longer open, drawing
// progress on w (nil: silent); on a terminal the bar redraws in place.
func watchMigration(ctx context.Context, cl *api.Client, id string, w io.Writer, tty bool) (api.Migration, error) {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	lastLine := ""
	var lastPrint time.Time
	for {
		m, err := cl.Migration(ctx, id)
		if err != nil {
			return m, err
		}
		if w != nil {
			line := progressLine(m)
			switch {
			case tty:
				fmt.Fprintf(w, "\r\033[K%s", line)
			case line != lastLine && time.Since(lastPrint) >= time.Second:
				fmt.Fprintln(w, line)
				lastPrint = time.Now()
			}
			lastLine = line
		}
		if !m.State.Open() {
			if w != nil && tty {
				fmt.Fprintln(w)
			}
			return m, nil
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-t.C:
		}
	}
}

// progressLine is one line of progress: bar, state and the transfer's
// figures.
func progressLine(m api.Migration) string {
	const width = 30
	p := min(max(m.Progress, 0), 1)
	n := int(p * width)
	bar := strings.Repeat("█", n) + strings.Repeat("░", width-n)
	s := fmt.Sprintf("%s %s→%s %s %3.0f%% %-12s", q(m.VM), q(m.From), q(m.To), bar, 100*p, q(string(m.State)))
	if l := m.Live; l != nil && m.State == "transferring" {
		s += fmt.Sprintf(" round %d  left %s  %s  dirty %s  downtime≈%dms  eta %.0fs",
			l.Round, units.FormatBytes(l.Remaining), units.FormatRate(8*l.Rate),
			units.FormatRate(8*l.DirtyRate), l.ExpectedDowntimeMS, l.ETASeconds)
		if l.Throttle > 0 {
			s += fmt.Sprintf("  throttle %.0f%%", 100*l.Throttle)
		}
	}
	return s
}

func printMigrationReport(w io.Writer, m api.Migration) {
	fmt.Fprintf(w, "migration %s of %s from %s to %s: %s\n", q(m.ID), q(m.VM), q(m.From), q(m.To), q(string(m.State)))
	if m.Error != "" {
		fmt.Fprintf(w, "  reason:        %s\n", q(m.Error))
	}
	if m.State == "completed" {
		transfer := m.TotalMS - m.DowntimeMS
		fmt.Fprintf(w, "  preparation:   %d ms (destination ready, link up)\n  transfer:      %d ms\n  switch-over:   %d ms (downtime)\n  total time:    %d ms (transfer and switch-over; %d ms with preparation)\n",
			m.PrepareMS, transfer, m.DowntimeMS, m.TotalMS, m.PrepareMS+m.TotalMS)
		fmt.Fprintf(w, "  bytes on wire: %s (%d rounds, %s of memory pages)\n  verified:      %v\n",
			units.FormatBytes(m.BytesOnWire), m.Rounds, units.FormatBytes(m.Transferred), m.Verified)
	}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
