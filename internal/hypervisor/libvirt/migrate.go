package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Live migration through libvirt, every connection carried by Ferry.
//
// libvirt's migration protocol (version 3: Begin on the source, Prepare
// on the destination, Perform on the source, Finish on the destination,
// Confirm on the source) is driven by the source's driver itself, as a
// libvirt client would drive a "managed direct" migration:
//
//   - its connection to the destination's libvirtd is the migration
//     stream the driver hands the MA (MigrateOut's net.Conn): the MA
//     carries it over its link, and the destination's MA joins it to its
//     libvirtd's socket (PrepareIncoming's net.Conn);
//   - QEMU's migration stream and the NBD stream of the disks go over
//     Unix sockets (libvirt's migrate URI and disks URI, unix://…), at
//     the same path on both hosts (SocketDir/<vm>/qemu.sock, nbd.sock):
//     the source's QEMU connects to the driver's listeners, whose
//     connections the MA carries each over its own stream
//     (hypervisor.ChannelMover), and the destination's MA connects them
//     to the sockets the destination's QEMU listens on.
//
// No libvirt or QEMU TLS and no port between the sites: the link's SUDP
// session authenticates and encrypts everything.
//
// Authority is hypervisor.Migrator's: the destination is prepared and
// finished paused (VIR_MIGRATE_PAUSED), and the source's Confirm — the
// step at which libvirt stops the source (confirmed) or runs it again
// (cancelled) — is deferred to the MA's commit (Destroy) or rollback
// (Resume). Until then the source is paused with its memory intact, the
// destination paused with the complete image: never two running copies.
// A migration that fails before Finish is confirmed cancelled at once
// (the source runs on; libvirt removes the destination's domain).

// Channel names (hypervisor.ChannelMover).
const (
	chanQEMU = "qemu"
	chanNBD  = "nbd"
)

// outgoing is one outgoing migration, run by its goroutine (run).
type outgoing struct {
	id     string
	dir    string // its socket directory
	dom    golibvirt.Domain
	src    *golibvirt.Libvirt // the migration job's own connection to the local libvirtd
	dst    *golibvirt.Libvirt // over the MA's stream, to the destination's libvirtd
	open   golibvirt.ConnectURI
	params []golibvirt.TypedParam
	flags  golibvirt.DomainMigrateFlags
	p      hypervisor.MigrationParams
	start  time.Time
	done   chan struct{} // closed when run returns

	mu        sync.Mutex
	state     string // hypervisor.Mig*
	err       string
	cancel    string // why the MA (or the driver) cancelled it; "" if not
	finished  time.Time
	final     hypervisor.MigrationStatus // the completed job's statistics
	cookie    []byte                     // Finish's, for Confirm
	confirmed bool
}

// destFlags are the flags the destination is sent (libvirt strips the
// source-only ones the same way).
func destFlags(f golibvirt.DomainMigrateFlags) uint32 {
	return uint32(f &^ (golibvirt.MigrateAbortOnError | golibvirt.MigrateAutoConverge))
}

// migrationFlags are libvirt's flags for a migration with parameters p of
// a domain that is persistent (or not) and whose disks are copied (or
// not).
func migrationFlags(p hypervisor.MigrationParams, persistent, copyDisks bool) golibvirt.DomainMigrateFlags {
	f := golibvirt.MigrateLive | golibvirt.MigrateChangeProtection | golibvirt.MigratePaused | golibvirt.MigrateAbortOnError
	if persistent {
		f |= golibvirt.MigratePersistDest
	}
	if copyDisks {
		f |= golibvirt.MigrateNonSharedDisk
	}
	if p.AutoConverge {
		f |= golibvirt.MigrateAutoConverge
	}
	return f
}

func strParam(k, v string) golibvirt.TypedParam {
	return golibvirt.TypedParam{Field: k, Value: *golibvirt.NewTypedParamValueString(v)}
}

// migrationParams are libvirt's typed parameters for a migration whose
// sockets are in dir.
func migrationParams(p hypervisor.MigrationParams, dir string, copyDisks bool) []golibvirt.TypedParam {
	ps := []golibvirt.TypedParam{strParam("migrate_uri", "unix://"+filepath.Join(dir, chanQEMU+".sock"))}
	if copyDisks {
		ps = append(ps, strParam("disks_uri", "unix://"+filepath.Join(dir, chanNBD+".sock")))
	}
	if p.MaxBandwidth > 0 {
		// libvirt's bandwidth is in MiB/s.
		mib := uint64(max(math.Ceil(p.MaxBandwidth/(1<<20)), 1))
		ps = append(ps, golibvirt.TypedParam{Field: "bandwidth", Value: *golibvirt.NewTypedParamValueUllong(mib)})
	}
	return ps
}

func (d *Driver) out(id string) *outgoing {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.outgoing[id]
}

// dir is VM id's migration socket directory.
func (d *Driver) dir(id string) string { return filepath.Join(d.socketDir, id) }

// freshDir (re)creates VM id's socket directory, owned by the user QEMU
// runs as (the destination's QEMU creates its sockets there; the
// source's connects to the listeners there).
func (d *Driver) freshDir(l *golibvirt.Libvirt, id string) (string, error) {
	uid, gid, dac, err := d.qemuUser(l)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(d.socketDir, 0o711); err != nil {
		return "", fmt.Errorf("libvirt: %w", err)
	}
	dir := d.dir(id)
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("libvirt: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("libvirt: %w", err)
	}
	if dac {
		if err := os.Chown(dir, uid, gid); err != nil {
			return "", fmt.Errorf("libvirt: %w", err)
		}
	}
	return dir, nil
}

// qemuUser is the user QEMU runs as (dac false: libvirt's DAC driver is
// off, QEMU runs as root).
func (d *Driver) qemuUser(l *golibvirt.Libvirt) (uid, gid int, dac bool, err error) {
	caps, err := l.ConnectGetCapabilities()
	if err != nil {
		return 0, 0, false, fmt.Errorf("libvirt: capabilities: %w", err)
	}
	return qemuIDs(caps)
}

// copiesDisks: migrating domain dom copies its disks (its XML has
// writable disks and the storage is not shared).
func (d *Driver) copiesDisks(l *golibvirt.Libvirt, dom golibvirt.Domain) (bool, error) {
	if d.shared {
		return false, nil
	}
	doc, err := l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		return false, fmt.Errorf("libvirt: %s: %w", dom.Name, err)
	}
	disks, err := parseDisks(doc, false)
	return len(disks) > 0, err
}

// ListenChannels implements hypervisor.ChannelMover: the sockets VM id's
// QEMU connects its migration stream and (for local disks) its NBD
// client to.
func (d *Driver) ListenChannels(id string, _ hypervisor.MigrationParams) (map[string]net.Listener, error) {
	l, dom, err := d.domain(id)
	if err != nil {
		return nil, err
	}
	copyDisks, err := d.copiesDisks(l, dom)
	if err != nil {
		return nil, err
	}
	uid, gid, dac, err := d.qemuUser(l)
	if err != nil {
		return nil, err
	}
	dir, err := d.freshDir(l, id)
	if err != nil {
		return nil, err
	}
	names := []string{chanQEMU}
	if copyDisks {
		names = append(names, chanNBD)
	}
	lns := map[string]net.Listener{}
	for _, name := range names {
		path := filepath.Join(dir, name+".sock")
		ln, err := net.Listen("unix", path)
		if err == nil && dac {
			err = os.Chown(path, uid, gid)
		}
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			if ln != nil {
				ln.Close()
			}
			return nil, fmt.Errorf("libvirt: migration socket: %w", err)
		}
		lns[name] = ln
	}
	return lns, nil
}

// DialChannel implements hypervisor.ChannelMover: the socket incoming VM
// id's QEMU listens on for channel name (it is there once libvirt's
// Prepare ran, which precedes the source's connections; a short wait
// covers a slow start).
func (d *Driver) DialChannel(ctx context.Context, id, name string) (net.Conn, error) {
	if name != chanQEMU && name != chanNBD {
		return nil, fmt.Errorf("libvirt: no migration channel %q", name)
	}
	if hypervisor.CheckName(id) != nil {
		return nil, fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	path := filepath.Join(d.dir(id), name+".sock")
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var dl net.Dialer
	for {
		c, err := dl.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("libvirt: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("libvirt: %s: %w", path, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// MigrateOut implements hypervisor.Migrator: the MA's end of the
// connection to the destination's libvirtd; the migration runs on its
// own goroutine (libvirt's calls block for its whole length).
func (d *Driver) MigrateOut(ctx context.Context, id string, p hypervisor.MigrationParams) (net.Conn, error) {
	l, dom, err := d.domain(id)
	if err != nil {
		return nil, err
	}
	if m := d.out(id); m != nil {
		m.mu.Lock()
		busy := m.state == hypervisor.MigActive || (m.state == hypervisor.MigCompleted && !m.confirmed)
		m.mu.Unlock()
		if busy {
			return nil, fmt.Errorf("libvirt: VM %s is already migrating", id)
		}
	}
	if _, err := os.Stat(filepath.Join(d.dir(id), chanQEMU+".sock")); err != nil {
		return nil, fmt.Errorf("libvirt: VM %s: no migration socket (ListenChannels first): %w", id, err)
	}
	copyDisks, err := d.copiesDisks(l, dom)
	if err != nil {
		return nil, err
	}
	persistent, err := l.DomainIsPersistent(dom)
	if err != nil {
		return nil, fmt.Errorf("libvirt: %s: %w", id, err)
	}
	downtime := p.DowntimeLimit
	if downtime <= 0 {
		downtime = hypervisor.DefaultDowntimeLimit
	}
	if err := l.DomainMigrateSetMaxDowntime(dom, uint64(max(downtime.Milliseconds(), 1)), 0); err != nil {
		d.log.Warn("libvirt: setting the migration's downtime limit", "vm", id, "err", err)
	}
	src, err := d.dial()
	if err != nil {
		return nil, err
	}
	vmEnd, maEnd, err := hypervisor.StreamPair()
	if err != nil {
		src.Disconnect()
		return nil, err
	}
	c, err := net.FileConn(vmEnd)
	vmEnd.Close()
	if err != nil {
		src.Disconnect()
		maEnd.Close()
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	m := &outgoing{id: id, dir: d.dir(id), dom: dom, src: src, dst: golibvirt.NewWithDialer(dialers.NewAlreadyConnected(c)), open: d.target.Open,
		params: migrationParams(p, d.dir(id), copyDisks), flags: migrationFlags(p, persistent == 1, copyDisks), p: p,
		start: time.Now(), done: make(chan struct{}), state: hypervisor.MigActive}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		src.Disconnect()
		c.Close()
		maEnd.Close()
		return nil, errors.New("libvirt: driver closed")
	}
	d.outgoing[id] = m
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		m.run(d)
	}()
	return maEnd, nil
}

// run drives libvirt's protocol up to Finish; Confirm waits for the MA.
func (m *outgoing) run(d *Driver) {
	defer close(m.done)
	log := d.log.With("vm", m.id)
	flags := m.flags
	if err := m.dst.ConnectToURI(m.open); err != nil {
		m.end(fmt.Errorf("connecting to the destination's libvirtd through the link: %w", err))
		return
	}
	cookie, domXML, err := m.src.DomainMigrateBegin3Params(m.dom, m.params, uint32(flags))
	if err != nil {
		m.end(fmt.Errorf("begin: %w", err))
		return
	}
	prep := append(append([]golibvirt.TypedParam(nil), m.params...), strParam("destination_xml", domXML))
	cookie, _, err = m.dst.DomainMigratePrepare3Params(prep, cookie, destFlags(flags))
	if err != nil {
		if cerr := m.src.DomainMigrateConfirm3Params(m.dom, m.params, nil, uint32(flags), 1); cerr != nil {
			log.Warn("libvirt: confirming a migration cancelled at prepare", "err", cerr)
		}
		m.end(fmt.Errorf("prepare at the destination: %w", err))
		return
	}
	cookie, perr := m.src.DomainMigratePerform3Params(m.dom, nil, m.params, cookie, flags)
	// libvirt's Finish names the domain; the destination resumes it
	// unless VIR_MIGRATE_PAUSED (always set here).
	fin := append(append([]golibvirt.TypedParam(nil), m.params...), strParam("destination_name", m.id))
	cancelled := int32(0)
	if perr != nil {
		cancelled = 1
	}
	_, cookie, ferr := m.dst.DomainMigrateFinish3Params(fin, cookie, destFlags(flags), cancelled)
	if perr != nil || ferr != nil {
		// The destination has no (complete) copy: the source runs on.
		// (libvirt may have ended the source's job with the failed
		// Perform already, and refuse the Confirm.)
		if cerr := m.src.DomainMigrateConfirm3Params(m.dom, m.params, cookie, uint32(flags), 1); cerr != nil {
			log.Debug("libvirt: confirming a failed migration", "err", cerr)
		}
		if perr != nil {
			m.end(fmt.Errorf("perform: %w", perr))
		} else {
			m.end(fmt.Errorf("finish at the destination: %w", ferr))
		}
		return
	}
	final := hypervisor.MigrationStatus{}
	// The job, awaiting Confirm, still holds the completed transfer's
	// statistics (virDomainGetJobStats' completed flag answers only
	// after Confirm).
	if _, ps, err := m.src.DomainGetJobStats(m.dom, 0); err == nil {
		p := paramsOf(ps)
		final = jobStatus(p)
		if dt := p.u64("downtime"); dt > 0 {
			final.PausedAt = time.Now().Add(-time.Duration(dt) * time.Millisecond)
		}
	}
	// The destination's part is over: ending its connection ends the
	// MA's stream.
	_ = m.dst.Disconnect()
	m.mu.Lock()
	m.state, m.finished, m.final, m.cookie = hypervisor.MigCompleted, time.Now(), final, cookie
	m.mu.Unlock()
	log.Info("libvirt: migration completed; the source awaits its confirmation")
}

// end records a migration that failed (or was cancelled) with the source
// running again.
func (m *outgoing) end(err error) {
	_ = m.dst.Disconnect()
	_ = m.src.Disconnect()
	// QEMU is done with its sockets (the MA's listeners there go with
	// the job; closing them later finds them unlinked).
	_ = os.RemoveAll(m.dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finished = time.Now()
	m.confirmed = true
	if m.cancel != "" {
		m.state = hypervisor.MigCancelled
		if m.cancel != cancelByMA {
			m.state, m.err = hypervisor.MigFailed, m.cancel
		}
		return
	}
	m.state, m.err = hypervisor.MigFailed, "libvirt: "+err.Error()
}

// cancelByMA is outgoing.cancel for CancelMigration.
const cancelByMA = "cancelled"

// closeConns ends both of the migration's connections (libvirt ends a
// migration whose client went away).
func (m *outgoing) closeConns() {
	_ = m.dst.Disconnect()
	_ = m.src.Disconnect()
}

// confirm ends a completed migration awaiting its confirmation: cancelled
// runs the source again, otherwise libvirt stops it. done is false when
// there was nothing to confirm.
func (m *outgoing) confirm(cancelled bool) (done bool, err error) {
	m.mu.Lock()
	if m.state != hypervisor.MigCompleted || m.confirmed {
		m.mu.Unlock()
		return false, nil
	}
	m.confirmed = true
	cookie := m.cookie
	m.mu.Unlock()
	c := int32(0)
	if cancelled {
		c = 1
	}
	err = m.src.DomainMigrateConfirm3Params(m.dom, m.params, cookie, uint32(m.flags), c)
	_ = m.src.Disconnect()
	if err != nil {
		return true, fmt.Errorf("libvirt: confirming the migration of %s (cancelled=%v): %w", m.id, cancelled, err)
	}
	return true, nil
}

// CancelMigration implements hypervisor.Migrator: libvirt's job is
// aborted and the migration confirmed cancelled (the source runs on);
// it waits (up to 30 s) for that.
func (d *Driver) CancelMigration(ctx context.Context, id string) error {
	m := d.out(id)
	if m == nil {
		return nil
	}
	return d.abort(ctx, m, cancelByMA)
}

func (d *Driver) abort(ctx context.Context, m *outgoing, why string) error {
	m.mu.Lock()
	if m.state != hypervisor.MigActive {
		m.mu.Unlock()
		return nil
	}
	if m.cancel == "" {
		m.cancel = why
	}
	m.mu.Unlock()
	if l, err := d.client(); err == nil {
		if err := l.DomainAbortJob(m.dom); err != nil {
			// Not in QEMU's part yet (Begin, Prepare): failing the
			// destination's connection ends the protocol there.
			_ = m.dst.Disconnect()
		}
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-m.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Still not over: closing libvirt's connections makes it end the
	// migration (its client is gone).
	m.closeConns()
	select {
	case <-m.done:
		return nil
	case <-time.After(20 * time.Second):
		return fmt.Errorf("libvirt: VM %s: migration still running 30 s after it was cancelled", m.id)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetMaxBandwidth implements hypervisor.BandwidthSetter (libvirt's
// unit is MiB/s; no cap is libvirt's largest value, as QEMU's is).
func (d *Driver) SetMaxBandwidth(ctx context.Context, id string, bytesPerSec float64) error {
	l, dom, err := d.domain(id)
	if err != nil {
		return err
	}
	mib := uint64(unlimitedMiB)
	if bytesPerSec > 0 {
		mib = uint64(max(math.Ceil(bytesPerSec/(1<<20)), 1))
	}
	if err := l.DomainMigrateSetMaxSpeed(dom, mib, 0); err != nil {
		return fmt.Errorf("libvirt: %s: bandwidth cap: %w", id, err)
	}
	return nil
}

// unlimitedMiB stands for "no cap" in MiB/s: 1 TiB/s.
const unlimitedMiB = 1 << 20

// SetDowntimeLimit implements hypervisor.DowntimeSetter.
func (d *Driver) SetDowntimeLimit(ctx context.Context, id string, limit time.Duration) error {
	l, dom, err := d.domain(id)
	if err != nil {
		return err
	}
	if err := l.DomainMigrateSetMaxDowntime(dom, uint64(max(limit.Milliseconds(), 1)), 0); err != nil {
		return fmt.Errorf("libvirt: %s: downtime limit: %w", id, err)
	}
	return nil
}

// incoming is an incoming migration's record at the destination.
type incoming struct {
	start time.Time
	seen  bool      // libvirt's Prepare created the domain
	ended time.Time // first seen complete
	// closed: the source's libvirt connection ended (libvirt ends an
	// incoming migration whose client went away before Finish).
	closed bool
}

// PrepareIncoming implements hypervisor.Migrator: the migration's socket
// directory, and the MA's connection to the local libvirtd, which the
// source's driver drives Prepare and Finish through.
func (d *Driver) PrepareIncoming(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, net.Conn, error) {
	if err := hypervisor.CheckName(s.Name); err != nil {
		return hypervisor.VM{}, nil, err
	}
	l, err := d.client()
	if err != nil {
		return hypervisor.VM{}, nil, err
	}
	if dom, err := l.DomainLookupByName(s.Name); err == nil {
		if st, _, err := l.DomainGetState(dom, 0); err != nil || golibvirt.DomainState(st) != golibvirt.DomainShutoff {
			return hypervisor.VM{}, nil, fmt.Errorf("libvirt: domain %s is already running here", s.Name)
		}
	}
	if _, err := d.freshDir(l, s.Name); err != nil {
		return hypervisor.VM{}, nil, err
	}
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", d.target.Socket)
	if err != nil {
		return hypervisor.VM{}, nil, fmt.Errorf("libvirt: %w", err)
	}
	inc := &incoming{start: time.Now()}
	d.mu.Lock()
	d.incoming[s.Name] = inc
	d.mu.Unlock()
	fc := &filterConn{c: conn.(*net.UnixConn), f: rpcFilter{vm: s.Name}, log: d.log.With("vm", s.Name),
		ended: func() { d.mu.Lock(); inc.closed = true; d.mu.Unlock() }}
	return hypervisor.VM{ID: s.Name, Name: s.Name, State: hypervisor.StateMigrating, VCPUs: s.VCPUs, Memory: s.Memory, Disks: s.Disks}, fc, nil
}

// filterConn is the destination MA's end of the source driver's libvirt
// connection: what the MA writes (the source's calls) passes rpcFilter
// on its way to libvirtd; what it reads is libvirtd's answers. Its
// methods are its own (no embedded conn), so that io.Copy cannot bypass
// Write through the Unix conn's ReadFrom.
type filterConn struct {
	c     *net.UnixConn
	f     rpcFilter
	log   *slog.Logger
	ended func()     // the connection is over (either way)
	mu    sync.Mutex // Write's, for the filter's buffer
}

func (c *filterConn) Read(b []byte) (int, error) {
	n, err := c.c.Read(b)
	if err != nil {
		c.ended()
	}
	return n, err
}

// Write forwards the whole packets b completes, if allowed; a refused
// packet ends the connection (libvirt then ends the incoming migration
// its client started, if any).
func (c *filterConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok, err := c.f.Feed(b)
	if len(ok) > 0 {
		if _, werr := c.c.Write(ok); werr != nil {
			return 0, werr
		}
	}
	if err != nil {
		c.log.Warn("libvirt: refusing the source's call on the migration connection", "err", err)
		c.ended()
		c.c.Close()
		return 0, err
	}
	return len(b), nil
}

func (c *filterConn) Close() error { c.ended(); return c.c.Close() }

// CloseWrite: the source ended its connection; libvirtd closes its side
// in turn.
func (c *filterConn) CloseWrite() error { c.ended(); return c.c.CloseWrite() }

func (c *filterConn) LocalAddr() net.Addr                { return c.c.LocalAddr() }
func (c *filterConn) RemoteAddr() net.Addr               { return c.c.RemoteAddr() }
func (c *filterConn) SetDeadline(t time.Time) error      { return c.c.SetDeadline(t) }
func (c *filterConn) SetReadDeadline(t time.Time) error  { return c.c.SetReadDeadline(t) }
func (c *filterConn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }

func (d *Driver) forgetIncoming(id string) {
	d.mu.Lock()
	_, ok := d.incoming[id]
	delete(d.incoming, id)
	d.mu.Unlock()
	if ok {
		_ = os.RemoveAll(d.dir(id))
	}
}

// MigrationStatus implements hypervisor.Migrator.
func (d *Driver) MigrationStatus(ctx context.Context, id string) (hypervisor.MigrationStatus, error) {
	if m := d.out(id); m != nil {
		return d.outgoingStatus(ctx, m)
	}
	d.mu.Lock()
	inc := d.incoming[id]
	d.mu.Unlock()
	if inc != nil {
		return d.incomingStatus(id, inc)
	}
	// Neither (the agent restarted): what libvirt's job says.
	l, dom, err := d.domain(id)
	if err != nil {
		return hypervisor.MigrationStatus{}, err
	}
	typ, ps, err := l.DomainGetJobStats(dom, 0)
	if err != nil {
		return hypervisor.MigrationStatus{}, fmt.Errorf("libvirt: %s: job: %w", id, err)
	}
	if golibvirt.DomainJobType(typ) != golibvirt.DomainJobNone {
		st := jobStatus(paramsOf(ps))
		st.State = hypervisor.MigActive
		return st, nil
	}
	state, reason, err := l.DomainGetState(dom, 0)
	if err != nil {
		return hypervisor.MigrationStatus{}, fmt.Errorf("libvirt: %s: %w", id, err)
	}
	if stateOf(state, reason) == hypervisor.StateRunning {
		return hypervisor.MigrationStatus{State: hypervisor.MigFailed, Error: "libvirt: no migration of this VM (the agent restarted?)"}, nil
	}
	// Paused after its migration, its confirmation lost with the
	// agent's connection: resuming or destroying it is the MA's call.
	return hypervisor.MigrationStatus{State: hypervisor.MigCompleted}, nil
}

func (d *Driver) outgoingStatus(ctx context.Context, m *outgoing) (hypervisor.MigrationStatus, error) {
	m.mu.Lock()
	state, errText, finished, final := m.state, m.err, m.finished, m.final
	m.mu.Unlock()
	var st hypervisor.MigrationStatus
	switch state {
	case hypervisor.MigActive:
		l, err := d.client()
		if err != nil {
			return st, err
		}
		typ, ps, err := l.DomainGetJobStats(m.dom, 0)
		if err != nil {
			return st, fmt.Errorf("libvirt: %s: job: %w", m.id, err)
		}
		if golibvirt.DomainJobType(typ) != golibvirt.DomainJobNone {
			st = jobStatus(paramsOf(ps))
		}
		if limit := maxRounds(m.p); !m.p.AutoConverge && st.Round > limit {
			// QEMU would go on forever: without auto-converge a
			// migration that did not converge in MaxRounds passes is
			// given up (the source runs on). Aborting waits for the
			// migration's goroutine; the driver's group owns the wait.
			why := fmt.Sprintf("libvirt: did not converge in %d rounds (dirty rate %.0f B/s, stream %.0f B/s); try auto-converge", limit, st.DirtyRate, st.Rate)
			m.mu.Lock()
			first := m.cancel == ""
			m.mu.Unlock()
			if first {
				d.wg.Add(1)
				go func() {
					defer d.wg.Done()
					if err := d.abort(context.WithoutCancel(ctx), m, why); err != nil {
						d.log.Warn("libvirt: giving up a migration", "vm", m.id, "err", err)
					}
				}()
			}
		}
	case hypervisor.MigCompleted:
		st = final
		st.Finished = finished
	}
	st.State, st.Error, st.Started = state, errText, m.start
	if state != hypervisor.MigActive {
		st.Finished = finished
	}
	return st, nil
}

func maxRounds(p hypervisor.MigrationParams) int {
	if p.MaxRounds > 0 {
		return p.MaxRounds
	}
	return hypervisor.DefaultMaxRounds
}

// incomingStatus: libvirt's Prepare creates the domain (paused, reason
// "migration", an incoming job); Finish ends the job and leaves it
// paused; a failed or cancelled migration removes it.
func (d *Driver) incomingStatus(id string, inc *incoming) (hypervisor.MigrationStatus, error) {
	st := hypervisor.MigrationStatus{Started: inc.start}
	l, dom, err := d.domain(id)
	if errors.Is(err, hypervisor.ErrNotFound) {
		d.mu.Lock()
		gone := inc.seen || inc.closed
		d.mu.Unlock()
		// Prepare not reached yet, unless libvirt's domain came and went
		// or the source's connection (which Prepare and Finish come
		// through) is over.
		if gone {
			st.State, st.Error = hypervisor.MigFailed, "libvirt: the incoming domain is gone (the migration failed or was cancelled)"
		} else {
			st.State = hypervisor.MigActive
		}
		return st, nil
	}
	if err != nil {
		return st, err
	}
	d.mu.Lock()
	inc.seen = true
	d.mu.Unlock()
	state, reason, err := l.DomainGetState(dom, 0)
	if err != nil {
		return st, fmt.Errorf("libvirt: %s: %w", id, err)
	}
	if stateOf(state, reason) == hypervisor.StateMigrating {
		st.State = hypervisor.MigActive
		return st, nil
	}
	// An incoming job answers "statistics are available only on the
	// source host"; none, an empty job.
	typ, _, err := l.DomainGetJobStats(dom, 0)
	var le golibvirt.Error
	if errors.As(err, &le) && le.Code == uint32(golibvirt.ErrOperationUnsupported) || err == nil && golibvirt.DomainJobType(typ) != golibvirt.DomainJobNone {
		st.State = hypervisor.MigActive
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("libvirt: %s: job: %w", id, err)
	}
	// libvirt's Finish succeeded: QEMU loaded the whole stream, device
	// state included, and the disks' mirrors (if any) were completed in
	// step before the switch-over. That, not a page checksum, is what
	// Verified means here.
	d.mu.Lock()
	if inc.ended.IsZero() {
		inc.ended = time.Now()
	}
	st.Finished = inc.ended
	d.mu.Unlock()
	st.State, st.Verified = hypervisor.MigCompleted, true
	return st, nil
}
