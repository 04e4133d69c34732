// Package simvm is the simulated virtual machine: one process per VM (run
// as `ferry simvm`), shaped like a QEMU process so that the simulated driver
// exercises the same paths a real one will. It holds real memory that a
// real workload dirties (so migrated bytes can be checked), burns a
// scriptable share of CPU, accounts simulated network traffic, and is
// controlled over a local Unix socket with newline-delimited JSON — the
// way QEMU is driven over QMP. An agent can die and restart; its VMs keep
// running and are re-adopted through their sockets.
package simvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
}

// Request is one control command.
type Request struct {
	Op       string               `json:"op"` // status, set-workload, pause, resume, shutdown
	Workload *hypervisor.Workload `json:"workload,omitempty"`
}

// Response answers a Request.
type Response struct {
	OK     bool              `json:"ok"`
	Error  string            `json:"error,omitempty"`
	VM     *hypervisor.VM    `json:"vm,omitempty"`
	Stats  *hypervisor.Stats `json:"stats,omitempty"`
	Spec   *hypervisor.Spec  `json:"spec,omitempty"`
	Uptime float64           `json:"uptime_s,omitempty"`
}

// VM is a running simulated VM.
type VM struct {
	cfg    Config
	mem    []byte
	start  time.Time
	paused atomic.Bool
	dirty  atomic.Uint64 // bytes written since start
	net    atomic.Uint64 // simulated bytes sent since start
	wl     atomic.Pointer[hypervisor.Workload]

	mu      sync.Mutex
	touched uint64 // pages ever written (memory in use)
	seen    []bool
	rate    rates
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.VCPUs <= 0 {
		cfg.VCPUs = 1
	}
	if cfg.Memory < PageSize {
		return fmt.Errorf("simvm: memory %d bytes is less than a page", cfg.Memory)
	}
	pages := cfg.Memory / PageSize
	v := &VM{cfg: cfg, mem: make([]byte, pages*PageSize), start: time.Now(), seen: make([]bool, pages)}
	w := cfg.Workload
	v.wl.Store(&w)
	v.rate.at = v.start

	_ = os.Remove(cfg.Socket)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return fmt.Errorf("simvm: control socket: %w", err)
	}
	if err := os.Chmod(cfg.Socket, 0o600); err != nil {
		ln.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < cfg.VCPUs; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); v.burn(ctx) }()
	}
	wg.Add(2)
	go func() { defer wg.Done(); v.dirtier(ctx) }()
	go func() { defer wg.Done(); v.network(ctx) }()
	go func() { <-ctx.Done(); ln.Close() }()
	cfg.Logger.Info("simvm: running", "id", cfg.ID, "memory", cfg.Memory, "vcpus", cfg.VCPUs, "socket", cfg.Socket)
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() { defer wg.Done(); v.serve(ctx, c, cancel) }()
	}
	cancel()
	wg.Wait()
	_ = os.Remove(cfg.Socket)
	return nil
}

// burn keeps one vCPU busy for the workload's share of every 10 ms slice.
func (v *VM) burn(ctx context.Context) {
	const slice = 10 * time.Millisecond
	t := time.NewTicker(slice)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w := v.wl.Load()
		if v.paused.Load() || w.CPU <= 0 {
			continue
		}
		busy := time.Duration(float64(slice) * w.CPU)
		for end := time.Now().Add(busy); time.Now().Before(end); {
			runtime.Gosched()
		}
	}
}

// dirtier writes to random pages at the workload's dirty rate, in 10 ms
// steps; each write stamps the page with a counter so that contents change.
func (v *VM) dirtier(ctx context.Context) {
	const step = 10 * time.Millisecond
	t := time.NewTicker(step)
	defer t.Stop()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	pages := uint64(len(v.mem) / PageSize)
	var credit float64
	var stamp uint64
	last := time.Now()
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		// Credit by elapsed time, not ticks, so a late tick on a busy
		// machine does not lower the rate; at most a second's worth.
		elapsed := min(now.Sub(last), time.Second)
		last = now
		w := v.wl.Load()
		if v.paused.Load() || w.Dirty <= 0 {
			credit = 0
			continue
		}
		credit += w.Dirty * elapsed.Seconds()
		for credit >= PageSize {
			credit -= PageSize
			p := rng.Uint64N(pages)
			stamp++
			off := p * PageSize
			for i := uint64(0); i < PageSize; i += 512 {
				v.mem[off+i] = byte(stamp >> (i / 512 % 8 * 8))
			}
			v.dirty.Add(PageSize)
			v.mu.Lock()
			if !v.seen[p] {
				v.seen[p] = true
				v.touched++
			}
			v.mu.Unlock()
		}
	}
}

// network accounts simulated traffic at the workload's rate.
func (v *VM) network(ctx context.Context) {
	const step = 100 * time.Millisecond
	t := time.NewTicker(step)
	defer t.Stop()
	last := time.Now()
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		elapsed := min(now.Sub(last), time.Second) // by time, not ticks (late ticks on a busy host)
		last = now
		if w := v.wl.Load(); !v.paused.Load() && w.Net > 0 {
			v.net.Add(uint64(w.Net * elapsed.Seconds()))
		}
	}
}

func (v *VM) serve(ctx context.Context, c net.Conn, shutdown context.CancelFunc) {
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 64<<10)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		var req Request
		var resp Response
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			resp.Error = "malformed request: " + err.Error()
		} else {
			resp = v.handle(req, shutdown)
		}
		if err := enc.Encode(resp); err != nil {
			return
		}
	}
}

func (v *VM) handle(req Request, shutdown context.CancelFunc) Response {
	switch req.Op {
	case "status":
	case "set-workload":
		if req.Workload == nil || req.Workload.CPU < 0 || req.Workload.CPU > 1 || req.Workload.Dirty < 0 || req.Workload.Net < 0 {
			return Response{Error: "set-workload needs a valid workload"}
		}
		w := *req.Workload
		v.wl.Store(&w)
	case "pause":
		v.paused.Store(true)
	case "resume":
		v.paused.Store(false)
	case "shutdown":
		defer shutdown()
		return Response{OK: true}
	default:
		return Response{Error: fmt.Sprintf("unknown op %q", req.Op)}
	}
	vm, st := v.status()
	spec := hypervisor.Spec{Name: v.cfg.Name, Memory: v.cfg.Memory, VCPUs: v.cfg.VCPUs, Workload: *v.wl.Load()}
	return Response{OK: true, VM: &vm, Stats: &st, Spec: &spec, Uptime: time.Since(v.start).Seconds()}
}

// status reports the VM and its rates since the previous status call
// (at least 200 ms apart; closer calls repeat the last rates).
func (v *VM) status() (hypervisor.VM, hypervisor.Stats) {
	state := hypervisor.StateRunning
	if v.paused.Load() {
		state = hypervisor.StatePaused
	}
	vm := hypervisor.VM{ID: v.cfg.ID, Name: v.cfg.Name, State: state, VCPUs: v.cfg.VCPUs, Memory: v.cfg.Memory, PID: os.Getpid()}
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
		CPU: min(v.rate.cpu, 1), MemUsed: v.touched * PageSize, MemTotal: v.cfg.Memory,
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
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Response{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, err
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
