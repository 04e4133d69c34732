package replica

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/store"
)

// Result is what FSM.Apply returns for one log entry (raft hands it back
// through ApplyFuture.Response on the member that proposed the entry):
// the command's result and its error. A command refused by its own
// conditions (store.ErrStale, store.ErrConflict, …) is a result like any
// other: every member reaches the same refusal from the same state.
type Result struct {
	Value any
	Err   error
}

// ErrHalted is the error of every entry an FSM was given after it halted.
var ErrHalted = errors.New("replica: state machine halted")

// FSM applies the raft log to a store.Store: each entry is one encoded
// store.Command (store.EncodeCommand).
//
// Raft does not persist how far its FSM got: after a restart it
// restores the latest snapshot into the store (which rewinds it to the
// snapshot's index) and applies the entries after it, or replays the
// whole log when there is no snapshot. The store is durable, so it
// records the index of each entry in the entry's own transaction
// (store.ApplyIndexed) and skips entries it already has.
//
// An entry this member cannot apply deterministically halts it: an entry
// that does not decode (a command kind from a newer member, or
// corruption) or a storage failure (the commit failed here but succeeds
// on the others). Skipping the entry would let this member's state
// diverge silently from its peers' while it keeps serving; hashicorp's
// own FSMs panic there. A halted FSM applies nothing more (every later
// entry gets ErrHalted), refuses to snapshot (a snapshot would record
// the diverged state as if it were the log's), and reports the cause
// once on Fatal(); the owner must stop the member. Raft itself keeps
// running, so the cause is also logged. Restarting with a binary that
// knows the kind replays the log from the last good snapshot.
type FSM struct {
	st  *store.Store
	log *slog.Logger

	// observer is told of applied entries and restores (set before raft
	// starts; nil: nobody).
	observer FSMObserver

	mu     sync.Mutex
	halted error

	fatal chan error // buffered 1: the first halt
}

// NewFSM returns the state machine over st.
func NewFSM(st *store.Store, log *slog.Logger) *FSM {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &FSM{st: st, log: log, fatal: make(chan error, 1)}
}

// Fatal delivers the cause of a halt, once.
func (f *FSM) Fatal() <-chan error { return f.fatal }

// Halted returns the cause of the halt, nil while the FSM runs.
func (f *FSM) Halted() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.halted
}

func (f *FSM) halt(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halted != nil {
		return
	}
	f.halted = err
	f.log.Error("replica: state machine halted; this member must stop", "err", err)
	f.fatal <- err
}

// Apply implements raft.FSM. It always returns a *Result.
func (f *FSM) Apply(l *raft.Log) any {
	if err := f.Halted(); err != nil {
		return &Result{Err: fmt.Errorf("%w: %w", ErrHalted, err)}
	}
	c, err := store.DecodeCommand(l.Data)
	if err != nil {
		err = fmt.Errorf("replica: log entry %d (term %d): %w", l.Index, l.Term, err)
		f.halt(err)
		return &Result{Err: fmt.Errorf("%w: %w", ErrHalted, err)}
	}
	v, err := f.st.ApplyIndexed(l.Index, c)
	if errors.Is(err, store.ErrStorage) {
		err = fmt.Errorf("replica: log entry %d (term %d): %w", l.Index, l.Term, err)
		f.halt(err)
		return &Result{Err: fmt.Errorf("%w: %w", ErrHalted, err)}
	}
	if f.observer != nil {
		f.observer.Applied(c, v, err)
	}
	return &Result{Value: v, Err: err}
}

// ApplyBatch implements raft.BatchingFSM: raft hands over the entries
// it committed together, and the store applies their commands in one
// transaction (store.ApplyIndexedBatch: one fsync per batch, not per
// entry). Each entry's result is what Apply would have returned for it;
// configuration entries (raft's own) get nil, as raft gives Apply none.
// An undecodable entry or a storage failure halts the FSM at that entry:
// the entries before it are applied, it and every later one get
// ErrHalted.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	halted := func(from int, err error) []any {
		for i := from; i < len(logs); i++ {
			if logs[i].Type == raft.LogCommand {
				out[i] = &Result{Err: fmt.Errorf("%w: %w", ErrHalted, err)}
			}
		}
		return out
	}
	if err := f.Halted(); err != nil {
		return halted(0, err)
	}
	cmds := make([]store.IndexedCommand, 0, len(logs))
	at := make([]int, 0, len(logs)) // cmds[j] is logs[at[j]]
	stop, decodeErr := len(logs), error(nil)
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := store.DecodeCommand(l.Data)
		if err != nil {
			stop, decodeErr = i, fmt.Errorf("replica: log entry %d (term %d): %w", l.Index, l.Term, err)
			break
		}
		cmds = append(cmds, store.IndexedCommand{Index: l.Index, Cmd: c})
		at = append(at, i)
	}
	for j, r := range f.st.ApplyIndexedBatch(cmds) {
		i := at[j]
		if errors.Is(r.Err, store.ErrStorage) {
			err := fmt.Errorf("replica: log entry %d (term %d): %w", logs[i].Index, logs[i].Term, r.Err)
			f.halt(err)
			return halted(i, err)
		}
		if f.observer != nil {
			f.observer.Applied(cmds[j].Cmd, r.Value, r.Err)
		}
		out[i] = &Result{Value: r.Value, Err: r.Err}
	}
	if decodeErr != nil {
		f.halt(decodeErr)
		return halted(stop, decodeErr)
	}
	return out
}

// Snapshot implements raft.FSM: it begins a read transaction (cheap, on
// the FSM goroutine); Persist copies the database from it while later
// entries apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.Halted(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHalted, err)
	}
	sn, err := f.st.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{sn: sn}, nil
}

// Restore implements raft.FSM: the store's whole content becomes the
// snapshot's. A restore is how a halted member gets a leader's state,
// but it does not clear the halt: the entries after the snapshot are
// the ones it could not apply.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.st.Restore(rc); err != nil {
		return fmt.Errorf("replica: restore: %w", err)
	}
	if f.observer != nil {
		f.observer.Restored()
	}
	return nil
}

// FSMObserver is told, on raft's FSM goroutine, of every entry applied
// to the store (with the store's result) and of every snapshot restored
// into it: a member keeps what it derives from the store (its view of
// the agents, the members' keys) current with them. It must return
// quickly and must not write to the store (a write waits for this very
// goroutine).
type FSMObserver interface {
	Applied(c store.Command, v any, err error)
	Restored()
}

type fsmSnapshot struct{ sn *store.Snapshot }

// Persist implements raft.FSMSnapshot: on error the sink is cancelled
// (raft's contract), else closed.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.sn.WriteTo(sink); err != nil {
		sink.Cancel() //nolint:errcheck // the write error is the one to report
		return err
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (s *fsmSnapshot) Release() { s.sn.Close() }

var _ raft.BatchingFSM = (*FSM)(nil)
