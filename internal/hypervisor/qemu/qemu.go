// Package qemu is the QEMU hypervisor driver: every VM is a
// qemu-system-x86_64 process started detached in its own session, driven
// over its QMP monitor socket. Like the simulated driver it keeps its
// state in files (the spec, the monitor socket, a pid file), so an agent
// that restarts re-adopts the VMs it started.
//
// Guests run under TCG unless the agent is told otherwise (--accel kvm,
// or auto where KVM works: ChooseAccel): the KVM of the machines Ferry is
// tested on is a nested flavour whose dirty-page tracking over-reports,
// which breaks live migration's convergence. CPU is QEMU's -cpu model
// ("" for QEMU's default); both ends of a migration must use the same.
package qemu

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
	"sync"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Driver manages QEMU VMs under Dir.
type Driver struct {
	Dir    string // <id>.json spec, .qmp monitor, .pid, .log, .kernel (test guest), .migstart, .mirror, .nbd, .created; disks/ (local disks received)
	Binary string // qemu-system-x86_64
	Accel  string // "tcg" (New's default) or "kvm"
	CPU    string // QEMU's -cpu model; "" for QEMU's default

	mu      sync.Mutex
	locks   map[string]chan struct{}    // one monitor session per VM at a time
	cpu     map[string]cpuSample        // the last CPU reading per VM, for rates
	multifd map[string]*multifdListener // an outgoing multifd migration's socket, until MigrateOut takes it
}

var (
	_ hypervisor.Driver          = (*Driver)(nil)
	_ hypervisor.Migrator        = (*Driver)(nil)
	_ hypervisor.BandwidthSetter = (*Driver)(nil)
	_ hypervisor.ChannelMover    = (*Driver)(nil)
	_ hypervisor.ChannelPreparer = (*Driver)(nil)
)

// New returns a driver using dir (created 0700) and the QEMU binary bin
// (default: qemu-system-x86_64 on PATH).
func New(dir, bin string) (*Driver, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("qemu: %s not found (Debian: apt-get install qemu-system-x86 qemu-utils): %w", bin, err)
	}
	return &Driver{Dir: dir, Binary: path, Accel: "tcg", locks: map[string]chan struct{}{}, cpu: map[string]cpuSample{},
		multifd: map[string]*multifdListener{}}, nil
}

// Name implements hypervisor.Driver.
func (d *Driver) Name() string { return "qemu" }

func (d *Driver) path(id, ext string) string { return filepath.Join(d.Dir, id+"."+ext) }

// Create implements hypervisor.Driver.
func (d *Driver) Create(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, error) {
	return d.start(ctx, s, false)
}

// start starts QEMU for s; an incoming VM waits, paused, for a migration
// stream (-incoming defer -S).
func (d *Driver) start(ctx context.Context, s hypervisor.Spec, incoming bool) (hypervisor.VM, error) {
	if err := hypervisor.CheckName(s.Name); err != nil {
		return hypervisor.VM{}, err
	}
	if s.VCPUs <= 0 {
		s.VCPUs = 1
	}
	id := s.Name
	if _, err := os.Stat(d.path(id, "json")); err == nil {
		return hypervisor.VM{}, fmt.Errorf("qemu: VM %s already exists", id)
	}
	if !incoming {
		if err := fillSizes(ctx, &s); err != nil {
			return hypervisor.VM{}, err
		}
	}
	args, err := d.args(s, incoming)
	if err != nil {
		return hypervisor.VM{}, err
	}
	spec, _ := json.Marshal(s)
	if err := os.WriteFile(d.path(id, "json"), spec, 0o600); err != nil {
		return hypervisor.VM{}, fmt.Errorf("qemu: %w", err)
	}
	fail := func(err error) (hypervisor.VM, error) {
		d.removeFiles(id)
		return hypervisor.VM{}, err
	}
	if s.Kernel == "" && !bootsDisk(s) {
		img, err := Layout(s).image()
		if err != nil {
			return fail(err)
		}
		if err := os.WriteFile(d.path(id, "kernel"), img, 0o600); err != nil {
			return fail(fmt.Errorf("qemu: %w", err))
		}
	}
	logf, err := os.OpenFile(d.path(id, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail(fmt.Errorf("qemu: %w", err))
	}
	defer logf.Close()
	_ = os.Remove(d.path(id, "qmp"))
	cmd := exec.Command(d.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: the VM outlives the agent that started it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("qemu: start VM %s: %w", id, err))
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reap it; after our exit, init does
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return fail(fmt.Errorf("qemu: VM %s exited at start (%v): %s", id, err, tail(d.path(id, "log"))))
		default:
		}
		if vm, err := d.vm(ctx, id); err == nil {
			return vm, nil
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			_ = cmd.Process.Kill()
			return fail(fmt.Errorf("qemu: VM %s did not come up: %v", id, err))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func bootsDisk(s hypervisor.Spec) bool {
	for _, dk := range s.Disks {
		if dk.Boot {
			return true
		}
	}
	return false
}

// args is QEMU's command line for s.
func (d *Driver) args(s hypervisor.Spec, incoming bool) ([]string, error) {
	if s.Memory < 16<<20 || s.Memory%(1<<20) != 0 {
		return nil, fmt.Errorf("qemu: memory must be a whole number of MiB, at least 16 MiB (got %d bytes)", s.Memory)
	}
	machine := s.Machine
	if machine == "" {
		machine = "pc"
	}
	if strings.ContainsAny(machine, ",=") {
		return nil, fmt.Errorf("qemu: machine type %q", machine)
	}
	id := s.Name
	a := []string{
		"-name", "guest=" + id,
		"-machine", machine + ",accel=" + d.Accel,
		"-m", strconv.FormatUint(s.Memory>>20, 10) + "M",
		"-smp", strconv.Itoa(s.VCPUs),
	}
	if d.CPU != "" {
		if err := CheckCPUModel(d.CPU); err != nil {
			return nil, err
		}
		a = append(a, "-cpu", d.CPU)
	}
	a = append(a,
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "none",
		"-qmp", "unix:"+d.path(id, "qmp")+",server=on,wait=off",
		"-pidfile", d.path(id, "pid"),
	)
	switch {
	case s.Kernel != "":
		a = append(a, "-kernel", s.Kernel)
	case !bootsDisk(s):
		a = append(a, "-kernel", d.path(id, "kernel"))
	}
	for i, dk := range s.Disks {
		f := diskFormat(dk)
		if f != "qcow2" && f != "raw" {
			return nil, fmt.Errorf("qemu: disk %d: format %q (qcow2 or raw)", i, f)
		}
		if !filepath.IsAbs(dk.Path) || strings.Contains(dk.Path, ",") {
			return nil, fmt.Errorf("qemu: disk %d: path %q must be absolute and without commas", i, dk.Path)
		}
		node := "disk" + strconv.Itoa(i)
		a = append(a, "-blockdev", fmt.Sprintf(`{"node-name":%q,"driver":%q,"file":{"driver":"file","filename":%q}}`, node, f, dk.Path),
			"-device", "virtio-blk-pci,drive="+node+",id=v"+node)
		if dk.Boot {
			a[len(a)-1] += ",bootindex=1"
		}
	}
	for i, n := range s.NICs {
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		if strings.ContainsAny(model+n.MAC+n.Tap, ",=") {
			return nil, fmt.Errorf("qemu: NIC %d: model, MAC and tap must not contain ',' or '='", i)
		}
		nd := "net" + strconv.Itoa(i)
		if n.Tap != "" {
			a = append(a, "-netdev", "tap,id="+nd+",ifname="+n.Tap+",script=no,downscript=no")
		} else {
			a = append(a, "-netdev", "user,id="+nd)
		}
		dev := model + ",netdev=" + nd + ",id=v" + nd
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		a = append(a, "-device", dev)
	}
	if incoming {
		a = append(a, "-incoming", "defer", "-S")
	}
	return a, nil
}

// lock serialises monitor sessions on VM id (QEMU serves one client per
// monitor socket at a time); a caller whose context ends while it waits
// gives up rather than queue behind a long command.
func (d *Driver) lock(ctx context.Context, id string) (unlock func(), err error) {
	d.mu.Lock()
	l := d.locks[id]
	if l == nil {
		l = make(chan struct{}, 1)
		d.locks[id] = l
	}
	d.mu.Unlock()
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("qemu: VM %s: monitor busy: %w", id, ctx.Err())
	}
}

// qmp runs fn on a monitor session with VM id.
func (d *Driver) qmp(ctx context.Context, id string, fn func(q *qmpConn) error) error {
	if hypervisor.CheckName(id) != nil {
		return hypervisor.ErrNotFound
	}
	if _, err := os.Stat(d.path(id, "json")); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	unlock, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	q, err := dialQMP(ctx, d.path(id, "qmp"))
	if err != nil {
		return err
	}
	defer q.Close()
	return fn(q)
}

// run runs one command on VM id.
func (d *Driver) run(ctx context.Context, id, cmd string, args, out any) error {
	return d.qmp(ctx, id, func(q *qmpConn) error { return q.run(cmd, args, out, nil) })
}

// status is query-status's answer.
type status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// vm describes VM id from its spec and query-status.
func (d *Driver) vm(ctx context.Context, id string) (hypervisor.VM, error) {
	s, err := d.spec(id)
	if err != nil {
		return hypervisor.VM{}, err
	}
	var st status
	if err := d.run(ctx, id, "query-status", nil, &st); err != nil {
		return hypervisor.VM{}, err
	}
	return hypervisor.VM{ID: id, Name: s.Name, State: stateOf(st.Status), VCPUs: s.VCPUs, Memory: s.Memory, PID: d.pid(id), Disks: s.Disks}, nil
}

// stateOf maps QEMU's run state to the CLI's.
func stateOf(s string) hypervisor.State {
	switch s {
	case "running":
		return hypervisor.StateRunning
	case "inmigrate", "finish-migrate", "postmigrate", "postcopy-paused":
		return hypervisor.StateMigrating
	case "shutdown", "guest-panicked", "internal-error", "io-error":
		return hypervisor.StateStopped
	}
	return hypervisor.StatePaused // paused, prelaunch, suspended, …
}

func (d *Driver) spec(id string) (hypervisor.Spec, error) {
	var s hypervisor.Spec
	b, err := os.ReadFile(d.path(id, "json"))
	if errors.Is(err, fs.ErrNotExist) {
		return s, fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	if err != nil {
		return s, fmt.Errorf("qemu: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("qemu: %s: %w", d.path(id, "json"), err)
	}
	return s, nil
}

// pid is VM id's QEMU process id if it is alive (0 if not).
func (d *Driver) pid(id string) int {
	b, err := os.ReadFile(d.path(id, "pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// List implements hypervisor.Driver: every VM in the state directory; one
// whose QEMU is gone or does not answer is reported stopped.
func (d *Driver) List(ctx context.Context) ([]hypervisor.VM, error) {
	entries, err := os.ReadDir(d.Dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	var out []hypervisor.VM
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || hypervisor.CheckName(id) != nil {
			continue
		}
		vm, err := d.vm(ctx, id)
		if err != nil && ctx.Err() != nil {
			// Cancelled, not an answer: a VM that was not asked is not
			// stopped (the agent raises an alarm for a stopped VM).
			return nil, fmt.Errorf("qemu: listing VMs: %w", ctx.Err())
		}
		if err != nil {
			s, serr := d.spec(id)
			if serr != nil {
				continue
			}
			vm = hypervisor.VM{ID: id, Name: s.Name, State: hypervisor.StateStopped, VCPUs: s.VCPUs, Memory: s.Memory}
		}
		out = append(out, vm)
	}
	return out, nil
}

// SetWorkload implements hypervisor.Driver: a real guest's load is its own.
func (d *Driver) SetWorkload(context.Context, string, hypervisor.Workload) error {
	return errors.New("qemu: a real VM's workload is set inside the guest, not by the driver")
}

// Pause implements hypervisor.Driver.
func (d *Driver) Pause(ctx context.Context, id string) error {
	return d.run(ctx, id, "stop", nil, nil)
}

// Resume implements hypervisor.Driver. An incoming VM's cont is refused
// by QEMU until its migration completed; a resumed incoming VM stops
// serving its disks and keeps them. A source that switched to post-copy
// is refused here, since QEMU would run it: its guest runs on at the
// destination.
func (d *Driver) Resume(ctx context.Context, id string) error {
	if !d.postcopyAt(id).IsZero() {
		return fmt.Errorf("qemu: VM %s handed its guest over in post-copy and can no longer run here", id)
	}
	if err := d.stopExports(ctx, id); err != nil {
		return err
	}
	return d.run(ctx, id, "cont", nil, nil)
}

// Destroy implements hypervisor.Driver: quit, then SIGKILL if QEMU is
// still there after 5 s; the VM's files go (its disks stay: they are the
// operator's).
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if _, err := d.spec(id); err != nil {
		return err
	}
	pid := d.pid(id)
	if pid != 0 {
		_ = d.run(ctx, id, "quit", nil, nil)
		for i := 0; i < 250 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	d.mu.Lock()
	delete(d.cpu, id)
	d.mu.Unlock()
	// An incoming VM that never ran: the images made for it go too.
	return errors.Join(d.removeCreated(id), d.removeFiles(id))
}

func (d *Driver) removeFiles(id string) error {
	var errs []error
	for _, ext := range []string{"json", "qmp", "pid", "log", "kernel", "migstart", "mirror", "nbd", "migplan", "postcopy", "migabort"} {
		if err := os.Remove(d.path(id, ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// tail is the end of a log file, for errors.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 500 {
		b = b[len(b)-500:]
	}
	return strings.TrimSpace(string(b))
}

// QMP runs one QMP command on VM id and decodes its "return" into out
// (unless nil): for operators and benchmarks that drive QEMU directly.
func (d *Driver) QMP(ctx context.Context, id, cmd string, args, out any) error {
	return d.run(ctx, id, cmd, args, out)
}

// QMPWithFile is QMP with f's descriptor passed alongside (getfd).
func (d *Driver) QMPWithFile(ctx context.Context, id, cmd string, args, out any, f *os.File) error {
	return d.qmp(ctx, id, func(q *qmpConn) error { return q.run(cmd, args, out, f) })
}

// CreateIncoming starts VM s waiting, paused, for a migration that the
// caller starts itself (migrate-incoming); PrepareIncoming is the
// tunnelled form.
func (d *Driver) CreateIncoming(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, error) {
	return d.start(ctx, s, true)
}

// ReadMemory reads n bytes of VM id's guest-physical memory at addr
// (pmemsave into a file of the driver's): for tests and operators.
func (d *Driver) ReadMemory(ctx context.Context, id string, addr, n uint64) ([]byte, error) {
	f, err := os.CreateTemp(d.Dir, id+".mem-*")
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	args := map[string]any{"val": addr, "size": n, "filename": name}
	if err := d.run(ctx, id, "pmemsave", args, nil); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if uint64(len(b)) != n {
		return nil, fmt.Errorf("qemu: pmemsave wrote %d bytes, want %d", len(b), n)
	}
	return b, nil
}
