package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/units"
)

// frameEvery is the live view's refresh period.
const frameEvery = 300 * time.Millisecond

// view is the demo's live view: on a terminal a screen redrawn in place
// (hosts, VMs, migrations, and what happened and why); elsewhere the
// events only, one line each.
type view struct {
	w             io.Writer
	tty           bool
	admin, policy string
	start         time.Time
	events        []string
	seenDecisions map[string]bool
	migStates     map[string]migration.State
	lastRound     map[string]int
	footer        string // shown under every frame (--keep)
	cluster       string // the MMCs and their roles (--ha)
}

func newView(w io.Writer, tty bool, admin, policy string) *view {
	return &view{w: w, tty: tty, admin: admin, policy: policy, start: time.Now(),
		seenDecisions: map[string]bool{}, migStates: map[string]migration.State{}, lastRound: map[string]int{}}
}

func (v *view) event(format string, args ...any) {
	line := fmt.Sprintf("%5.1fs  %s", time.Since(v.start).Seconds(), fmt.Sprintf(format, args...))
	v.events = append(v.events, line)
	if v.w != nil && !v.tty {
		fmt.Fprintln(v.w, line)
	}
}

// snapshot is what one frame shows.
type snapshot struct {
	hosts []api.Host
	vms   []api.VM
	migs  []api.Migration
	decs  []api.Decision
}

func fetch(ctx context.Context, cl *api.Client) (snapshot, error) {
	var s snapshot
	var err error
	if s.hosts, err = cl.Hosts(ctx); err != nil {
		return s, err
	}
	if s.vms, err = cl.VMs(ctx); err != nil {
		return s, err
	}
	if s.migs, err = cl.Migrations(ctx); err != nil {
		return s, err
	}
	s.decs, err = cl.Decisions(ctx)
	return s, err
}

// observe turns changes since the last frame into events: new policy
// decisions, migration phases, transfer rounds.
func (v *view) observe(s snapshot) {
	for _, d := range s.decs {
		key := d.Time.String() + d.VM
		if v.seenDecisions[key] {
			continue
		}
		v.seenDecisions[key] = true
		v.event("policy (%s): move %s %s → %s because %s; %s", d.Mode, d.VM, d.From, d.To, d.Reason, d.Action)
	}
	for _, m := range s.migs {
		if l := m.Live; l != nil && l.Round > v.lastRound[m.ID] {
			v.lastRound[m.ID] = l.Round
			if l.Round > 1 {
				v.event("%s round %d: %s still dirty, guest dirties %s, link %s → est. downtime %d ms",
					m.ID, l.Round, units.FormatBytes(l.Remaining), units.FormatRate(8*l.DirtyRate), units.FormatRate(8*l.Rate), l.ExpectedDowntimeMS)
			}
		}
		if v.migStates[m.ID] == m.State {
			continue
		}
		// Steps passed between two frames are told too, in order.
		prev := slices.Index(migSteps, v.migStates[m.ID])
		if cur := slices.Index(migSteps, m.State); cur > prev+1 {
			for _, st := range migSteps[prev+1 : cur] {
				v.migEvent(api.Migration{Record: migration.Record{ID: m.ID, VM: m.VM, From: m.From, To: m.To, By: m.By, State: st}})
			}
		}
		v.migStates[m.ID] = m.State
		v.migEvent(m)
	}
}

// migSteps are a successful migration's states in order.
var migSteps = []migration.State{migration.Planned, migration.Preparing, migration.Transferring, migration.SwitchOver, migration.Completed}

func (v *view) migEvent(m api.Migration) {
	switch m.State {
	case "planned":
		v.event("%s planned: %s %s → %s (by %s)", m.ID, m.VM, m.From, m.To, m.By)
	case "preparing":
		v.event("%s: MMC introduces %s and %s (one-time ticket); destination VM waits for the stream", m.ID, m.From, m.To)
	case "transferring":
		v.event("%s: pre-copy over the direct SUDP link %s → %s", m.ID, m.From, m.To)
	case "switch-over":
		v.event("%s: destination verified every page checksum; switch-over committed", m.ID)
	case "completed":
		v.event("%s completed: total %d ms, downtime %d ms, %s on the wire, verified %v",
			m.ID, m.TotalMS, m.DowntimeMS, units.FormatBytes(m.BytesOnWire), m.Verified)
	default:
		v.event("%s %s %s", m.ID, m.State, m.Error)
	}
}

// draw renders one frame.
func (v *view) draw(s snapshot) {
	if v.w == nil || !v.tty {
		return
	}
	var b bytes.Buffer
	b.WriteString("\033[H\033[2J")
	fmt.Fprintf(&b, "Ferry demo — MMC admin API %s — policy %s — %.0fs\n", v.admin, v.policy, time.Since(v.start).Seconds())
	if v.cluster != "" {
		fmt.Fprintf(&b, "MMC cluster (raft): %s\n", v.cluster)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tHOST\tCPU\t\tMEM\tVMS")
	hosts := slices.Clone(s.hosts)
	slices.SortFunc(hosts, func(a, b api.Host) int { return strings.Compare(a.Site+a.ID, b.Site+b.ID) })
	for _, h := range hosts {
		var names []string
		for _, vm := range s.vms {
			if vm.Host == h.ID {
				names = append(names, vm.ID)
			}
		}
		state := ""
		if !h.Online {
			state = " (offline)"
		}
		fmt.Fprintf(tw, "%s\t%s%s\t%s\t%3.0f%%\t%3.0f%%\t%s\n", h.Site, h.ID, state, bar(h.CPU, 12), 100*h.CPU, 100*h.Mem, strings.Join(names, " "))
	}
	tw.Flush()
	b.WriteString("\n")
	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tHOST\tSTATE\tCPU\tMEMORY\tDIRTY\tNET")
	for _, vm := range s.vms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%3.0f%%\t%s\t%s/s\t%s/s\n", vm.ID, vm.Host, vm.State, 100*vm.CPU,
			units.FormatBytes(vm.Memory), units.FormatBytes(uint64(vm.Dirty)), units.FormatBytes(uint64(vm.Net)))
	}
	tw.Flush()
	if len(s.migs) > 0 {
		b.WriteString("\nMIGRATIONS\n")
		for _, m := range s.migs {
			fmt.Fprintf(&b, "  %s %s %s→%s %s %3.0f%% %s", m.ID, m.VM, m.From, m.To, bar(m.Progress, 24), 100*m.Progress, m.State)
			if l := m.Live; l != nil && m.State == "transferring" {
				fmt.Fprintf(&b, "  round %d · %s left · %s · dirty %s · downtime≈%d ms", l.Round,
					units.FormatBytes(l.Remaining), units.FormatRate(8*l.Rate), units.FormatRate(8*l.DirtyRate), l.ExpectedDowntimeMS)
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\nWHAT HAPPENS AND WHY\n")
	evs := v.events
	if len(evs) > 14 {
		evs = evs[len(evs)-14:]
	}
	for _, e := range evs {
		b.WriteString("  " + e + "\n")
	}
	if v.footer != "" {
		b.WriteString("\n" + v.footer + "\n")
	}
	_, _ = v.w.Write(b.Bytes())
}

func bar(f float64, width int) string {
	f = min(max(f, 0), 1)
	n := int(f*float64(width) + 0.5)
	return strings.Repeat("█", n) + strings.Repeat("░", width-n)
}

// frame fetches, observes and draws once.
func (v *view) frame(ctx context.Context, cl *api.Client) (snapshot, error) {
	s, err := fetch(ctx, cl)
	if err != nil {
		return s, err
	}
	v.observe(s)
	v.draw(s)
	return s, nil
}

// drawFor keeps the view live for d.
func (v *view) drawFor(ctx context.Context, cl *api.Client, d time.Duration) error {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if _, err := v.frame(ctx, cl); err != nil {
			return err
		}
		if !sleep(ctx, frameEvery) {
			return ctx.Err()
		}
	}
	return nil
}

// followMigration keeps the view live until a migration of vm has ended,
// or, if until is given, until it holds for that migration, and returns
// the migration.
func (v *view) followMigration(ctx context.Context, cl *api.Client, vm string, until func(api.Migration) bool) (api.Migration, error) {
	for {
		s, err := v.frame(ctx, cl)
		if err != nil {
			return api.Migration{}, err
		}
		for _, m := range s.migs {
			if m.VM == vm && (ended(m) || until != nil && until(m)) {
				return m, nil
			}
		}
		if !sleep(ctx, frameEvery) {
			return api.Migration{}, fmt.Errorf("demo: waiting for %s's migration: %w", vm, ctx.Err())
		}
	}
}

// ended reports whether migration m has reached a final state.
func ended(m api.Migration) bool {
	return m.State == migration.Completed || m.State == migration.Failed || m.State == migration.Cancelled
}

// keepDrawing keeps the view live until ctx ends (--keep).
func (v *view) keepDrawing(ctx context.Context, cl *api.Client) {
	for sleep(ctx, frameEvery) {
		_, _ = v.frame(ctx, cl)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
