package sim

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/simvm"
)

// Live migration, QEMU-shaped: the VM process itself writes (source) or
// reads (destination) the migration stream, through one end of a socket
// pair that the driver passes over the VM's control socket (SCM_RIGHTS);
// the other end goes to the migration agent, which carries the bytes to
// its peer. The driver keeps nothing: the migration's state lives in the
// VM process and is read back with query-migrate, so an agent restart
// loses nothing.
//
// VM states: a source is "migrating" while its migration is active and
// after it completed, while it waits paused for the commit (destroy) or
// the rollback (resume); an incoming VM is "migrating" from its start
// until it is resumed, unless its migration failed: then it is "paused"
// and refuses to resume. MigrationStatus of a VM that never migrated has
// an empty State.

// MigrateOut implements hypervisor.Migrator.
func (d *Driver) MigrateOut(ctx context.Context, id string, p hypervisor.MigrationParams) (net.Conn, error) {
	return d.passStream(ctx, id, simvm.Request{Op: "migrate", Params: &p})
}

// PrepareIncoming implements hypervisor.Migrator: it starts VM s.Name
// with --incoming (spec file and all, like Create, so that List shows it
// and a restarted agent re-adopts it) and hands it the stream.
func (d *Driver) PrepareIncoming(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, net.Conn, error) {
	vm, err := d.start(ctx, s, true)
	if err != nil {
		return hypervisor.VM{}, nil, err
	}
	conn, err := d.passStream(ctx, vm.ID, simvm.Request{Op: "migrate-incoming"})
	if err != nil {
		if derr := d.Destroy(context.WithoutCancel(ctx), vm.ID); derr != nil {
			err = errors.Join(err, derr)
		}
		return hypervisor.VM{}, nil, err
	}
	return vm, conn, nil
}

// MigrationStatus implements hypervisor.Migrator.
func (d *Driver) MigrationStatus(ctx context.Context, id string) (hypervisor.MigrationStatus, error) {
	resp, err := d.call(ctx, id, simvm.Request{Op: "query-migrate"})
	if err != nil {
		return hypervisor.MigrationStatus{}, err
	}
	if resp.Migration == nil {
		return hypervisor.MigrationStatus{}, fmt.Errorf("sim: %s: query-migrate answered no status", id)
	}
	return *resp.Migration, nil
}

// SetMaxBandwidth implements hypervisor.BandwidthSetter.
func (d *Driver) SetMaxBandwidth(ctx context.Context, id string, bytesPerSec float64) error {
	_, err := d.call(ctx, id, simvm.Request{Op: "migrate-set-bandwidth", Params: &hypervisor.MigrationParams{MaxBandwidth: bytesPerSec}})
	return err
}

// CancelMigration implements hypervisor.Migrator. It returns once the
// source runs again (or was paused before the migration).
func (d *Driver) CancelMigration(ctx context.Context, id string) error {
	_, err := d.call(ctx, id, simvm.Request{Op: "migrate-cancel"})
	return err
}

// MemoryDigest is the hex SHA-256 of VM id's whole memory (for tests and
// operators: a paused source and its verified destination are equal).
func (d *Driver) MemoryDigest(ctx context.Context, id string) (string, error) {
	resp, err := d.call(ctx, id, simvm.Request{Op: "memory-digest"})
	if err != nil {
		return "", err
	}
	return resp.Digest, nil
}

// passStream makes a socket pair, sends one end to VM id with req, and
// returns the other as the migration agent's conn.
func (d *Driver) passStream(ctx context.Context, id string, req simvm.Request) (net.Conn, error) {
	theirs, mine, err := hypervisor.StreamPair()
	if err != nil {
		return nil, err
	}
	// The VM holds its own copy once the call returns; ours must go, or
	// the agent would never see EOF when the VM closes the stream.
	_, err = d.callFD(ctx, id, req, theirs)
	theirs.Close()
	if err != nil {
		mine.Close()
		return nil, fmt.Errorf("sim: %s %s: %w", req.Op, id, err)
	}
	return mine, nil
}
