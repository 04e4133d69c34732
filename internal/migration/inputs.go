package migration

import (
	"log/slog"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// What a Machine is fed (inputs) and what it asks its driver to do
// (commands).

// Env is what the MMC knows of the world when a drive starts, checked
// before a planned migration changes anything.
type Env struct {
	SrcOnline, DstOnline bool
	// Spec is the VM's definition; nil if the source does not hold it.
	Spec *hypervisor.Spec
	// OtherHost is a host other than the source that reports the VM
	// ("" if none).
	OtherHost string
}

// Input is what happened.
type Input interface{ input() }

// Start begins a drive. Resumed: the migration was found open when the
// MMC started.
type Start struct {
	Resumed bool
	Env     Env
}

// Tick: the time NextTimeout asked for has come.
type Tick struct{}

// Posted: an agent, on its own authenticated session, posted its job's
// phase on the migration's topic.
type Posted struct {
	Host  string
	Role  Role
	Phase Phase
}

// Reply is the outcome of the Send numbered Seq. Report may be set with
// Err too (an agent that refused an op still says where it stands).
type Reply struct {
	Seq    uint64
	Report *Report
	Err    error
}

// Introduced is the outcome of Introduce, with the agents' round-trip
// times to the MMC measured then.
type Introduced struct {
	Err            error
	SrcRTT, DstRTT time.Duration
	// Path is the link's kind ("direct", "relayed"), once up; Took
	// how long the introduction took.
	Path string
	Took time.Duration
	// Note says why the direct path failed, when the link is relayed.
	Note string
}

// Persisted is the outcome of Persist: the record as written; or Stale
// with the record as it now stands (another write came first); or Err.
type Persisted struct {
	Rec   Record
	Stale bool
	Err   error
}

// Changed: the record was written elsewhere (an administrator's cancel).
type Changed struct{ Rec Record }

func (Start) input()  {}
func (Tick) input()   {}
func (Posted) input() {}
func (Reply) input()  {}

// LinkMoved says the agents' link moved to another path while the
// migration runs (a relayed link found a direct path): recorded, best
// effort, like progress.
type LinkMoved struct {
	Path string
	Note string
}

func (Introduced) input() {}
func (LinkMoved) input()  {}
func (Persisted) input()  {}
func (Changed) input()    {}

// Command is what the driver is to do.
type Command interface{ command() }

// Persist writes Rec if the stored version is still IfVersion; its
// outcome comes back as Persisted.
type Persist struct {
	Rec       Record
	IfVersion uint64
}

// Send sends Op to Host's agent; its outcome comes back as Reply{Seq}.
type Send struct {
	Seq   uint64
	Host  string
	Op    Op
	Order Order
}

// Introduce puts the two agents in touch for the migration's link (the
// listener expects the dialer); its outcome comes back as Introduced.
type Introduce struct{ Listener, Dialer string }

// Note posts text on the migration's topic for operators.
type Note struct{ Text string }

// Log is a line for the MMC's log.
type Log struct {
	Level slog.Level
	Msg   string
	Args  []any
}

// Ended: the migration reached its outcome (Rec, as persisted): the
// driver closes its books (policy, topic, audit).
type Ended struct{ Rec Record }

func (Persist) command()   {}
func (Send) command()      {}
func (Introduce) command() {}
func (Note) command()      {}
func (Log) command()       {}
func (Ended) command()     {}
