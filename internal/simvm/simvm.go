// Package simvm is the simulated virtual machine: one process per VM (run
// as `ferry simvm`), shaped like a QEMU process so that the simulated driver
// exercises the same paths a real one will. It holds real memory that a
// real workload dirties (so migrated bytes can be checked), burns a
// scriptable share of CPU, accounts simulated network traffic, and is
// controlled over a local Unix socket with newline-delimited JSON — the
// way QEMU is driven over QMP. An agent can die and restart; its VMs keep
// running and are re-adopted through their sockets.
//
// Live migration happens inside the process, as QEMU's does: the `migrate`
// op carries a file descriptor (SCM_RIGHTS) that the VM writes its
// pre-copy stream to (migrate.go), and a VM started with Config.Incoming
// reads one from the descriptor of its `migrate-incoming` op
// (incoming.go). The stream format is in stream.go; memory and dirty
// tracking in dirty.go; the guest's workload in workload.go.
package simvm

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// PageSize is the simulated guest page.
const PageSize = 4096

// Config configures one VM process.
type Config struct {
	ID       string
	Name     string
	Memory   uint64
	VCPUs    int
	Socket   string
	Workload hypervisor.Workload
	Logger   *slog.Logger
	// Incoming starts the VM paused with no memory content, waiting for
	// a migrate-incoming op (QEMU: -incoming defer). It runs only after
	// the image has arrived, been verified and the VM is resumed.
	Incoming bool
}

// Request is one control command.
type Request struct {
	// Op is one of: status, set-workload, pause, resume, shutdown,
	// migrate (with Params and a descriptor), migrate-incoming (with a
	// descriptor), migrate-set-bandwidth (with Params.MaxBandwidth),
	// migrate-cancel, query-migrate, memory-digest.
	Op       string                      `json:"op"`
	Workload *hypervisor.Workload        `json:"workload,omitempty"`
	Params   *hypervisor.MigrationParams `json:"params,omitempty"`
}

// Response answers a Request.
type Response struct {
	OK     bool              `json:"ok"`
	Error  string            `json:"error,omitempty"`
	VM     *hypervisor.VM    `json:"vm,omitempty"`
	Stats  *hypervisor.Stats `json:"stats,omitempty"`
	Spec   *hypervisor.Spec  `json:"spec,omitempty"`
	Uptime float64           `json:"uptime_s,omitempty"`
	// Migration answers query-migrate (and the migrate ops). Its State is
	// empty for a VM that never migrated.
	Migration *hypervisor.MigrationStatus `json:"migration,omitempty"`
	// Digest answers memory-digest: the hex SHA-256 of the whole memory.
	Digest string `json:"digest,omitempty"`
}

// maxRequest bounds one request line.
const maxRequest = 64 << 10

// VM is a running simulated VM.
type VM struct {
	cfg   Config
	log   *slog.Logger
	mem   *memory
	start time.Time

	paused   atomic.Bool
	dirty    atomic.Uint64 // bytes written (lifetime, carried by a migration)
	net      atomic.Uint64 // simulated bytes sent (lifetime, carried by a migration)
	wl       atomic.Pointer[hypervisor.Workload]
	throttle atomic.Int32 // auto-converge throttle, percent

	// dmu is held by the dirtier while it writes a tick's pages; it
	// guards the dirtier's generator and stamp counter (see pauseGuest).
	dmu   sync.Mutex
	pcg   *rand.PCG
	rnd   *rand.Rand
	stamp uint64

	mu   sync.Mutex // guards rate
	rate rates

	// migMu guards the migration records (and their status fields). It
	// may be held while taking dmu, never the reverse.
	migMu sync.Mutex
	out   *outgoing // the current or last outgoing migration
	in    *incoming // the incoming migration (Config.Incoming only)

	// reserved: mem.mem was mapped by reserve (an incoming VM) and is
	// unmapped when Run ends.
	reserved bool

	ctx context.Context // Run's: migrations end with it
	wg  sync.WaitGroup  // every goroutine of the VM
}

// rates derives per-second figures from counters between two status calls.
type rates struct {
	at                time.Time
	cpu, dirty, net   float64
	lastCPU           time.Duration
	lastDirty, lastNT uint64
}

// Run starts the VM and serves its socket until ctx ends or a shutdown
// request arrives.
func Run(ctx context.Context, cfg Config) error {
	v, err := newVM(cfg)
	if err != nil {
		return err
	}
	err = v.run(ctx)
	if v.reserved {
		release(v.mem.mem) // run has stopped every goroutine that touches it
	}
	return err
}

func newVM(cfg Config) (*VM, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.VCPUs <= 0 {
		cfg.VCPUs = 1
	}
	if cfg.Memory < PageSize {
		return nil, fmt.Errorf("simvm: memory %d bytes is less than a page", cfg.Memory)
	}
	pages := cfg.Memory / PageSize
	if pages > maxPages {
		return nil, fmt.Errorf("simvm: memory %d bytes is over %d pages", cfg.Memory, uint64(maxPages))
	}
	v := &VM{cfg: cfg, log: cfg.Logger, start: time.Now()}
	if cfg.Incoming {
		buf, err := reserve(pages * PageSize)
		if err != nil {
			return nil, err
		}
		v.mem, v.reserved = memoryOver(buf), true
	} else {
		v.mem = newMemory(pages)
	}
	v.pcg = rand.NewPCG(uint64(time.Now().UnixNano()), 1)
	v.rnd = rand.New(v.pcg)
	w := cfg.Workload
	v.wl.Store(&w)
	v.rate.at = v.start
	if f := w.Fill; f > 0 && !cfg.Incoming {
		v.mem.fill(uint64(f*float64(pages)), uint64(v.start.UnixNano()))
	}
	if cfg.Incoming {
		v.paused.Store(true)
		v.in = &incoming{st: hypervisor.MigrationStatus{State: hypervisor.MigActive, Total: pages * PageSize}}
	}
	return v, nil
}

func (v *VM) run(ctx context.Context) error {
	cfg := v.cfg
	_ = os.Remove(cfg.Socket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Socket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("simvm: control socket: %w", err)
	}
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		ln.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	v.ctx = ctx
	for i := 0; i < cfg.VCPUs; i++ {
		v.wg.Add(1)
		go func() { defer v.wg.Done(); v.burn(ctx) }()
	}
	v.wg.Add(2)
	go func() { defer v.wg.Done(); v.dirtier(ctx) }()
	go func() { defer v.wg.Done(); v.network(ctx) }()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	v.log.Info("simvm: running", "id", cfg.ID, "memory", cfg.Memory, "vcpus", cfg.VCPUs, "socket", cfg.Socket, "incoming", cfg.Incoming)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			break
		}
		v.wg.Add(1)
		go func() { defer v.wg.Done(); v.serve(ctx, c, cancel) }()
	}
	cancel()
	v.wg.Wait()
	_ = os.Remove(cfg.Socket)
	return nil
}

// serve answers one control connection. Requests are lines of JSON; a
// request may carry file descriptors (SCM_RIGHTS) with its bytes, which
// is why the connection is read with ReadMsgUnix rather than a Scanner.
// A descriptor the request does not take is closed.
func (v *VM) serve(ctx context.Context, c *net.UnixConn, shutdown context.CancelFunc) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var fds []*os.File
	closeFDs := func() {
		for _, f := range fds {
			f.Close()
		}
		fds = nil
	}
	defer closeFDs()
	enc := json.NewEncoder(c)
	buf := make([]byte, 0, 4096)
	rd := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	for {
		n, oobn, flags, _, err := c.ReadMsgUnix(rd, oob)
		if oobn > 0 {
			fds = append(fds, parseRights(oob[:oobn])...)
		}
		if flags&syscall.MSG_CTRUNC != 0 {
			v.log.Warn("simvm: control message truncated (too many descriptors)")
		}
		if n > 0 {
			buf = append(buf, rd[:n]...)
		}
		if err != nil && len(buf) > 0 && buf[len(buf)-1] != '\n' {
			buf = append(buf, '\n') // a last request without its newline
		}
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				break
			}
			var req Request
			var resp Response
			if err := json.Unmarshal(buf[:i], &req); err != nil {
				resp.Error = "malformed request: " + err.Error()
			} else {
				resp = v.handle(req, &fds)
			}
			closeFDs()
			buf = append(buf[:0], buf[i+1:]...)
			if err := enc.Encode(resp); err != nil {
				return
			}
			if req.Op == "shutdown" {
				// Only after the answer: the shutdown closes this
				// connection too.
				shutdown()
				return
			}
		}
		if err != nil {
			return
		}
		if len(buf) > maxRequest {
			_ = enc.Encode(Response{Error: "request too long"})
			return
		}
	}
}

// parseRights returns the descriptors in a control message.
func parseRights(oob []byte) []*os.File {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var out []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			out = append(out, os.NewFile(uintptr(fd), "simvm-fd"))
		}
	}
	return out
}

// streamFile turns a received descriptor into the migration stream: a
// net.Conn for a socket (deadlines, CloseWrite), else the file itself (a
// pipe works too). It takes ownership of f.
func streamFile(f *os.File) io.ReadWriteCloser {
	if c, err := net.FileConn(f); err == nil {
		f.Close()
		return c
	}
	return f
}

func (v *VM) handle(req Request, fds *[]*os.File) Response {
	takeFD := func() *os.File {
		if len(*fds) == 0 {
			return nil
		}
		f := (*fds)[0]
		*fds = (*fds)[1:]
		return f
	}
	fail := func(err error) Response { return Response{Error: err.Error()} }
	switch req.Op {
	case "status":
	case "set-workload":
		if req.Workload == nil || checkWorkload(*req.Workload) != nil {
			return Response{Error: "set-workload needs a valid workload"}
		}
		w := *req.Workload
		v.wl.Store(&w)
	case "pause":
		if err := v.userPause(); err != nil {
			return fail(err)
		}
	case "resume":
		if err := v.userResume(); err != nil {
			return fail(err)
		}
	case "shutdown": // by serve, once answered
		return Response{OK: true}
	case "migrate", "migrate-incoming":
		f := takeFD()
		if f == nil {
			return Response{Error: req.Op + " needs a file descriptor (SCM_RIGHTS) for the stream"}
		}
		var err error
		if req.Op == "migrate" {
			var p hypervisor.MigrationParams
			if req.Params != nil {
				p = *req.Params
			}
			err = v.startMigrate(streamFile(f), p)
		} else {
			err = v.startIncoming(streamFile(f))
		}
		if err != nil {
			return fail(err)
		}
		st := v.migrationStatus()
		return Response{OK: true, Migration: &st}
	case "migrate-set-bandwidth":
		if req.Params == nil {
			return fail(errors.New("migrate-set-bandwidth needs params.max_bandwidth"))
		}
		if err := v.setMigrationBandwidth(req.Params.MaxBandwidth); err != nil {
			return fail(err)
		}
		st := v.migrationStatus()
		return Response{OK: true, Migration: &st}
	case "migrate-cancel":
		if err := v.cancelMigration(); err != nil {
			return fail(err)
		}
		st := v.migrationStatus()
		return Response{OK: true, Migration: &st}
	case "query-migrate":
		st := v.migrationStatus()
		return Response{OK: true, Migration: &st}
	case "memory-digest":
		d := v.mem.digest()
		return Response{OK: true, Digest: hex.EncodeToString(d[:])}
	default:
		return Response{Error: fmt.Sprintf("unknown op %q", req.Op)}
	}
	vm, st := v.status()
	spec := hypervisor.Spec{Name: v.cfg.Name, Memory: v.cfg.Memory, VCPUs: v.cfg.VCPUs, Workload: *v.wl.Load()}
	return Response{OK: true, VM: &vm, Stats: &st, Spec: &spec, Uptime: time.Since(v.start).Seconds()}
}

// userPause is the pause op; it is refused during the stop-and-copy,
// which owns the pause then.
func (v *VM) userPause() error {
	v.migMu.Lock()
	defer v.migMu.Unlock()
	if v.out != nil && v.out.final {
		return errors.New("the VM is in its final migration copy")
	}
	v.pauseGuest()
	return nil
}

// userResume is the resume op. An incoming VM runs only once its image is
// verified; a failed one never does. A source paused after a completed
// migration (postmigrate) may be resumed: that is the rollback.
func (v *VM) userResume() error {
	v.migMu.Lock()
	defer v.migMu.Unlock()
	if in := v.in; in != nil && !in.resumed {
		switch in.st.State {
		case hypervisor.MigCompleted:
			in.resumed = true
			v.log.Info("simvm: resuming the migrated VM")
		case hypervisor.MigFailed:
			return fmt.Errorf("incoming migration failed (%s): this VM has no valid memory image and cannot run; destroy it", in.st.Error)
		default:
			return errors.New("incoming migration not complete: this VM has no memory image yet")
		}
	}
	if o := v.out; o != nil {
		if o.final {
			return errors.New("the VM is in its final migration copy")
		}
		if o.postmigrate {
			o.postmigrate = false
			v.log.Info("simvm: resumed after a completed outgoing migration (rollback)")
		}
	}
	v.paused.Store(false)
	return nil
}

// runState is the VM's state as the driver reports it: migrating during
// an outgoing migration and after a completed one until resumed
// (postmigrate), and for an incoming VM from its start until it is
// resumed (unless its migration failed: then it is paused for good).
func (v *VM) runState() hypervisor.State {
	v.migMu.Lock()
	defer v.migMu.Unlock()
	if in := v.in; in != nil && !in.resumed && in.st.State != hypervisor.MigFailed {
		return hypervisor.StateMigrating
	}
	if o := v.out; o != nil && (o.st.State == hypervisor.MigActive || o.postmigrate) {
		return hypervisor.StateMigrating
	}
	if v.paused.Load() {
		return hypervisor.StatePaused
	}
	return hypervisor.StateRunning
}

// status reports the VM and its rates since the previous status call
// (at least 200 ms apart; closer calls repeat the last rates).
func (v *VM) status() (hypervisor.VM, hypervisor.Stats) {
	vm := hypervisor.VM{ID: v.cfg.ID, Name: v.cfg.Name, State: v.runState(), VCPUs: v.cfg.VCPUs, Memory: v.cfg.Memory, PID: os.Getpid()}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	cpu := processCPU()
	dirty, nt := v.dirty.Load(), v.net.Load()
	if dt := now.Sub(v.rate.at).Seconds(); dt >= 0.2 {
		v.rate.cpu = (cpu - v.rate.lastCPU).Seconds() / dt / float64(v.cfg.VCPUs)
		v.rate.dirty = float64(dirty-v.rate.lastDirty) / dt
		v.rate.net = float64(nt-v.rate.lastNT) / dt
		v.rate.at, v.rate.lastCPU, v.rate.lastDirty, v.rate.lastNT = now, cpu, dirty, nt
	}
	st := hypervisor.Stats{
		CPU: min(v.rate.cpu, 1), MemUsed: min(v.mem.ntouched.Load()*PageSize, v.cfg.Memory), MemTotal: v.cfg.Memory,
		NetTx: v.rate.net, NetRx: v.rate.net, Dirty: v.rate.dirty,
	}
	return vm, st
}

// processCPU is this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Call sends one request to the VM at socket and returns its response.
func Call(ctx context.Context, socket string, req Request) (Response, error) {
	return CallFD(ctx, socket, req, nil)
}

// CallFD is Call with a file descriptor passed along with the request
// (SCM_RIGHTS), as the migrate and migrate-incoming ops need. The VM gets
// its own copy of the descriptor: the caller still owns (and closes) f.
func CallFD(ctx context.Context, socket string, req Request, f *os.File) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Response{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	line, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	line = append(line, '\n')
	if f != nil {
		// Not f.Fd(): that would put the descriptor (shared with the VM's
		// copy) into blocking mode.
		rc, cerr := f.SyscallConn()
		if cerr != nil {
			return Response{}, fmt.Errorf("simvm: %s: %w", req.Op, cerr)
		}
		var rights []byte
		if cerr := rc.Control(func(fd uintptr) { rights = syscall.UnixRights(int(fd)) }); cerr != nil {
			return Response{}, fmt.Errorf("simvm: %s: %w", req.Op, cerr)
		}
		_, _, err = c.(*net.UnixConn).WriteMsgUnix(line, rights, nil)
		runtime.KeepAlive(f) // the descriptor must stay open until sent
	} else {
		_, err = c.Write(line)
	}
	if err != nil {
		return Response{}, fmt.Errorf("simvm: %s: %w", req.Op, err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("simvm: %s: %w", req.Op, err)
	}
	if !resp.OK {
		return resp, errors.New("simvm: " + resp.Error)
	}
	return resp, nil
}
