package store

import (
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// IndexedCommand is a replicated log's entry for ApplyIndexedBatch: the
// command and the entry's index.
type IndexedCommand struct {
	Index uint64
	Cmd   Command
}

// BatchResult is one command's outcome in ApplyIndexedBatch: exactly
// what ApplyIndexed would have returned for it.
type BatchResult struct {
	Value any
	Err   error
}

// errRefusedInBatch aborts a batch transaction at a refused command.
var errRefusedInBatch = errors.New("refused in batch")

// ApplyIndexedBatch is ApplyIndexed for consecutive log entries, in one
// transaction: one commit (one fsync) for the batch instead of one per
// entry. Under an enrolment burst a replica applies hundreds of entries a
// second; committed one by one, the fsyncs serialised on the state
// machine's goroutine were the members' bottleneck.
//
// Results and database contents are those of applying the entries one
// by one with ApplyIndexed (the tests hold it to that). A refused command
// (an error that is not recorded) must write nothing, and bbolt has no
// savepoint to undo one command inside a transaction, so a batch meeting
// one is rolled back whole and applied entry by entry instead: commands
// are deterministic, so the rerun reaches the same results. Refusals are
// rare in the bursts that make batches large.
//
// A failed transaction (begin, read or commit) is reported on every
// entry of the batch, wrapping ErrStorage: the caller halts on the first.
func (s *Store) ApplyIndexedBatch(cmds []IndexedCommand) []BatchResult {
	out := make([]BatchResult, len(cmds))
	for _, ic := range cmds {
		if ic.Index == 0 {
			return s.applyEach(cmds, out)
		}
	}
	err := s.update(func(tx *bolt.Tx) error {
		cur, err := appliedIndex(tx)
		if err != nil {
			return err
		}
		last := cur
		for i, ic := range cmds {
			if ic.Index <= last {
				continue // already applied: ApplyIndexed's (nil, nil)
			}
			v, err := ic.Cmd.apply(tx)
			if r, ok := err.(recorded); ok {
				out[i] = BatchResult{v, fmt.Errorf("store: %s: %w", ic.Cmd.Kind(), r.err)}
			} else if err != nil {
				return errRefusedInBatch
			} else {
				out[i] = BatchResult{Value: v}
			}
			last = ic.Index
		}
		if last == cur {
			return nil
		}
		return tx.Bucket(bucketMeta).Put([]byte(appliedIndexKey), strconv.AppendUint(nil, last, 10))
	})
	switch {
	case errors.Is(err, errRefusedInBatch):
		clear(out)
		return s.applyEach(cmds, out)
	case err != nil:
		for i, ic := range cmds {
			out[i] = BatchResult{Err: fmt.Errorf("store: %s: %w: %w", ic.Cmd.Kind(), ErrStorage, err)}
		}
	}
	return out
}

func (s *Store) applyEach(cmds []IndexedCommand, out []BatchResult) []BatchResult {
	for i, ic := range cmds {
		out[i].Value, out[i].Err = s.ApplyIndexed(ic.Index, ic.Cmd)
	}
	return out
}
