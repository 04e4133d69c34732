package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Multifd: QEMU's migration over several connections, its pages spread
// over MigrationParams.Channels channels beside the main one. QEMU makes
// the channels itself, so a multifd migration uses unix: URIs instead of
// a handed-over descriptor (QEMU 7.2 opens multifd channels only to the
// address of a socket URI):
//
//   - the source's QEMU connects to a socket the driver listens on
//     (<id>.migout); the first connection is the main channel, which
//     MigrateOut returns to the MA as it returns the fd: socket pair's
//     end; each further one is a multifd channel, which the MA accepts
//     on the listener ListenChannels returned ("multifd") and carries
//     over a stream of its own — every channel a stream of the one SUDP
//     connection, under its one congestion controller;
//   - the destination's QEMU listens on <id>.mig (migrate-incoming
//     unix:); PrepareIncomingChannels connects the main channel itself,
//     before any multifd channel can arrive (QEMU 7.2 takes the first
//     connection for the main one), and the MA connects each multifd
//     stream with DialChannel.
//
// QEMU compresses nothing (multifd-compression none): the agents
// compress the streams on the link as the link calls for (zstream).
// Multifd does not combine with post-copy or XBZRLE in QEMU 7.2
// (migration.Options refuses both), nor with copying local disks (the
// disk path ignores Channels).

// chanMultifd names the multifd channel (hypervisor.ChannelMover).
const chanMultifd = "multifd"

// multifdListener accepts one outgoing multifd migration's connections:
// the first goes to main (MigrateOut), the rest to Accept's caller.
type multifdListener struct {
	*net.UnixListener
	path string
	main chan net.Conn // the first connection; buffered, once

	mu        sync.Mutex
	first     bool // the first connection was taken
	abandoned bool // MigrateOut gave up waiting for it
}

// Accept returns the next multifd channel's connection, after handing
// the first connection to main (or closing it, if MigrateOut gave up).
func (l *multifdListener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		first := !l.first
		l.first = true
		if first {
			// Under the lock, so that abandon sees it or it sees
			// abandon; main has room for this one connection.
			if l.abandoned {
				c.Close()
			} else {
				l.main <- c
			}
		}
		l.mu.Unlock()
		if !first {
			return c, nil
		}
	}
}

// abandon closes the main connection, whether it came already or comes
// later.
func (l *multifdListener) abandon() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.abandoned = true
	select {
	case c := <-l.main:
		c.Close()
	default:
	}
}

// ListenChannels implements hypervisor.ChannelMover: a multifd migration
// (p.Channels > 0) has its source's socket; any other has none.
func (d *Driver) ListenChannels(id string, p hypervisor.MigrationParams) (map[string]net.Listener, error) {
	if p.Channels <= 0 {
		return nil, nil
	}
	if p.Channels > hypervisor.MaxChannels {
		return nil, fmt.Errorf("qemu: %d migration channels (at most %d)", p.Channels, hypervisor.MaxChannels)
	}
	if _, err := d.spec(id); err != nil {
		return nil, err
	}
	// An earlier attempt's listener is closed first, and no listener
	// unlinks its path on close: Go's would remove whatever socket is
	// there by then — this one's.
	d.mu.Lock()
	if old := d.multifd[id]; old != nil {
		old.Close()
		delete(d.multifd, id)
	}
	d.mu.Unlock()
	path := d.path(id, "migout")
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("qemu: migration socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	l := &multifdListener{UnixListener: ln, path: path, main: make(chan net.Conn, 1)}
	d.mu.Lock()
	d.multifd[id] = l
	d.mu.Unlock()
	return map[string]net.Listener{chanMultifd: l}, nil
}

// migrateOutMultifd is MigrateOut for p.Channels > 0.
func (d *Driver) migrateOutMultifd(ctx context.Context, id string, p hypervisor.MigrationParams) (net.Conn, error) {
	d.mu.Lock()
	l := d.multifd[id]
	delete(d.multifd, id)
	d.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("qemu: VM %s: no migration socket (ListenChannels first)", id)
	}
	caps, params := migrationSettings(p)
	err := d.qmp(ctx, id, func(q *qmpConn) error {
		if err := d.arm(q, id, caps, params, nil); err != nil {
			return err
		}
		return d.launch(q, id, p, "unix:"+l.path)
	})
	if err != nil {
		l.abandon() // migrate may have been issued all the same
		return nil, err
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case c := <-l.main:
		return c, nil
	case <-t.C:
		err = errors.New("qemu: QEMU did not connect its migration stream in 10 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	l.abandon()
	_ = d.run(context.WithoutCancel(ctx), id, "migrate_cancel", nil, nil)
	return nil, err
}

// PrepareIncomingChannels implements hypervisor.ChannelPreparer: an
// incoming multifd migration (p.Channels > 0) listens on <id>.mig, and
// its main channel is connected at once; any other is PrepareIncoming's.
func (d *Driver) PrepareIncomingChannels(ctx context.Context, s hypervisor.Spec, p hypervisor.MigrationParams) (hypervisor.VM, net.Conn, error) {
	if p.Channels <= 0 || len(localDisks(s)) > 0 {
		return d.PrepareIncoming(ctx, s)
	}
	if p.Channels > hypervisor.MaxChannels {
		return hypervisor.VM{}, nil, fmt.Errorf("qemu: %d migration channels (at most %d)", p.Channels, hypervisor.MaxChannels)
	}
	vm, err := d.start(ctx, s, true)
	if err != nil {
		_ = d.removeCreated(s.Name)
		return hypervisor.VM{}, nil, err
	}
	path := d.path(vm.ID, "mig")
	_ = os.Remove(path)
	var conn net.Conn
	err = d.qmp(ctx, vm.ID, func(q *qmpConn) error {
		caps := []map[string]any{{"capability": "multifd", "state": true}}
		if err := q.run("migrate-set-capabilities", map[string]any{"capabilities": caps}, nil, nil); err != nil {
			return err
		}
		if err := q.run("migrate-set-parameters", multifdParams(p.Channels), nil, nil); err != nil {
			return err
		}
		return q.run("migrate-incoming", map[string]any{"uri": "unix:" + path}, nil, nil)
	})
	if err == nil {
		conn, err = d.dialIncoming(ctx, vm.ID)
	}
	if err != nil {
		if derr := d.Destroy(context.WithoutCancel(ctx), vm.ID); derr != nil {
			err = errors.Join(err, derr)
		}
		return hypervisor.VM{}, nil, err
	}
	vm.State = hypervisor.StateMigrating
	return vm, conn, nil
}

// DialChannel implements hypervisor.ChannelMover: one multifd channel's
// connection to incoming VM id's QEMU.
func (d *Driver) DialChannel(ctx context.Context, id, name string) (net.Conn, error) {
	if name != chanMultifd {
		return nil, fmt.Errorf("qemu: no migration channel %q", name)
	}
	if err := hypervisor.CheckName(id); err != nil {
		return nil, err
	}
	return d.dialIncoming(ctx, id)
}

// dialIncoming connects to incoming VM id's migration socket (QEMU
// creates it during migrate-incoming; a short wait covers a slow start).
func (d *Driver) dialIncoming(ctx context.Context, id string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var dl net.Dialer
	for {
		c, err := dl.DialContext(ctx, "unix", d.path(id, "mig"))
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("qemu: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qemu: VM %s's migration socket: %w", id, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// multifdParams are QEMU's parameters for channels multifd channels.
func multifdParams(channels int) map[string]any {
	return map[string]any{"multifd-channels": channels, "multifd-compression": "none"}
}
