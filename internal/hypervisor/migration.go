package hypervisor

import (
	"context"
	"net"
	"time"
)

// Live migration, as the migration agent (MA) drives it through a driver.
//
// The shape is QEMU's: the hypervisor process itself produces (source) or
// consumes (destination) the migration stream, through a file descriptor
// the driver hands it — one end of a socket pair whose other end the
// driver returns to the MA. The MA only carries bytes between that end and
// its SUDP stream to the peer MA; it never interprets them. The stream is
// bidirectional (QEMU's post-copy sends page requests back).
//
// Authority: a migration never makes two copies runnable. The source stops
// itself for the final copy and then stays paused ("postmigrate") until
// the MA either resumes it (rollback) or destroys it (commit); it resumes
// on its own only if the stream fails before the last byte was sent, when
// the destination cannot have a complete image. The destination stays
// paused after it has received and verified the image until the MA
// resumes it (commit) or destroys it (rollback). Which of the two the MA
// does is the MMC's persisted decision.

// MigrationParams tune an outgoing migration (QEMU: migrate-set-parameters
// and capabilities).
type MigrationParams struct {
	// MaxBandwidth caps the stream in bytes/s (0: unlimited).
	MaxBandwidth float64 `json:"max_bandwidth,omitempty"`
	// DowntimeLimit is the longest acceptable pause: the final
	// stop-and-copy starts once the remaining dirty memory can be sent in
	// this time at the measured rate (0: DefaultDowntimeLimit).
	DowntimeLimit time.Duration `json:"downtime_limit,omitempty"`
	// Compress compresses page data (zstd) on the stream.
	Compress bool `json:"compress,omitempty"`
	// StreamCompression is how the migration agent, not the hypervisor,
	// compresses the stream on the link: StreamCompressionAuto ("" too),
	// StreamCompressionZstd or StreamCompressionOff. Drivers ignore it.
	StreamCompression string `json:"stream_compression,omitempty"`
	// Channels is the number of parallel channels the hypervisor moves
	// memory over beside its main stream (QEMU multifd), each carried by
	// the agents as its own stream of the link (0: the main stream
	// only). Drivers without channels ignore it.
	Channels int `json:"channels,omitempty"`
	// AutoConverge throttles the guest when rounds stop shrinking.
	AutoConverge bool `json:"auto_converge,omitempty"`
	// MaxRounds bounds the iterative rounds before the driver gives up
	// converging (0: DefaultMaxRounds); what happens then is the
	// driver's documented choice (the simulated VM forces the final copy
	// when auto-converge is on and fails the migration otherwise).
	MaxRounds int `json:"max_rounds,omitempty"`
	// Postcopy allows post-copy, the last step of the convergence ladder
	// (pre-copy within the downtime budget, then auto-converge, then
	// post-copy): a pre-copy still not converged after MaxRounds asks to
	// switch (MigrationStatus.Postcopy becomes PostcopyReady) instead of
	// being given up. Drivers without post-copy ignore it.
	Postcopy bool `json:"postcopy,omitempty"`
}

// StreamCompression settings (package zstream): auto compresses a chunk
// while the link holds the stream back and the data compresses; zstd
// compresses every chunk that compresses; off sends the stream as the
// hypervisor wrote it.
const (
	StreamCompressionAuto = "auto"
	StreamCompressionZstd = "zstd"
	StreamCompressionOff  = "off"
)

// ValidStreamCompression accepts a StreamCompression setting.
func ValidStreamCompression(s string) bool {
	switch s {
	case "", StreamCompressionAuto, StreamCompressionZstd, StreamCompressionOff:
		return true
	}
	return false
}

// MaxChannels bounds MigrationParams.Channels (QEMU allows 255; a WAN
// link gains nothing from many).
const MaxChannels = 16

// Migration defaults.
const (
	DefaultDowntimeLimit = 300 * time.Millisecond
	DefaultMaxRounds     = 30
)

// Migration states reported by MigrationStatus.
const (
	MigActive    = "active"    // source: sending; destination: receiving
	MigCompleted = "completed" // source: everything sent, VM paused (postmigrate); destination: image received and verified, VM paused
	MigFailed    = "failed"    // see Error; source: VM resumed (running again) unless it had completed
	MigCancelled = "cancelled" // source: cancelled by the MA, VM running
)

// Post-copy states (MigrationStatus.Postcopy).
const (
	// PostcopyReady: the source's pre-copy did not converge and post-copy
	// is allowed; it goes on with pre-copy until told to switch
	// (PostcopyMigrator.StartPostcopy).
	PostcopyReady = "ready"
	// PostcopyActive: switched. The source is stopped for good and the
	// destination has the device state and can run, pulling the pages it
	// lacks from the source as it touches them: from here on neither copy
	// is a VM without the other, until the destination has every page
	// (state completed on both).
	PostcopyActive = "active"
)

// MigrationStatus is a migration's progress as the hypervisor reports it
// (QEMU: query-migrate).
type MigrationStatus struct {
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// Round is the current pass over memory: 1 is the full copy, later
	// ones resend dirtied pages; the last is the stop-and-copy.
	Round int `json:"round"`
	// Total is the guest memory size; Remaining the bytes still dirty
	// (source) or not yet received (destination, first round only).
	Total     uint64 `json:"total"`
	Remaining uint64 `json:"remaining"`
	// Transferred counts page bytes sent or received (before compression);
	// StreamBytes the bytes written to or read from the stream fd.
	Transferred uint64 `json:"transferred"`
	StreamBytes uint64 `json:"stream_bytes"`
	ZeroPages   uint64 `json:"zero_pages"`
	// DirtyRate is the guest's measured dirty rate (bytes/s) in the last
	// round; Rate the measured stream rate (bytes/s).
	DirtyRate float64 `json:"dirty_rate"`
	Rate      float64 `json:"rate"`
	// ExpectedDowntime is Remaining / Rate: the pause a stop-and-copy now
	// would cost.
	ExpectedDowntime time.Duration `json:"expected_downtime"`
	// Throttle is the auto-converge throttle (0: none, 0.99: the guest
	// gets 1% of its CPU and dirty rate).
	Throttle float64 `json:"throttle,omitempty"`
	// PausedAt is when the source paused for the final copy. Verified
	// (destination) says the driver checked the image it received, and
	// means what that driver can check: the simulated VM, that every
	// page's checksum matched; QEMU, that it loaded the whole stream and
	// the device state (and mirrored disks were completed in step);
	// libvirt, that its Finish succeeded, which means the same. QEMU's
	// stream has no page checksums: never read it as more.
	PausedAt time.Time `json:"paused_at,omitzero"`
	Verified bool      `json:"verified,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// Postcopy is "", PostcopyReady or PostcopyActive.
	Postcopy string `json:"postcopy,omitempty"`
}

// Migrator is implemented by drivers that can live-migrate.
type Migrator interface {
	// MigrateOut starts migrating VM id and returns the MA's end of the
	// stream. The driver closes its own end when the migration ends; the
	// MA closes the returned conn when it is done with it.
	MigrateOut(ctx context.Context, id string, p MigrationParams) (net.Conn, error)
	// PrepareIncoming starts a VM of spec s waiting for a migration stream
	// (QEMU: -incoming defer + migrate-incoming) and returns the MA's
	// end of that stream.
	PrepareIncoming(ctx context.Context, s Spec) (VM, net.Conn, error)
	// MigrationStatus reports VM id's migration (either side).
	MigrationStatus(ctx context.Context, id string) (MigrationStatus, error)
	// CancelMigration stops an outgoing migration; the source VM runs on.
	CancelMigration(ctx context.Context, id string) error
}

// PostcopyMigrator is implemented by drivers that can switch a migration
// to post-copy.
type PostcopyMigrator interface {
	// StartPostcopy switches VM id's outgoing migration to post-copy (the
	// source stops; the destination can be resumed once its status says
	// PostcopyActive). It does nothing for a migration that switched
	// already.
	StartPostcopy(ctx context.Context, id string) error
}

// DowntimeSetter is implemented by drivers whose downtime limit can be
// changed while a migration runs. The source's MA lowers it by the queue
// its link holds: the final copy's bytes wait behind that queue, which the
// limit the MMC computed (from its sessions' round trips) cannot see.
type DowntimeSetter interface {
	// SetDowntimeLimit sets outgoing migration id's stop-and-copy limit.
	SetDowntimeLimit(ctx context.Context, id string, d time.Duration) error
}

// BandwidthSetter is implemented by drivers whose migration bandwidth cap
// can be changed while a migration runs (an operator's request).
type BandwidthSetter interface {
	// SetMaxBandwidth sets outgoing migration id's cap in bytes/s
	// (0: none).
	SetMaxBandwidth(ctx context.Context, id string, bytesPerSec float64) error
}

// DiskMover is implemented by drivers whose migrations also copy a VM's
// local (not shared) disks, over a second channel beside the migration
// stream: QEMU mirrors them to an NBD server the destination runs. Each
// end of that channel is a local Unix socket; the migration agents carry
// its connections over further streams of their link. The source's MA
// listens on a socket and passes its path to MigrateOutDisks; the
// destination's MA connects each connection it receives to
// IncomingDiskSocket. The disks are copied before the memory, and kept in
// step until the switch-over.
type DiskMover interface {
	// MovesDisks reports whether migrating VM id copies disks.
	MovesDisks(id string) bool
	// MigrateOutDisks is MigrateOut for such a VM; the driver connects
	// to diskSocket for the disk channel.
	MigrateOutDisks(ctx context.Context, id string, p MigrationParams, diskSocket string) (net.Conn, error)
	// IncomingDiskSocket is where incoming VM id serves its disks ("" if
	// it receives none).
	IncomingDiskSocket(id string) string
}

// ChannelMover is implemented by drivers whose hypervisor makes further
// connections of its own for a migration, each on a local Unix socket
// of its choosing (libvirt: the QEMU migration stream and the NBD disk
// stream, on sockets whose paths must be the same on both hosts). The
// source's MA accepts each connection on the driver's listeners and
// carries it over its own stream of the link, named by its channel; the
// destination's MA asks the driver to connect it at its end.
type ChannelMover interface {
	// ListenChannels (source) opens the listeners of VM id's outgoing
	// migration, by channel name (ValidChannel names), before
	// MigrateOut is called; the MA closes them when the job ends.
	// p are the migration's parameters (a driver may open none for
	// some).
	ListenChannels(id string, p MigrationParams) (map[string]net.Listener, error)
	// DialChannel (destination) connects one connection of channel name
	// for incoming VM id.
	DialChannel(ctx context.Context, id, name string) (net.Conn, error)
}

// ChannelPreparer is implemented by drivers whose destination must know
// the migration's parameters before the stream starts (QEMU multifd:
// its channel count); the MA prepares through it instead of
// Migrator.PrepareIncoming.
type ChannelPreparer interface {
	PrepareIncomingChannels(ctx context.Context, s Spec, p MigrationParams) (VM, net.Conn, error)
}

// MaxChannelName bounds a ChannelMover channel's name.
const MaxChannelName = 16

// ValidChannel accepts a channel name: 1–MaxChannelName lower-case
// letters and digits (it travels on the link and names a socket).
func ValidChannel(name string) bool {
	if name == "" || len(name) > MaxChannelName {
		return false
	}
	for _, c := range []byte(name) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// ExpectedDowntime is MigrationStatus.ExpectedDowntime for remaining bytes
// at rate bytes/s (0 when no rate is known; at most 10⁶ s).
func ExpectedDowntime(remaining uint64, rate float64) time.Duration {
	if rate <= 0 {
		return 0
	}
	return time.Duration(min(float64(remaining)/rate, 1e6) * float64(time.Second))
}
