// Package sim is the built-in simulated hypervisor driver: every VM is a
// `ferry simvm` process (package simvm) started detached in its own
// session, with its spec and control socket in the driver's state
// directory. The driver keeps no other state, so an agent that restarts
// re-adopts its running VMs by reading that directory.
package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/simvm"
)

// Driver manages simulated VMs under Dir.
type Driver struct {
	Dir string // state directory: <id>.json (spec), <id>.sock, <id>.log
	Bin string // the ferry binary that runs `simvm` (default: this executable)
}

var (
	_ hypervisor.Driver          = (*Driver)(nil)
	_ hypervisor.Migrator        = (*Driver)(nil)
	_ hypervisor.BandwidthSetter = (*Driver)(nil)
)

// New returns a driver using dir (created 0700).
func New(dir, bin string) (*Driver, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		bin = exe
	}
	return &Driver{Dir: dir, Bin: bin}, nil
}

// Name implements hypervisor.Driver.
func (d *Driver) Name() string { return "sim" }

func (d *Driver) specPath(id string) string { return filepath.Join(d.Dir, id+".json") }
func (d *Driver) sockPath(id string) string { return filepath.Join(d.Dir, id+".sock") }

// Create starts a VM process named s.Name (the name is the id).
func (d *Driver) Create(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, error) {
	return d.start(ctx, s, false)
}

// start starts a VM process; an incoming one waits, paused and empty, for
// a migration stream.
func (d *Driver) start(ctx context.Context, s hypervisor.Spec, incoming bool) (hypervisor.VM, error) {
	if err := hypervisor.CheckName(s.Name); err != nil {
		return hypervisor.VM{}, err
	}
	if s.Memory < simvm.PageSize {
		return hypervisor.VM{}, fmt.Errorf("sim: memory %d bytes is too small", s.Memory)
	}
	if s.VCPUs <= 0 {
		s.VCPUs = 1
	}
	id := s.Name
	if _, err := os.Stat(d.specPath(id)); err == nil {
		return hypervisor.VM{}, fmt.Errorf("sim: VM %s already exists", id)
	}
	spec, _ := json.Marshal(s)
	if err := os.WriteFile(d.specPath(id), spec, 0o600); err != nil {
		return hypervisor.VM{}, fmt.Errorf("sim: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(d.Dir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("sim: %w", err)
	}
	defer logf.Close()
	w, _ := json.Marshal(s.Workload)
	args := []string{"simvm", "--id", id, "--name", s.Name, "--memory", strconv.FormatUint(s.Memory, 10),
		"--vcpus", strconv.Itoa(s.VCPUs), "--socket", d.sockPath(id), "--workload-json", string(w)}
	if incoming {
		args = append(args, "--incoming")
	}
	cmd := exec.Command(d.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: the VM outlives the agent that started it, as a
	// QEMU process outlives a crashed libvirtd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(d.specPath(id))
		return hypervisor.VM{}, fmt.Errorf("sim: start VM %s: %w", id, err)
	}
	go cmd.Wait() // reap it if it exits while we run; after our exit, init does
	// Up to a minute: a VM whose workload fills gigabytes of memory at
	// boot takes seconds before it serves its socket.
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := simvm.Call(ctx, d.sockPath(id), simvm.Request{Op: "status"})
		if err == nil {
			return *resp.VM, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = cmd.Process.Kill()
			os.Remove(d.specPath(id))
			return hypervisor.VM{}, fmt.Errorf("sim: VM %s did not come up: %v", id, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// List returns every VM in the state directory; one whose process is gone
// is reported stopped.
func (d *Driver) List(ctx context.Context) ([]hypervisor.VM, error) {
	entries, err := os.ReadDir(d.Dir)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	var out []hypervisor.VM
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		resp, err := simvm.Call(ctx, d.sockPath(id), simvm.Request{Op: "status"})
		if err == nil {
			out = append(out, *resp.VM)
			continue
		}
		if ctx.Err() != nil {
			// Cancelled, not an answer: a VM that was not asked is not
			// stopped (the agent raises an alarm for a stopped VM).
			return nil, fmt.Errorf("sim: listing VMs: %w", ctx.Err())
		}
		var s hypervisor.Spec
		if b, err := os.ReadFile(d.specPath(id)); err == nil && json.Unmarshal(b, &s) == nil {
			out = append(out, hypervisor.VM{ID: id, Name: s.Name, State: hypervisor.StateStopped, VCPUs: s.VCPUs, Memory: s.Memory})
		}
	}
	return out, nil
}

func (d *Driver) call(ctx context.Context, id string, req simvm.Request) (simvm.Response, error) {
	return d.callFD(ctx, id, req, nil)
}

// callFD sends req to VM id with descriptor f attached (if not nil).
func (d *Driver) callFD(ctx context.Context, id string, req simvm.Request, f *os.File) (simvm.Response, error) {
	if hypervisor.CheckName(id) != nil {
		return simvm.Response{}, hypervisor.ErrNotFound
	}
	if _, err := os.Stat(d.specPath(id)); errors.Is(err, fs.ErrNotExist) {
		return simvm.Response{}, fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	return simvm.CallFD(ctx, d.sockPath(id), req, f)
}

// Stats implements hypervisor.Driver.
func (d *Driver) Stats(ctx context.Context, id string) (hypervisor.Stats, error) {
	resp, err := d.call(ctx, id, simvm.Request{Op: "status"})
	if err != nil {
		return hypervisor.Stats{}, err
	}
	return *resp.Stats, nil
}

// SetWorkload implements hypervisor.Driver.
func (d *Driver) SetWorkload(ctx context.Context, id string, w hypervisor.Workload) error {
	_, err := d.call(ctx, id, simvm.Request{Op: "set-workload", Workload: &w})
	return err
}

// Pause implements hypervisor.Driver.
func (d *Driver) Pause(ctx context.Context, id string) error {
	_, err := d.call(ctx, id, simvm.Request{Op: "pause"})
	return err
}

// Resume implements hypervisor.Driver.
func (d *Driver) Resume(ctx context.Context, id string) error {
	_, err := d.call(ctx, id, simvm.Request{Op: "resume"})
	return err
}

// Destroy stops the VM process (asking first, then killing it) and removes
// its files.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	resp, err := d.call(ctx, id, simvm.Request{Op: "status"})
	if errors.Is(err, hypervisor.ErrNotFound) {
		return err
	}
	if err == nil {
		pid := resp.VM.PID
		_, _ = simvm.Call(ctx, d.sockPath(id), simvm.Request{Op: "shutdown"})
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, p := range []string{d.specPath(id), d.sockPath(id), filepath.Join(d.Dir, id+".log")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("sim: %w", err)
		}
	}
	return nil
}
