// Package libvirt is the libvirt hypervisor driver: the agent manages the
// host's existing libvirt domains (listing, state, CPU, memory and network
// statistics, start, pause, resume, destroy) through libvirtd's RPC
// protocol (github.com/digitalocean/go-libvirt, pure Go), adopting domains
// it did not create, and live-migrates them with libvirt's own migration
// protocol, every connection of which the migration agents carry over
// their link (see migrate.go).
//
// A VM's id is its domain name.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// DefaultSocketDir is where migrations' Unix sockets live; libvirt
// requires the same path on both hosts (the source's QEMU connects to the
// path the destination's QEMU listens on).
const DefaultSocketDir = "/run/ferry/libvirt"

// Config configures a Driver.
type Config struct {
	// URI is the local libvirtd (parseURI): qemu:///system by default.
	URI string
	// SocketDir is DefaultSocketDir if empty; it must be the same on
	// every host a VM migrates between.
	SocketDir string
	// SharedStorage: the domains' disks are on storage both hosts see
	// at the same paths, so a migration moves memory only. Otherwise
	// every writable disk is copied to the destination (libvirt's
	// non-shared-disk migration, over NBD).
	SharedStorage bool
	Logger        *slog.Logger
}

// Driver manages one host's libvirt domains.
type Driver struct {
	target    target
	socketDir string
	shared    bool
	log       *slog.Logger

	mu       sync.Mutex
	conn     *golibvirt.Libvirt // for queries and commands; redialled when lost
	cpu      map[string]cpuReading
	outgoing map[string]*outgoing // by VM id
	incoming map[string]*incoming
	closed   bool
	wg       sync.WaitGroup // migration goroutines
}

type cpuReading struct {
	s  sample
	at time.Time
}

var (
	_ hypervisor.Driver          = (*Driver)(nil)
	_ hypervisor.Migrator        = (*Driver)(nil)
	_ hypervisor.ChannelMover    = (*Driver)(nil)
	_ hypervisor.DowntimeSetter  = (*Driver)(nil)
	_ hypervisor.BandwidthSetter = (*Driver)(nil)
)

// New returns a driver for the libvirtd of cfg.URI, checking that it
// answers.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	t, err := parseURI(cfg.URI)
	if err != nil {
		return nil, err
	}
	d := &Driver{target: t, socketDir: cfg.SocketDir, shared: cfg.SharedStorage, log: cfg.Logger,
		cpu: map[string]cpuReading{}, outgoing: map[string]*outgoing{}, incoming: map[string]*incoming{}}
	if d.socketDir == "" {
		d.socketDir = DefaultSocketDir
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	l, err := d.client()
	if err != nil {
		return nil, err
	}
	if _, err := l.ConnectGetLibVersion(); err != nil {
		return nil, fmt.Errorf("libvirt: %s: %w", t.Socket, err)
	}
	return d, nil
}

// Name implements hypervisor.Driver.
func (d *Driver) Name() string { return "libvirt" }

// dial opens a new connection to the local libvirtd.
func (d *Driver) dial() (*golibvirt.Libvirt, error) {
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.target.Socket), dialers.WithLocalTimeout(5*time.Second)))
	if err := l.ConnectToURI(d.target.Open); err != nil {
		return nil, fmt.Errorf("libvirt: connecting to %s (is libvirtd running? `libvirtd -d` as root): %w", d.target.Socket, err)
	}
	return l, nil
}

// client is the shared connection, dialled again if it was lost.
func (d *Driver) client() (*golibvirt.Libvirt, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("libvirt: driver closed")
	}
	if d.conn != nil && d.conn.IsConnected() {
		return d.conn, nil
	}
	l, err := d.dial()
	if err != nil {
		return nil, err
	}
	d.conn = l
	return l, nil
}

// Close ends the driver's migrations' goroutines (their libvirt
// connections are closed: libvirt ends a migration whose client went
// away, leaving a source that had completed paused) and its connection.
func (d *Driver) Close() error {
	d.mu.Lock()
	d.closed = true
	conn := d.conn
	var outs []*outgoing
	for _, m := range d.outgoing {
		outs = append(outs, m)
	}
	d.mu.Unlock()
	for _, m := range outs {
		m.closeConns()
	}
	d.wg.Wait()
	if conn != nil {
		return conn.Disconnect()
	}
	return nil
}

// domain looks VM id up.
func (d *Driver) domain(id string) (*golibvirt.Libvirt, golibvirt.Domain, error) {
	if hypervisor.CheckName(id) != nil {
		return nil, golibvirt.Domain{}, fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	l, err := d.client()
	if err != nil {
		return nil, golibvirt.Domain{}, err
	}
	dom, err := l.DomainLookupByName(id)
	if golibvirt.IsNotFound(err) {
		return nil, golibvirt.Domain{}, fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	if err != nil {
		return nil, golibvirt.Domain{}, fmt.Errorf("libvirt: %s: %w", id, err)
	}
	return l, dom, nil
}

// vm describes domain dom.
func (d *Driver) vm(l *golibvirt.Libvirt, dom golibvirt.Domain) (hypervisor.VM, error) {
	state, reason, err := l.DomainGetState(dom, 0)
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("libvirt: %s: %w", dom.Name, err)
	}
	_, maxMem, _, vcpus, _, err := l.DomainGetInfo(dom)
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("libvirt: %s: %w", dom.Name, err)
	}
	vm := hypervisor.VM{ID: dom.Name, Name: dom.Name, State: stateOf(state, reason), VCPUs: int(vcpus), Memory: maxMem << 10}
	if doc, err := l.DomainGetXMLDesc(dom, 0); err == nil {
		vm.Disks, _ = parseDisks(doc, d.shared)
	}
	return vm, nil
}

// List implements hypervisor.Driver: the host's running (and paused)
// domains, whoever started them. Defined domains that are shut off are
// not VMs of the host's load; Create starts one.
func (d *Driver) List(ctx context.Context) ([]hypervisor.VM, error) {
	l, err := d.client()
	if err != nil {
		return nil, err
	}
	doms, _, err := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive)
	if err != nil {
		return nil, fmt.Errorf("libvirt: listing domains: %w", err)
	}
	var out []hypervisor.VM
	for _, dom := range doms {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("libvirt: listing domains: %w", ctx.Err())
		}
		if hypervisor.CheckName(dom.Name) != nil {
			// A name Ferry cannot use as an id (or in a file name).
			continue
		}
		vm, err := d.vm(l, dom)
		if golibvirt.IsNotFound(err) {
			continue // gone meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	// Forget the CPU readings of domains that are gone.
	d.mu.Lock()
	for id := range d.cpu {
		if !slices.ContainsFunc(out, func(vm hypervisor.VM) bool { return vm.ID == id }) {
			delete(d.cpu, id)
		}
	}
	d.mu.Unlock()
	return out, nil
}

// Create implements hypervisor.Driver: it starts the defined domain of
// s's name (virsh define, by the operator or their tooling). Ferry does
// not write domain XML: the definition is the operator's.
func (d *Driver) Create(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, error) {
	l, dom, err := d.domain(s.Name)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return hypervisor.VM{}, fmt.Errorf("libvirt: no domain %q is defined: define it first (virsh define); the agent starts and adopts defined domains", s.Name)
	}
	if err != nil {
		return hypervisor.VM{}, err
	}
	if state, _, err := l.DomainGetState(dom, 0); err == nil && golibvirt.DomainState(state) != golibvirt.DomainShutoff {
		return hypervisor.VM{}, fmt.Errorf("libvirt: domain %s is already running", s.Name)
	}
	if err := l.DomainCreate(dom); err != nil {
		return hypervisor.VM{}, fmt.Errorf("libvirt: starting %s: %w", s.Name, err)
	}
	return d.vm(l, dom)
}

// Stats implements hypervisor.Driver: CPU from the domain's CPU time,
// memory from the balloon's figures (resident set of the QEMU process),
// network from its interfaces' counters; rates since the previous call.
func (d *Driver) Stats(ctx context.Context, id string) (hypervisor.Stats, error) {
	l, dom, err := d.domain(id)
	if err != nil {
		return hypervisor.Stats{}, err
	}
	kinds := golibvirt.DomainStatsState | golibvirt.DomainStatsCPUTotal | golibvirt.DomainStatsBalloon |
		golibvirt.DomainStatsVCPU | golibvirt.DomainStatsInterface
	recs, err := l.ConnectGetAllDomainStats([]golibvirt.Domain{dom}, uint32(kinds), 0)
	if err != nil {
		return hypervisor.Stats{}, fmt.Errorf("libvirt: %s: statistics: %w", id, err)
	}
	if len(recs) != 1 {
		return hypervisor.Stats{}, fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	cur := sampleOf(paramsOf(recs[0].Params))
	now := time.Now()
	d.mu.Lock()
	prev, ok := d.cpu[id]
	d.cpu[id] = cpuReading{s: cur, at: now}
	d.mu.Unlock()
	if !ok {
		return rates(nil, cur, 0), nil
	}
	return rates(&prev.s, cur, now.Sub(prev.at).Seconds()), nil
}

// SetWorkload implements hypervisor.Driver: a real guest's load is its own.
func (d *Driver) SetWorkload(context.Context, string, hypervisor.Workload) error {
	return errors.New("libvirt: a real VM's workload is set inside the guest, not by the driver")
}

// Pause implements hypervisor.Driver.
func (d *Driver) Pause(ctx context.Context, id string) error {
	l, dom, err := d.domain(id)
	if err != nil {
		return err
	}
	if err := l.DomainSuspend(dom); err != nil {
		return fmt.Errorf("libvirt: pausing %s: %w", id, err)
	}
	return nil
}

// Resume implements hypervisor.Driver. A source whose migration completed
// and awaits its confirmation is resumed by confirming the migration as
// cancelled (libvirt then runs it again); an incoming copy that completed
// is resumed (its migration is over).
func (d *Driver) Resume(ctx context.Context, id string) error {
	if m := d.out(id); m != nil {
		if done, err := m.confirm(true); done || err != nil {
			return err
		}
	}
	l, dom, err := d.domain(id)
	if err != nil {
		return err
	}
	if err := l.DomainResume(dom); err != nil {
		return fmt.Errorf("libvirt: resuming %s: %w", id, err)
	}
	d.forgetIncoming(id)
	// No migration of it runs now: its socket directory goes.
	_ = os.RemoveAll(d.dir(id))
	return nil
}

// Destroy implements hypervisor.Driver: the domain is stopped and its
// definition removed (a migrated VM's source, a rolled-back destination:
// the VM is no longer this host's). Its disks stay: they are the
// operator's. A source whose migration awaits its confirmation is first
// confirmed (libvirt stops it).
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if m := d.out(id); m != nil {
		if _, err := m.confirm(false); err != nil {
			d.log.Warn("libvirt: confirming a migration before destroying its source", "vm", id, "err", err)
		}
		d.mu.Lock()
		delete(d.outgoing, id)
		d.mu.Unlock()
	}
	d.forgetIncoming(id)
	_ = os.RemoveAll(d.dir(id))
	d.mu.Lock()
	delete(d.cpu, id)
	d.mu.Unlock()
	l, dom, err := d.domain(id)
	if err != nil {
		return err
	}
	if state, _, err := l.DomainGetState(dom, 0); err == nil && golibvirt.DomainState(state) != golibvirt.DomainShutoff {
		if err := l.DomainDestroy(dom); err != nil && !golibvirt.IsNotFound(err) {
			return fmt.Errorf("libvirt: destroying %s: %w", id, err)
		}
	}
	if p, err := l.DomainIsPersistent(dom); err == nil && p == 1 {
		if err := l.DomainUndefineFlags(dom, 0); err != nil && !golibvirt.IsNotFound(err) {
			return fmt.Errorf("libvirt: undefining %s: %w", id, err)
		}
	}
	return nil
}

// memoryPeekMax is libvirt's limit on one virDomainMemoryPeek.
const memoryPeekMax = 64 << 10

// ReadMemory reads n bytes of VM id's guest-physical memory at addr
// (virDomainMemoryPeek, 64 KiB at a time): for tests and operators.
func (d *Driver) ReadMemory(ctx context.Context, id string, addr, n uint64) ([]byte, error) {
	l, dom, err := d.domain(id)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, n)
	for off := uint64(0); off < n; {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		k := min(n-off, memoryPeekMax)
		b, err := l.DomainMemoryPeek(dom, addr+off, uint32(k), golibvirt.MemoryPhysical)
		if err != nil {
			return nil, fmt.Errorf("libvirt: %s: reading memory at %#x: %w", id, addr+off, err)
		}
		if uint64(len(b)) != k {
			return nil, fmt.Errorf("libvirt: %s: read %d bytes of memory, want %d", id, len(b), k)
		}
		out = append(out, b...)
		off += k
	}
	return out, nil
}
