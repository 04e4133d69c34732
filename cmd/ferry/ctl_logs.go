package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/api"
)

// The audit log, logs and alarms are numbered logs listed the same way:
// the newest first (--limit of them), from a number on oldest first
// (--after), only since a time (--since), or followed as they grow
// (--follow, like tail -f).

// followEvery is how often --follow asks for new entries.
const followEvery = time.Second

type logFlags struct {
	after  uint64
	limit  int
	since  string
	follow bool
}

func (f *logFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.Uint64Var(&f.after, "after", 0, "only entries after this sequence number, oldest first (to follow the log); without it, the newest first")
	fl.IntVar(&f.limit, "limit", 1000, "at most this many entries (the newest, without --after)")
	fl.StringVar(&f.since, "since", "", "only entries from this time on: a duration back from now (90m, 24h) or an RFC 3339 time")
	fl.BoolVarP(&f.follow, "follow", "f", false, "keep printing new entries as they come, oldest first (-o json: one object per line), until interrupted")
}

// sinceTime parses --since ("" → zero time).
func sinceTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, &usageError{fmt.Sprintf("--since: want a duration (90m, 24h) or an RFC 3339 time (2026-12-07T10:00:00Z), not %q", s)}
}

// logView is how one log's entries are fetched and shown.
type logView[T any] struct {
	fetch  func(ctx context.Context, cl *api.Client, after uint64, limit int, newest bool) ([]T, error)
	seq    func(T) uint64
	at     func(T) time.Time
	header string
	row    func(T) string
}

func (v logView[T]) run(cmd *cobra.Command, c *ctlFlags, f *logFlags) error {
	since, err := sinceTime(f.since, time.Now())
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	fromAfter := cmd.Flags().Changed("after")
	entries, err := v.fetch(ctx, cl, f.after, f.limit, !fromAfter)
	if err != nil {
		return err
	}
	entries = slices.DeleteFunc(entries, func(e T) bool { return v.at(e).Before(since) })
	out := cmd.OutOrStdout()
	if !f.follow {
		if c.json() {
			return printJSON(out, entries)
		}
		return v.table(out, entries, true)
	}
	// Following: oldest first, new entries appended as they come.
	if !fromAfter {
		slices.Reverse(entries)
	}
	last := f.after
	first := true
	t := time.NewTicker(followEvery)
	defer t.Stop()
	for {
		if len(entries) > 0 {
			last = v.seq(entries[len(entries)-1])
		}
		if c.json() {
			enc := json.NewEncoder(out)
			for _, e := range entries {
				if err := enc.Encode(e); err != nil {
					return err
				}
			}
		} else if err := v.table(out, entries, first); err != nil {
			return err
		}
		first = false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if entries, err = v.fetch(ctx, cl, last, f.limit, false); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

func (v logView[T]) table(w io.Writer, entries []T, header bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header {
		fmt.Fprintln(tw, v.header)
	}
	for _, e := range entries {
		fmt.Fprintln(tw, v.row(e))
	}
	return tw.Flush()
}

func newCtlAuditCmd(c *ctlFlags) *cobra.Command {
	var f logFlags
	view := logView[api.AuditEntry]{
		fetch: func(ctx context.Context, cl *api.Client, after uint64, limit int, newest bool) ([]api.AuditEntry, error) {
			return cl.Audit(ctx, after, limit, newest)
		},
		seq:    func(e api.AuditEntry) uint64 { return e.Seq },
		at:     func(e api.AuditEntry) time.Time { return e.Time },
		header: "SEQ\tTIME\tACTOR\tACTION\tTARGET\tSOURCE\tOUTCOME\tDETAIL",
		row: func(e api.AuditEntry) string {
			return strings.Join([]string{fmt.Sprint(e.Seq), e.Time.Format(time.RFC3339), q(e.Actor), q(e.Action), q(e.Target), q(e.Source), q(e.Outcome), q(e.Detail)}, "\t")
		},
	}
	cmd := &cobra.Command{
		Use: "audit", Short: "Show the audit log", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return view.run(cmd, c, &f) },
	}
	f.register(cmd)
	return cmd
}

// eventsView is `ferry ctl logs` or `ferry ctl alarms`.
func eventsView(alarms bool) logView[api.Event] {
	return logView[api.Event]{
		fetch: func(ctx context.Context, cl *api.Client, after uint64, limit int, newest bool) ([]api.Event, error) {
			return cl.Events(ctx, alarms, after, limit, newest)
		},
		seq:    func(e api.Event) uint64 { return e.Seq },
		at:     func(e api.Event) time.Time { return e.Time },
		header: "SEQ\tTIME\tHOST\tLEVEL\tALARM\tKIND\tMESSAGE",
		row: func(e api.Event) string {
			alarm := fmt.Sprint(e.Alarm)
			if !e.AckedAt.IsZero() {
				alarm = "acked"
			}
			return strings.Join([]string{fmt.Sprint(e.Seq), e.Time.Format(time.RFC3339), q(e.Host), q(e.Level), alarm, q(e.Kind), q(e.Message)}, "\t")
		},
	}
}
