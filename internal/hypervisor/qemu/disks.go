package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Local disks move with the VM, as libvirt's non-shared-storage
// migration moves them: the destination creates an empty image of the
// same size in the driver's pool (DIR/disks) and serves it writable over
// NBD on a Unix socket (DIR/<id>.nbd) while it waits for the memory; the
// source mirrors each disk to it (blockdev-mirror, sync=full, through an
// NBD client node on the socket the migration agent forwards over its
// link), starts the memory migration only once every mirror is ready,
// with pause-before-switchover, and at that pause completes the mirrors
// (block-job-cancel of a ready mirror finishes it with the target in
// step) before QEMU sends the device state. The source's image stays
// where it was (stale once the destination runs; the operator's to
// remove).
//
// The source's progress through these phases is kept in DIR/<id>.mirror
// and advanced by MigrationStatus, which the migration agent polls: no
// goroutine of the driver's, and an agent that restarts carries on.

// diskNode is disk i's block node name, the same at both ends (the NBD
// export's name too).
func diskNode(i int) string { return "disk" + strconv.Itoa(i) }

func mirrorNode(i int) string { return "ferry-mirror-" + diskNode(i) }

// localDisks are the indexes of s's disks that are not on shared storage.
func localDisks(s hypervisor.Spec) []int {
	var out []int
	for i, dk := range s.Disks {
		if !dk.Shared {
			out = append(out, i)
		}
	}
	return out
}

func diskFormat(dk hypervisor.Disk) string {
	if dk.Format == "" {
		return "qcow2"
	}
	return dk.Format
}

// imageSize is the virtual size of an image (qemu-img info).
func imageSize(ctx context.Context, path, format string) (uint64, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", "-f", format, path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return 0, fmt.Errorf("qemu: qemu-img info %s: %w", path, err)
	}
	var info struct {
		VirtualSize uint64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize == 0 {
		return 0, fmt.Errorf("qemu: qemu-img info %s: no virtual size (%v)", path, err)
	}
	return info.VirtualSize, nil
}

// fillSizes records the virtual size of each of s's disks.
func fillSizes(ctx context.Context, s *hypervisor.Spec) error {
	for i := range s.Disks {
		n, err := imageSize(ctx, s.Disks[i].Path, diskFormat(s.Disks[i]))
		if err != nil {
			return err
		}
		s.Disks[i].Size = n
	}
	return nil
}

// createdPath lists the images the driver created for incoming VM id:
// removed if the migration is rolled back, kept once the VM is resumed.
func (d *Driver) createdPath(id string) string { return d.path(id, "created") }

// prepareDisks creates an empty image in the pool for each local disk of
// incoming s, and points s at them.
func (d *Driver) prepareDisks(ctx context.Context, s *hypervisor.Spec) error {
	local := localDisks(*s)
	if len(local) == 0 {
		return nil
	}
	pool := filepath.Join(d.Dir, "disks")
	if err := os.MkdirAll(pool, 0o700); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	created := map[string]bool{}
	if b, err := os.ReadFile(d.createdPath(s.Name)); err == nil {
		for _, p := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			created[p] = true
		}
	}
	var paths []string
	for _, i := range local {
		dk := &s.Disks[i]
		if dk.Size == 0 {
			return fmt.Errorf("qemu: disk %d of %s: size unknown (the source's driver records it when it creates the VM)", i, s.Name)
		}
		p := filepath.Join(pool, fmt.Sprintf("%s-%s.%s", s.Name, diskNode(i), diskFormat(*dk)))
		if _, err := os.Stat(p); err == nil && !created[p] {
			return fmt.Errorf("qemu: %s exists and is not a leftover of an earlier attempt: not overwriting it", p)
		}
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", diskFormat(*dk), p, strconv.FormatUint(dk.Size, 10)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("qemu: qemu-img create %s: %w: %s", p, err, strings.TrimSpace(string(out)))
		}
		paths = append(paths, p)
		if err := os.WriteFile(d.createdPath(s.Name), []byte(strings.Join(paths, "\n")+"\n"), 0o600); err != nil {
			return fmt.Errorf("qemu: %w", err)
		}
		dk.Path = p
	}
	return nil
}

// removeCreated deletes the images created for incoming VM id (a
// migration that did not commit).
func (d *Driver) removeCreated(id string) error {
	b, err := os.ReadFile(d.createdPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	var errs []error
	for _, p := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if p != "" {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := os.Remove(d.createdPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// exportDisks serves incoming VM id's local disks, writable, over NBD.
func (d *Driver) exportDisks(ctx context.Context, id string, s hypervisor.Spec) error {
	local := localDisks(s)
	if len(local) == 0 {
		return nil
	}
	sock := d.path(id, "nbd")
	_ = os.Remove(sock)
	return d.qmp(ctx, id, func(q *qmpConn) error {
		addr := map[string]any{"type": "unix", "data": map[string]any{"path": sock}}
		if err := q.run("nbd-server-start", map[string]any{"addr": addr}, nil, nil); err != nil {
			return err
		}
		for _, i := range local {
			args := map[string]any{"type": "nbd", "id": "export-" + diskNode(i), "node-name": diskNode(i), "name": diskNode(i), "writable": true}
			if err := q.run("block-export-add", args, nil, nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// stopExports ends an incoming VM's NBD service (at its commit) and keeps
// its disks: they are the VM's now.
func (d *Driver) stopExports(ctx context.Context, id string) error {
	if _, err := os.Stat(d.path(id, "nbd")); err != nil {
		return nil
	}
	s, err := d.spec(id)
	if err != nil {
		return err
	}
	err = d.qmp(ctx, id, func(q *qmpConn) error {
		for _, i := range localDisks(s) {
			_ = q.run("block-export-del", map[string]any{"id": "export-" + diskNode(i)}, nil, nil)
		}
		return q.run("nbd-server-stop", nil, nil, nil)
	})
	var qe *QMPError
	if err != nil && !errors.As(err, &qe) {
		return err
	}
	_ = os.Remove(d.path(id, "nbd"))
	if err := os.Remove(d.createdPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// IncomingDiskSocket implements hypervisor.DiskMover.
func (d *Driver) IncomingDiskSocket(id string) string {
	p := d.path(id, "nbd")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// MovesDisks implements hypervisor.DiskMover.
func (d *Driver) MovesDisks(id string) bool {
	s, err := d.spec(id)
	return err == nil && len(localDisks(s)) > 0
}

// mirrorState is the source's progress through a migration with disks.
type mirrorState struct {
	Phase string `json:"phase"` // mirror, memory, done, failed, cancelled
	Error string `json:"error,omitempty"`
}

const (
	phaseMirror    = "mirror"    // disks copying; the memory migration not started
	phaseMemory    = "memory"    // memory migrating; mirrors in step
	phaseDone      = "done"      // mirrors completed at the switch-over (or torn down)
	phaseFailed    = "failed"    // a mirror failed before the memory started
	phaseCancelled = "cancelled" // cancelled before the memory started
)

func (d *Driver) mirrorState(id string) (mirrorState, bool) {
	var m mirrorState
	b, err := os.ReadFile(d.path(id, "mirror"))
	if err != nil || json.Unmarshal(b, &m) != nil {
		return m, false
	}
	return m, true
}

func (d *Driver) setMirrorState(id string, m mirrorState) error {
	b, _ := json.Marshal(m)
	if err := os.WriteFile(d.path(id, "mirror"), b, 0o600); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// MigrateOutDisks implements hypervisor.DiskMover: the mirrors start now,
// the memory migration once they are ready (MigrationStatus).
func (d *Driver) MigrateOutDisks(ctx context.Context, id string, p hypervisor.MigrationParams, diskSocket string) (net.Conn, error) {
	s, err := d.spec(id)
	if err != nil {
		return nil, err
	}
	local := localDisks(s)
	if len(local) == 0 {
		return d.MigrateOut(ctx, id, p)
	}
	p.Postcopy = false // see postcopy.go
	p.Channels = 0     // one stream when disks are copied (multifd.go)
	caps, params := migrationSettings(p)
	caps = append(caps, map[string]any{"capability": "pause-before-switchover", "state": true})
	vmEnd, maEnd, err := hypervisor.StreamPair()
	if err != nil {
		return nil, err
	}
	defer vmEnd.Close()
	err = d.qmp(ctx, id, func(q *qmpConn) error {
		if err := d.arm(q, id, caps, params, vmEnd); err != nil {
			return err
		}
		if err := d.savePlan(id, p); err != nil {
			return err
		}
		for _, i := range local {
			_ = q.run("blockdev-del", map[string]any{"node-name": mirrorNode(i)}, nil, nil) // an earlier attempt's
			node := map[string]any{"node-name": mirrorNode(i), "driver": "nbd", "export": diskNode(i),
				"server": map[string]any{"type": "unix", "path": diskSocket}}
			if err := q.run("blockdev-add", node, nil, nil); err != nil {
				return err
			}
			job := map[string]any{"job-id": mirrorNode(i), "device": diskNode(i), "target": mirrorNode(i), "sync": "full"}
			if err := q.run("blockdev-mirror", job, nil, nil); err != nil {
				return err
			}
		}
		start := strconv.FormatInt(time.Now().UnixNano(), 10)
		if err := os.WriteFile(d.path(id, "migstart"), []byte(start), 0o600); err != nil {
			return fmt.Errorf("qemu: %w", err)
		}
		return d.setMirrorState(id, mirrorState{Phase: phaseMirror})
	})
	if err != nil {
		maEnd.Close()
		_ = d.qmp(context.WithoutCancel(ctx), id, func(q *qmpConn) error { return d.dropMirrors(q, local, true) })
		_ = os.Remove(d.path(id, "mirror"))
		return nil, err
	}
	return maEnd, nil
}

// blockJob is the part of query-block-jobs Ferry reads.
type blockJob struct {
	Device string `json:"device"`
	Len    uint64 `json:"len"`
	Offset uint64 `json:"offset"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// mirrorJobs returns VM id's mirror jobs by disk index.
func mirrorJobs(q *qmpConn, local []int) (map[int]blockJob, error) {
	var jobs []blockJob
	if err := q.run("query-block-jobs", nil, &jobs, nil); err != nil {
		return nil, err
	}
	out := map[int]blockJob{}
	for _, i := range local {
		for _, j := range jobs {
			if j.Device == mirrorNode(i) {
				out[i] = j
			}
		}
	}
	return out, nil
}

// dropMirrors cancels the mirror jobs (force: abandon the copy; else a
// ready mirror completes, its target in step) and waits up to 30 s for
// them to end, then removes the NBD client nodes.
func (d *Driver) dropMirrors(q *qmpConn, local []int, force bool) error {
	for _, i := range local {
		_ = q.run("block-job-cancel", map[string]any{"device": mirrorNode(i), "force": force}, nil, nil)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		jobs, err := mirrorJobs(q, local)
		if err != nil {
			return err
		}
		if len(jobs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu: mirror jobs still running 30 s after block-job-cancel: %v", jobs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, i := range local {
		_ = q.run("blockdev-del", map[string]any{"node-name": mirrorNode(i)}, nil, nil)
	}
	return nil
}

// advanceDisks moves a source with disks through its phases; it reports
// the disk copy's progress (and outcome) while the memory has not
// started, ok=false once the memory migration is what to report.
func (d *Driver) advanceDisks(ctx context.Context, id string, s hypervisor.Spec, m mirrorState) (st hypervisor.MigrationStatus, report bool, err error) {
	local := localDisks(s)
	switch m.Phase {
	case phaseFailed:
		return hypervisor.MigrationStatus{State: hypervisor.MigFailed, Error: m.Error, Total: s.Memory}, true, nil
	case phaseCancelled:
		return hypervisor.MigrationStatus{State: hypervisor.MigCancelled, Total: s.Memory}, true, nil
	case phaseDone:
		return st, false, nil
	}
	err = d.qmp(ctx, id, func(q *qmpConn) error {
		jobs, err := mirrorJobs(q, local)
		if err != nil {
			return err
		}
		switch m.Phase {
		case phaseMirror:
			report = true
			st = hypervisor.MigrationStatus{State: hypervisor.MigActive, Total: s.Memory, Remaining: s.Memory}
			ready := 0
			for _, i := range local {
				j, ok := jobs[i]
				if !ok || j.Error != "" || j.Status == "concluded" || j.Status == "aborting" {
					why := fmt.Sprintf("mirroring %s failed", diskNode(i))
					if j.Error != "" {
						why += ": " + j.Error
					}
					_ = d.dropMirrors(q, local, true)
					_ = q.run("closefd", map[string]any{"fdname": migrationFD}, nil, nil)
					st.State, st.Error = hypervisor.MigFailed, why
					return d.setMirrorState(id, mirrorState{Phase: phaseFailed, Error: why})
				}
				st.Total += j.Len
				st.Remaining += j.Len - min(j.Offset, j.Len)
				st.Transferred += j.Offset
				if j.Ready {
					ready++
				}
			}
			if ready < len(local) {
				return nil
			}
			// Every disk is in step: now the memory. QEMU's times
			// count from this command.
			start := strconv.FormatInt(time.Now().UnixNano(), 10)
			if err := os.WriteFile(d.path(id, "migstart"), []byte(start), 0o600); err != nil {
				return fmt.Errorf("qemu: %w", err)
			}
			if err := q.run("migrate", map[string]any{"uri": "fd:" + migrationFD}, nil, nil); err != nil {
				return err
			}
			return d.setMirrorState(id, mirrorState{Phase: phaseMemory})
		case phaseMemory:
			var mi migrateInfo
			if err := q.run("query-migrate", nil, &mi, nil); err != nil {
				return err
			}
			switch {
			case mi.Status == "pre-switchover":
				// The guest is paused: finish the mirrors (their
				// targets in step), then let QEMU send the devices.
				if err := d.dropMirrors(q, local, false); err != nil {
					return err
				}
				if err := q.run("migrate-continue", map[string]any{"state": "pre-switchover"}, nil, nil); err != nil {
					return err
				}
				return d.setMirrorState(id, mirrorState{Phase: phaseDone})
			case !active(mi.Status):
				// Failed or cancelled: QEMU resumed the guest; the
				// mirrors go.
				_ = d.dropMirrors(q, local, true)
				return d.setMirrorState(id, mirrorState{Phase: phaseDone})
			}
		}
		return nil
	})
	return st, report, err
}

// cancelDisks cancels a migration still copying its disks.
func (d *Driver) cancelDisks(ctx context.Context, id string) (bool, error) {
	m, ok := d.mirrorState(id)
	if !ok || m.Phase != phaseMirror {
		return false, nil
	}
	s, err := d.spec(id)
	if err != nil {
		return true, err
	}
	return true, d.qmp(ctx, id, func(q *qmpConn) error {
		if err := d.dropMirrors(q, localDisks(s), true); err != nil {
			return err
		}
		_ = q.run("closefd", map[string]any{"fdname": migrationFD}, nil, nil)
		return d.setMirrorState(id, mirrorState{Phase: phaseCancelled})
	})
}
