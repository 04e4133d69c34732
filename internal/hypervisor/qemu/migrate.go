package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Tunnelled live migration: QEMU reads or writes its migration stream on
// one end of a socket pair, handed over the monitor with getfd and named
// in an fd: URI; the driver returns the other end to the migration agent,
// which carries the bytes (both ways: post-copy page requests and the
// return path flow back) over its SUDP stream to the peer agent.
//
// QEMU's behaviour matches hypervisor.Migrator's contract: a source that
// completed stays paused (postmigrate) until it is destroyed or resumed
// (cont); a failed or cancelled source resumes by itself if it was
// running; an incoming QEMU started with -S stays paused after the image
// loaded, and exits if the incoming stream fails or is cancelled — which
// MigrationStatus reports as a failed migration.

// migrationFD is the name the stream's descriptor gets in QEMU.
const migrationFD = "ferry-migration"

// unlimitedBandwidth stands for "no cap": QEMU's default max-bandwidth is
// 128 MiB/s, which would cap a fast link.
const unlimitedBandwidth = 1 << 40

// MigrateOut implements hypervisor.Migrator.
func (d *Driver) MigrateOut(ctx context.Context, id string, p hypervisor.MigrationParams) (net.Conn, error) {
	if p.Channels > 0 {
		return d.migrateOutMultifd(ctx, id, p)
	}
	caps, params := migrationSettings(p)
	vmEnd, maEnd, err := hypervisor.StreamPair()
	if err != nil {
		return nil, err
	}
	defer vmEnd.Close() // QEMU holds its own copy once getfd returned
	err = d.qmp(ctx, id, func(q *qmpConn) error {
		if err := d.arm(q, id, caps, params, vmEnd); err != nil {
			return err
		}
		return d.launch(q, id, p, "fd:"+migrationFD)
	})
	if err != nil {
		maEnd.Close()
		return nil, err
	}
	return maEnd, nil
}

// migrationSettings are QEMU's capabilities and parameters for p.
func migrationSettings(p hypervisor.MigrationParams) (caps []map[string]any, params map[string]any) {
	downtime := p.DowntimeLimit
	if downtime <= 0 {
		downtime = hypervisor.DefaultDowntimeLimit
	}
	bw := int64(p.MaxBandwidth)
	if bw <= 0 {
		bw = unlimitedBandwidth
	}
	caps = []map[string]any{
		{"capability": "auto-converge", "state": p.AutoConverge},
		// XBZRLE sends the delta of a page that was sent before: what
		// helps a slow link when the guest rewrites the same pages.
		{"capability": "xbzrle", "state": p.Compress},
		{"capability": "pause-before-switchover", "state": false},
		{"capability": "postcopy-ram", "state": p.Postcopy},
		{"capability": "multifd", "state": p.Channels > 0},
	}
	params = map[string]any{
		"max-bandwidth": bw,
		// QEMU caps post-copy separately (unlimited by default): the
		// operator's cap is for the whole migration.
		"max-postcopy-bandwidth": bw,
		"downtime-limit":         max(downtime.Milliseconds(), 1),
		"cpu-throttle-initial":   20,
		"cpu-throttle-increment": 20,
		"max-cpu-throttle":       99,
	}
	if p.Channels > 0 {
		maps.Copy(params, multifdParams(p.Channels))
	}
	return caps, params
}

// SetMaxBandwidth implements hypervisor.BandwidthSetter: QEMU applies a
// new max-bandwidth (and the post-copy cap with it) at once.
func (d *Driver) SetMaxBandwidth(ctx context.Context, id string, bytesPerSec float64) error {
	bw := int64(bytesPerSec)
	if bw <= 0 {
		bw = unlimitedBandwidth
	}
	return d.run(ctx, id, "migrate-set-parameters", map[string]any{"max-bandwidth": bw, "max-postcopy-bandwidth": bw}, nil)
}

// SetDowntimeLimit changes a running migration's downtime-limit (QEMU
// reads it at every pass's end).
func (d *Driver) SetDowntimeLimit(ctx context.Context, id string, limit time.Duration) error {
	return d.run(ctx, id, "migrate-set-parameters", map[string]any{"downtime-limit": max(limit.Milliseconds(), 1)}, nil)
}

// arm readies VM id for an outgoing migration on vmEnd: not migrating
// already, capabilities and parameters set, the descriptor handed over
// (getfd) under migrationFD (vmEnd nil: a migration to a socket URI).
func (d *Driver) arm(q *qmpConn, id string, caps []map[string]any, params map[string]any, vmEnd *os.File) error {
	if err := d.checkIdle(q, id); err != nil {
		return err
	}
	if err := q.run("migrate-set-capabilities", map[string]any{"capabilities": caps}, nil, nil); err != nil {
		return err
	}
	if err := q.run("migrate-set-parameters", params, nil, nil); err != nil {
		return err
	}
	if vmEnd == nil {
		return nil
	}
	_ = q.run("closefd", map[string]any{"fdname": migrationFD}, nil, nil) // left by an earlier attempt
	return q.run("getfd", map[string]any{"fdname": migrationFD}, nil, vmEnd)
}

// launch starts VM id's armed outgoing migration to uri, keeping its plan
// and start.
func (d *Driver) launch(q *qmpConn, id string, p hypervisor.MigrationParams, uri string) error {
	if err := d.savePlan(id, p); err != nil {
		return err
	}
	// QEMU reports durations, not times: the start is ours to keep (in
	// a file, for an agent that restarts meanwhile).
	start := strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := os.WriteFile(d.path(id, "migstart"), []byte(start), 0o600); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return q.run("migrate", map[string]any{"uri": uri}, nil, nil)
}

// checkIdle refuses a VM that is migrating already, and forgets the
// disk phases of an earlier migration.
func (d *Driver) checkIdle(q *qmpConn, id string) error {
	var mi migrateInfo
	if err := q.run("query-migrate", nil, &mi, nil); err != nil {
		return err
	}
	if m, ok := d.mirrorState(id); (ok && m.Phase == phaseMirror) || active(mi.Status) {
		return fmt.Errorf("qemu: VM %s is already migrating (%s)", id, firstNonEmpty(mi.Status, "copying its disks"))
	}
	_ = os.Remove(d.path(id, "mirror"))
	return nil
}

// PrepareIncoming implements hypervisor.Migrator: QEMU started from s with
// -incoming defer -S, then given the stream with migrate-incoming.
func (d *Driver) PrepareIncoming(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, net.Conn, error) {
	if err := d.prepareDisks(ctx, &s); err != nil {
		_ = d.removeCreated(s.Name)
		return hypervisor.VM{}, nil, err
	}
	vm, err := d.start(ctx, s, true)
	if err != nil {
		_ = d.removeCreated(s.Name)
		return hypervisor.VM{}, nil, err
	}
	if err := d.exportDisks(ctx, vm.ID, s); err != nil {
		if derr := d.Destroy(context.WithoutCancel(ctx), vm.ID); derr != nil {
			err = errors.Join(err, derr)
		}
		return hypervisor.VM{}, nil, err
	}
	vmEnd, maEnd, err := hypervisor.StreamPair()
	if err == nil {
		err = d.qmp(ctx, vm.ID, func(q *qmpConn) error {
			// Post-copy needs the capability at both ends; whether the
			// source uses it is its parameters' choice.
			// A host where QEMU cannot do post-copy (no userfaultfd for
			// it: unprivileged QEMU, a seccomp profile) refuses the
			// capability; pre-copy must still work there, so that is not
			// an error (a source that asks for post-copy then fails at
			// the start, its guest running on).
			postcopy := []map[string]any{{"capability": "postcopy-ram", "state": len(localDisks(s)) == 0}}
			_ = q.run("migrate-set-capabilities", map[string]any{"capabilities": postcopy}, nil, nil)
			if err := q.run("getfd", map[string]any{"fdname": migrationFD}, nil, vmEnd); err != nil {
				return err
			}
			return q.run("migrate-incoming", map[string]any{"uri": "fd:" + migrationFD}, nil, nil)
		})
		vmEnd.Close()
	}
	if err != nil {
		if maEnd != nil {
			maEnd.Close()
		}
		if derr := d.Destroy(context.WithoutCancel(ctx), vm.ID); derr != nil {
			err = errors.Join(err, derr)
		}
		return hypervisor.VM{}, nil, err
	}
	vm.State = hypervisor.StateMigrating
	return vm, maEnd, nil
}

// migrateInfo is the part of query-migrate's answer Ferry reads (QEMU 7.2
// field names; unknown fields and states are ignored, not refused).
type migrateInfo struct {
	Status    string `json:"status"`
	TotalTime int64  `json:"total-time"` // ms since the start (frozen at the end)
	Downtime  int64  `json:"downtime"`   // ms the guest was stopped (completed)
	Expected  int64  `json:"expected-downtime"`
	ErrorDesc string `json:"error-desc"`
	Throttle  int    `json:"cpu-throttle-percentage"`
	RAM       *struct {
		Transferred  uint64  `json:"transferred"`
		Remaining    uint64  `json:"remaining"`
		Total        uint64  `json:"total"`
		Duplicate    uint64  `json:"duplicate"` // zero pages
		DirtyRate    float64 `json:"dirty-pages-rate"`
		PageSize     uint64  `json:"page-size"`
		Mbps         float64 `json:"mbps"`
		DirtySyncs   int     `json:"dirty-sync-count"`
		PostcopyReqs uint64  `json:"postcopy-requests"`
	} `json:"ram"`
}

func active(s string) bool {
	switch s {
	case "setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover",
		"pre-switchover", "device", "wait-unplug", "cancelling":
		return true
	}
	return false
}

// MigrationStatus implements hypervisor.Migrator.
func (d *Driver) MigrationStatus(ctx context.Context, id string) (hypervisor.MigrationStatus, error) {
	var st hypervisor.MigrationStatus
	s, err := d.spec(id)
	if err != nil {
		return st, err
	}
	if m, ok := d.mirrorState(id); ok {
		dst, report, err := d.advanceDisks(ctx, id, s, m)
		if err != nil || report {
			if dst.Started.IsZero() {
				dst.Started = d.migrationStart(id)
			}
			return dst, err
		}
	}
	var mi migrateInfo
	var run status
	now := time.Now()
	err = d.qmp(ctx, id, func(q *qmpConn) error {
		if err := q.run("query-migrate", nil, &mi, nil); err != nil {
			return err
		}
		return q.run("query-status", nil, &run, nil)
	})
	if err != nil {
		if d.pid(id) == 0 {
			// An incoming QEMU exits when its stream fails.
			st.State, st.Error = hypervisor.MigFailed, "QEMU exited: "+lastLine(tail(d.path(id, "log")))
			return st, nil
		}
		return st, err
	}
	st.Total = s.Memory
	st.Started = d.migrationStart(id)
	if st.Started.IsZero() && mi.TotalTime > 0 && active(mi.Status) {
		st.Started = now.Add(-time.Duration(mi.TotalTime) * time.Millisecond)
	}
	if r := mi.RAM; r != nil {
		st.Total, st.Remaining, st.Transferred = r.Total, r.Remaining, r.Transferred
		st.StreamBytes, st.ZeroPages = r.Transferred, r.Duplicate
		st.Round = r.DirtySyncs
		st.DirtyRate = r.DirtyRate * float64(max(r.PageSize, pageSize))
		st.Rate = r.Mbps * 1e6 / 8
	}
	st.ExpectedDowntime = expectedDowntime(st.Remaining, st.Rate, mi.Expected)
	st.Throttle = float64(mi.Throttle) / 100
	pc := d.postcopyAt(id)
	switched, forget := postcopyOutcome(mi.Status, run.Status, !pc.IsZero())
	if switched {
		st.Postcopy, st.PausedAt = hypervisor.PostcopyActive, pc
	}
	if forget {
		if err := os.Remove(d.path(id, "postcopy")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return st, fmt.Errorf("qemu: %w", err)
		}
	}
	switch {
	case active(mi.Status):
		st.State = hypervisor.MigActive
		if err := d.converge(ctx, id, mi, &st); err != nil {
			return st, err
		}
	case mi.Status == "completed":
		st.State = hypervisor.MigCompleted
		if mi.RAM == nil {
			// The destination (its query-migrate has no RAM figures):
			// QEMU loaded every section of the stream. QEMU's stream has
			// no per-page checksums; its bytes were authenticated by
			// SUDP on the way and crossed only a local socket pair at
			// either end.
			st.Verified = true
		}
		if mi.TotalTime > 0 && !st.Started.IsZero() {
			st.Finished = st.Started.Add(time.Duration(mi.TotalTime) * time.Millisecond)
			if mi.Downtime > 0 && st.PausedAt.IsZero() {
				st.PausedAt = st.Finished.Add(-time.Duration(mi.Downtime) * time.Millisecond)
			}
		}
	case mi.Status == "failed":
		st.State, st.Error = hypervisor.MigFailed, firstNonEmpty(mi.ErrorDesc, "failed")
	case mi.Status == "cancelled":
		st.State = hypervisor.MigCancelled
		if why := d.abortReason(id); why != "" {
			st.State, st.Error = hypervisor.MigFailed, why
		}
	case run.Status == "inmigrate":
		st.State = hypervisor.MigActive // incoming, not started yet
	}
	return st, nil
}

// migrationStart is when the driver started VM id's outgoing migration
// (zero if unknown).
func (d *Driver) migrationStart(id string) time.Time {
	if b, err := os.ReadFile(d.path(id, "migstart")); err == nil {
		if ns, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			return time.Unix(0, ns)
		}
	}
	return time.Time{}
}

// CancelMigration implements hypervisor.Migrator: migrate_cancel, then
// wait (up to 30 s) until QEMU says the migration ended.
func (d *Driver) CancelMigration(ctx context.Context, id string) error {
	if done, err := d.cancelDisks(ctx, id); done || err != nil {
		return err
	}
	if err := d.run(ctx, id, "migrate_cancel", nil, nil); err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		var mi migrateInfo
		if err := d.run(ctx, id, "query-migrate", nil, &mi); err != nil {
			return err
		}
		if !active(mi.Status) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu: VM %s: migration still %s 30 s after migrate_cancel", id, mi.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// expectedDowntime is what hypervisor.MigrationStatus means by it: the
// remaining memory at the current rate, the pause a stop-and-copy now would
// take. QEMU's own expected-downtime is the dirty rate over the bandwidth,
// near zero during the first pass: taken as is it told the agent the
// switch-over was due from the start (it then polled QEMU every 20 ms for
// the whole migration) and showed operators a meaningless figure. QEMU's
// figure (ms) stands in only before a rate is known.
func expectedDowntime(remaining uint64, rate float64, qemuMS int64) time.Duration {
	if rate > 0 {
		return hypervisor.ExpectedDowntime(remaining, rate)
	}
	return time.Duration(qemuMS) * time.Millisecond
}
