package migration

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Options are a migration's parameters as an administrator (or the
// policy engine) asked for them. The admin API's request, the stored
// record and the API's view embed this one type, so an option is added
// here (and mapped to the hypervisor in Params) and nowhere else.
type Options struct {
	// MaxRate caps the migration stream in bytes/s (0: no cap).
	MaxRate float64 `json:"max_bandwidth,omitempty"`
	// AllowPostcopy lets a pre-copy that has not converged after
	// MaxRounds passes (0: the hypervisor's default) switch to
	// post-copy; without it such a migration is given up, the VM running
	// on at the source.
	AllowPostcopy bool `json:"allow_postcopy,omitempty"`
	MaxRounds     int  `json:"max_rounds,omitempty"`
	// DowntimeLimitMS is the downtime aimed at, from the source's pause
	// to the destination running (0: 300 ms).
	DowntimeLimitMS int64 `json:"downtime_limit_ms,omitempty"`
	// Compress: pages sent again go as deltas (QEMU's XBZRLE) or
	// compressed (the simulated VM's zstd).
	Compress bool `json:"compress,omitempty"`
	// StreamCompression is how the agents compress the stream on the
	// link, whatever the hypervisor: "auto" ("" too: zstd for each chunk
	// while the link holds the stream back and the data compresses),
	// "zstd" (every chunk that compresses) or "off".
	StreamCompression string `json:"stream_compression,omitempty"`
	// Channels: the hypervisor moves memory over this many parallel
	// channels beside its main stream (QEMU multifd), each its own
	// stream of the agents' link (0: the main stream only). Not with
	// post-copy or Compress (QEMU 7.2 combines neither with multifd).
	Channels int `json:"channels,omitempty"`
}

// Option bounds.
const (
	MaxRoundsLimit    = 1000
	MaxChannels       = hypervisor.MaxChannels
	DowntimeLimitMax  = 60_000 // ms
	DefaultDowntime   = hypervisor.DefaultDowntimeLimit
	optionsErrorHints = "max_bandwidth must not be negative; max_rounds is 0–1000; downtime_limit_ms 0–60000; stream_compression auto, zstd or off; channels 0–16, not with allow_postcopy or compress"
)

// ErrBadOptions wraps every Options.Check failure.
var ErrBadOptions = errors.New("migration: bad options")

// Check refuses options no migration can run with.
func (o Options) Check() error {
	if o.MaxRate < 0 || o.MaxRounds < 0 || o.MaxRounds > MaxRoundsLimit || o.DowntimeLimitMS < 0 || o.DowntimeLimitMS > DowntimeLimitMax ||
		!hypervisor.ValidStreamCompression(o.StreamCompression) ||
		o.Channels < 0 || o.Channels > MaxChannels || (o.Channels > 0 && (o.AllowPostcopy || o.Compress)) {
		return fmt.Errorf("%w: %s", ErrBadOptions, optionsErrorHints)
	}
	return nil
}

// DowntimeLimit is the downtime aimed at.
func (o Options) DowntimeLimit() time.Duration {
	if o.DowntimeLimitMS > 0 {
		return time.Duration(o.DowntimeLimitMS) * time.Millisecond
	}
	return DefaultDowntime
}

// Params are the options as the source's hypervisor is given them, with
// stopAndCopy the part of the downtime limit its final copy may take
// (see Machine: the rest is fixed costs measured on the path).
func (o Options) Params(stopAndCopy time.Duration) hypervisor.MigrationParams {
	return hypervisor.MigrationParams{MaxBandwidth: o.MaxRate, DowntimeLimit: stopAndCopy, AutoConverge: true,
		Postcopy: o.AllowPostcopy, MaxRounds: o.MaxRounds, Compress: o.Compress, StreamCompression: o.StreamCompression, Channels: o.Channels}
}

// Record is the persisted record of one migration: what was asked
// (Options), where it stands (State), and its report. Version counts the
// writes: every write names the version it read, and one that lost a
// race (an administrator's cancel, say) is refused rather than
// overwriting it.
type Record struct {
	ID   string `json:"id"`
	VM   string `json:"vm"`
	From string `json:"from"`
	To   string `json:"to"`
	// FromAgent and ToAgent are the agent ids holding From and To when
	// the migration was planned: orders go to these agents, not to
	// whoever holds the names later, and the commit places the VM on
	// ToAgent in the MMC's inventory. Empty in records written before
	// the inventory (the names are used then).
	FromAgent string  `json:"from_agent,omitempty"`
	ToAgent   string  `json:"to_agent,omitempty"`
	State     State   `json:"state"`
	Progress  float64 `json:"progress"`
	Reason    string  `json:"reason"`
	By        string  `json:"by"` // "admin", "policy" or "evacuation"
	// Group is the evacuation (package evacuation) the migration is
	// part of, if any.
	Group string `json:"group,omitempty"`
	// StartAt, if set, holds the transfer until then once the
	// destination is prepared and the link is up (at most MaxStartHold
	// after Created): an evacuation prepares the next VM on a link
	// while the last one still sends, and starts its data when that
	// transfer is expected to end, so the two do not share the link.
	StartAt time.Time `json:"start_at,omitzero"`
	Options
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Version uint64    `json:"version"`

	// Set by the orchestrator.
	Error string `json:"error,omitempty"` // why it failed or was rolled back
	// CancelRequested makes a cancel survive an MMC restart between the
	// request and the rollback.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// Outcome is the final state a rollback ends in (cancelled or failed).
	Outcome State `json:"outcome,omitempty"`
	// Path is how the agents' link runs once it exists: "direct" (a
	// path between them, through their NATs if any: package punch) or
	// "relayed".
	Path string `json:"path,omitempty"`
	// LinkMS is how long the introduction took, from the MMC's first
	// order to the link being up (hole punching included): the first
	// migration byte can flow from then.
	LinkMS int64 `json:"link_ms,omitempty"`
	// PathNote says why no direct path was found, for a relayed link.
	PathNote string `json:"path_note,omitempty"`
	// FirstByteMS is how long from the MMC's first order of the
	// introduction to the migration stream's first byte at the
	// destination (link, preparation, the start order): the wait before
	// any memory moves. 0 when unknown (the MMC restarted meanwhile).
	FirstByteMS int64     `json:"first_byte_ms,omitempty"`
	Started     time.Time `json:"started,omitzero"`    // transfer started
	PausedAt    time.Time `json:"paused_at,omitzero"`  // source paused for the final copy (MMC clock)
	ResumedAt   time.Time `json:"resumed_at,omitzero"` // destination resumed (MMC clock)
	// The switch-over's timeline between PausedAt and ResumedAt, for
	// finding where downtime goes (MMC clock): the source wrote the
	// stream's last byte, the destination verified the image, the MMC
	// recorded the commit.
	SentAt time.Time `json:"sent_at,omitzero"`
	// ArmedAt: the source's transfer had completed (its copy paused for
	// good) and the destination was told to resume by itself once its
	// image verifies. From this write on the orchestrator rolls back only
	// on the destination's own report that its copy failed.
	ArmedAt     time.Time `json:"armed_at,omitzero"`
	VerifiedAt  time.Time `json:"verified_at,omitzero"`
	CommittedAt time.Time `json:"committed_at,omitzero"`
	// Postcopy: the migration switched to post-copy (the destination ran
	// from CommittedAt while it pulled the rest of the memory).
	Postcopy bool      `json:"postcopy,omitempty"`
	Finished time.Time `json:"finished,omitzero"`
	// Final report.
	// PrepareMS is planning to the transfer's start: the destination
	// prepared, the link introduced (TotalMS starts where it ends).
	PrepareMS   int64  `json:"prepare_ms,omitempty"`
	TotalMS     int64  `json:"total_ms"`
	DowntimeMS  int64  `json:"downtime_ms"`
	BytesOnWire uint64 `json:"bytes_on_wire"`
	Transferred uint64 `json:"transferred,omitempty"` // page bytes, before compression
	Rounds      int    `json:"rounds,omitempty"`
	// Verified: the destination's driver checked the image it received
	// (hypervisor.MigrationStatus.Verified says what each driver
	// checks).
	Verified bool `json:"verified"`
	// Cleanup lists agents still to be told to drop their side after the
	// outcome was decided (offline at the time): see Cleanup.
	Cleanup []string `json:"cleanup,omitempty"`
}

// Armed reports whether the destination was told to resume by itself.
func (r Record) Armed() bool { return !r.ArmedAt.IsZero() }

// ErrNotCancellable matches every reason CheckCancel refuses.
var ErrNotCancellable = errors.New("migration: cannot be cancelled")

// NotCancellable is CheckCancel's refusal: its text is the reason alone.
type NotCancellable struct{ Reason string }

func (e *NotCancellable) Error() string { return e.Reason }

// Is makes a refusal match ErrNotCancellable.
func (e *NotCancellable) Is(target error) bool { return target == ErrNotCancellable }

// CheckCancel says whether an administrator may cancel r now. A
// migration past its commit (switch-over), armed for it, or switching
// to post-copy cannot be: the destination is, or is about to be, the VM.
func CheckCancel(r Record) error {
	why := ""
	switch {
	case !r.State.Open():
		why = fmt.Sprintf("migration %s is %s", r.ID, r.State)
	case r.State == SwitchOver:
		why = fmt.Sprintf("migration %s is committed (switch-over): too late to cancel", r.ID)
	case r.Armed() && r.State == Transferring:
		why = fmt.Sprintf("migration %s has sent its last byte and its destination resumes once verified: too late to cancel", r.ID)
	case r.State == Postcopy:
		why = fmt.Sprintf("migration %s is switching to post-copy: too late to cancel", r.ID)
	case r.State == RollingBack:
		why = fmt.Sprintf("migration %s is already rolling back", r.ID)
	case r.CancelRequested:
		why = fmt.Sprintf("migration %s is already being cancelled", r.ID)
	default:
		return nil
	}
	return &NotCancellable{Reason: why}
}

// A cleanup is an order left over from a decided migration whose agent
// was away: "finish:HOST" (destroy the source copy) or "abort:HOST"
// (destroy the destination copy).

// CleanupEntry names a cleanup.
func CleanupEntry(op Op, host string) string {
	return strings.TrimPrefix(string(op), "migrate.") + ":" + host
}

// ParseCleanup reads a cleanup entry.
func ParseCleanup(c string) (op Op, host string, ok bool) {
	verb, host, found := strings.Cut(c, ":")
	op = Op("migrate." + verb)
	return op, host, found && (op == OpFinish || op == OpAbort) && host != ""
}
