package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// Every write to the store is a Command: a typed value that names what
// it does, carries everything its effect depends on (times included: a
// command never reads the clock), states the conditions under which it
// applies, and is applied through one entry point, Store.Apply, in one
// bbolt transaction. A command is encodable (EncodeCommand,
// DecodeCommand) so that a replicated log can carry it and every replica
// apply the same value to the same state with the same result — the
// shape of Nomad's FSM, where every write is a typed message through one
// raftApply. The convenience methods (CreateMigration, …) only build a
// command and call Apply.

// CommandKind names a command on the wire. Never reuse one.
type CommandKind string

// Command is one write.
type Command interface {
	// Kind is the command's wire name.
	Kind() CommandKind
	// apply makes the change inside tx and returns the command's result
	// (the record as written, where there is one). It must be
	// deterministic: same state, same command, same result.
	apply(tx *bolt.Tx) (any, error)
}

// ErrStale is a write conditional on a version that is no longer the
// stored one: someone else wrote first. Read again and decide again.
var ErrStale = errors.New("store: stale write (the record changed since it was read)")

// ErrConflict is a command whose conditions do not hold (e.g. a second
// open migration of one VM).
var ErrConflict = errors.New("store: conflict")

// ErrBadCommand wraps every DecodeCommand failure.
var ErrBadCommand = errors.New("store: malformed command")

// ErrStorage wraps a failure of the database itself (the commit of a
// command that held: I/O, a full disk, a closed store), as opposed to a
// command refused by its own conditions. A replica must not treat it as
// the command's result: the same command succeeds on the others.
var ErrStorage = errors.New("store: storage failure")

// MaxCommandSize bounds an encoded command.
const MaxCommandSize = 1 << 20

// commands maps each kind to a constructor of its zero value, for
// decoding. Commands are pointer types (so the decoder can fill them).
var commands = map[CommandKind]func() Command{}

// register adds a command kind (at package init only: the table is
// never written after).
func register(f func() Command) {
	k := f().Kind()
	if _, dup := commands[k]; dup {
		panic("store: command kind registered twice: " + string(k))
	}
	commands[k] = f
}

// recorded is a refusal that is itself state: apply wrote what the
// refusal leaves on record (e.g. the reason on an agent), and Apply
// commits that and still reports the refusal, with apply's result.
type recorded struct{ err error }

func (r recorded) Error() string { return r.err.Error() }
func (r recorded) Unwrap() error { return r.err }

// Apply carries out one command in one transaction. On error nothing is
// written and the result is nil, except for a refusal the command
// records (ErrNameTaken): then its write is committed and the result is
// the record as written.
//
// With an Applier set (SetApplier) Apply hands the command to it instead
// and returns its result: every typed write method goes through Apply,
// so this is where a replicated store routes them all through its log.
func (s *Store) Apply(c Command) (any, error) {
	if a := s.applier.Load(); a != nil {
		return (*a)(c)
	}
	return s.apply(0, c)
}

// Applier carries out a command on the store's behalf and returns
// Apply's result: for a replicated store, it proposes the command to
// the log and waits for it to be applied here (replica.Node.Apply).
type Applier func(Command) (any, error)

// SetApplier routes every later Apply (and so every write method)
// through a; nil restores direct application. Set it once, before the
// store is written concurrently.
//
// The applier must end in ApplyIndexed (a replicated log's FSM), never
// in Apply: ApplyIndexed bypasses the applier, so the FSM applying a
// proposed command does not propose it again.
func (s *Store) SetApplier(a Applier) {
	if a == nil {
		s.applier.Store(nil)
		return
	}
	s.applier.Store(&a)
}

// appliedIndexKey is the meta key of the replicated log's last index
// applied with a write (ApplyIndexed).
const appliedIndexKey = "raft.applied-index"

// ApplyIndexed is Apply for a replicated log's entry at index: in the
// same transaction as the command's write it records index as the
// store's applied index, and an entry at or below the recorded index is
// not applied again (result nil, no error). A replica replays its log
// after a restart onto a store that already has part of it; commands
// are not idempotent (an audit append would repeat), so the store must
// know where it stands. A refused command writes nothing, index
// included: replayed, it meets the same state and is refused again.
// It never goes through the Applier (SetApplier): it is the applier's
// end, the local write.
func (s *Store) ApplyIndexed(index uint64, c Command) (any, error) {
	if index == 0 {
		return nil, fmt.Errorf("store: %s: log index 0", c.Kind())
	}
	return s.apply(index, c)
}

// AppliedIndex is the last index ApplyIndexed wrote (0: none).
func (s *Store) AppliedIndex() (uint64, error) {
	var n uint64
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		n, err = appliedIndex(tx)
		return err
	})
	return n, err
}

// ResetAppliedIndex forgets the applied index, for a store that starts
// a new log: a replica bootstrapped anew on a data directory whose raft
// state is gone (a database restored from a backup alone) would
// otherwise skip the new log's entries as already applied.
func (s *Store) ResetAppliedIndex() error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Delete([]byte(appliedIndexKey))
	})
}

func appliedIndex(tx *bolt.Tx) (uint64, error) {
	v := tx.Bucket(bucketMeta).Get([]byte(appliedIndexKey))
	if v == nil {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", appliedIndexKey, err)
	}
	return n, nil
}

var errAlreadyApplied = errors.New("already applied")

func (s *Store) apply(index uint64, c Command) (any, error) {
	var out any
	var refused, cmdErr error
	err := s.update(func(tx *bolt.Tx) error {
		if index != 0 {
			cur, err := appliedIndex(tx)
			if err != nil {
				return err
			}
			if index <= cur {
				return errAlreadyApplied
			}
		}
		var err error
		out, err = c.apply(tx)
		if r, ok := err.(recorded); ok {
			refused = r.err
			err = nil
		}
		if err != nil {
			cmdErr = err
			return err
		}
		if index != 0 {
			return tx.Bucket(bucketMeta).Put([]byte(appliedIndexKey), strconv.AppendUint(nil, index, 10))
		}
		return nil
	})
	if errors.Is(err, errAlreadyApplied) {
		return nil, nil
	}
	if cmdErr != nil {
		return nil, fmt.Errorf("store: %s: %w", c.Kind(), cmdErr)
	}
	if err != nil {
		// The command held but the database could not begin or commit.
		return nil, fmt.Errorf("store: %s: %w: %w", c.Kind(), ErrStorage, err)
	}
	if refused != nil {
		return out, fmt.Errorf("store: %s: %w", c.Kind(), refused)
	}
	return out, nil
}

// envelope is a command on the wire.
type envelope struct {
	Kind CommandKind     `json:"kind"`
	Body json.RawMessage `json:"body"`
}

// EncodeCommand encodes c for a log.
func EncodeCommand(c Command) ([]byte, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("store: encode %s: %w", c.Kind(), err)
	}
	out, err := json.Marshal(envelope{Kind: c.Kind(), Body: body})
	if err != nil {
		return nil, err
	}
	if len(out) > MaxCommandSize {
		return nil, fmt.Errorf("store: %s is %d bytes, limit %d", c.Kind(), len(out), MaxCommandSize)
	}
	return out, nil
}

// DecodeCommand decodes what EncodeCommand produced. Unknown kinds,
// unknown fields and oversized input are refused.
func DecodeCommand(b []byte) (Command, error) {
	if len(b) > MaxCommandSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadCommand, len(b))
	}
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	mk, ok := commands[e.Kind]
	if !ok {
		return nil, fmt.Errorf("%w: unknown kind %q", ErrBadCommand, e.Kind)
	}
	c := mk()
	if err := strictUnmarshal(e.Body, c); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCommand, e.Kind, err)
	}
	return c, nil
}
