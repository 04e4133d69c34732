package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// AuditEntry is one security-relevant event: who did what to which object,
// when, from where, and whether it was allowed.
type AuditEntry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`  // "admin", "agent:<id>", "key:<id>", "system"
	Action  string    `json:"action"` // e.g. "enrol.request", "agent.approve", "login.refused"
	Target  string    `json:"target,omitempty"`
	Source  string    `json:"source,omitempty"` // network address
	Outcome string    `json:"outcome"`          // "ok" or "denied"
	Detail  string    `json:"detail,omitempty"`
}

// AuditAppend appends entries to the audit log, giving each the next
// sequence number (the entries' Seq is ignored).
type AuditAppend struct {
	Entries []AuditEntry `json:"entries"`
}

func init() { register(func() Command { return &AuditAppend{} }) }

// Kind implements Command.
func (*AuditAppend) Kind() CommandKind { return "audit.append" }

func (c *AuditAppend) apply(tx *bolt.Tx) (any, error) {
	b := tx.Bucket(bucketAudit)
	for _, e := range c.Entries {
		if _, err := appendSeq(b, func(n uint64) any { e.Seq = n; return e }); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// AppendAudit applies AuditAppend.
func (s *Store) AppendAudit(entries ...AuditEntry) error {
	_, err := s.Apply(&AuditAppend{Entries: entries})
	return err
}

// Audit returns up to limit entries with Seq > after, oldest first.
func (s *Store) Audit(after uint64, limit int) ([]AuditEntry, error) {
	return listSeq[AuditEntry](s, bucketAudit, after, limit, false, nil)
}

// AuditNewest returns the newest entries numbered above after, newest
// first, at most limit (0: all).
func (s *Store) AuditNewest(after uint64, limit int) ([]AuditEntry, error) {
	return listSeq[AuditEntry](s, bucketAudit, after, limit, true, nil)
}

// listSeq lists a bucket keyed by sequence number: the entries numbered
// above after, oldest or newest first, those keep accepts (nil: all), at
// most limit of them (0: no limit).
func listSeq[T any](s *Store, bucket []byte, after uint64, limit int, newest bool, keep func(T) bool) ([]T, error) {
	var out []T
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := c.Seek(seqKey(after + 1))
		step := c.Next
		if newest {
			k, v = c.Last()
			step = c.Prev
		}
		for ; k != nil && binary.BigEndian.Uint64(k) > after && (limit <= 0 || len(out) < limit); k, v = step() {
			var e T
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if keep == nil || keep(e) {
				out = append(out, e)
			}
		}
		return nil
	})
	return out, err
}

// AuditPrune removes the oldest audit entries: those with a time before
// Before (unless Before is zero) and those beyond the newest MaxEntries
// (unless it is 0), at most Limit of them (0: no bound) so that one
// transaction stays small on a log that grew large. Pruning only ever
// removes a prefix of the log: it stops at the first entry that is
// recent enough and within the count, so the log stays contiguous in
// its sequence numbers (an entry written out of time order — queued, or
// by a clock set back — waits for the entries before it). Its result is
// an AuditPruned.
type AuditPrune struct {
	Before     time.Time `json:"before,omitzero"`
	MaxEntries uint64    `json:"max_entries,omitempty"`
	Limit      int       `json:"limit,omitempty"`
}

// AuditPruned is what an AuditPrune removed.
type AuditPruned struct {
	Removed int    `json:"removed"`
	Left    uint64 `json:"left"` // entries still in the log
	More    bool   `json:"more"` // Limit stopped it: apply it again
}

func init() { register(func() Command { return &AuditPrune{} }) }

// Kind implements Command.
func (*AuditPrune) Kind() CommandKind { return "audit.prune" }

func (c *AuditPrune) apply(tx *bolt.Tx) (any, error) {
	b := tx.Bucket(bucketAudit)
	cur := b.Cursor()
	k, v := cur.First()
	if k == nil {
		return AuditPruned{}, nil
	}
	// The log is contiguous: its length follows from the first and the
	// last sequence number, without a walk over it.
	first := binary.BigEndian.Uint64(k)
	last := b.Sequence()
	left := last - first + 1
	var out AuditPruned
	// Each deletion seeks the first key again: a bbolt cursor moved on
	// after a Delete can skip a key.
	for ; k != nil; k, v = cur.First() {
		if c.Limit > 0 && out.Removed >= c.Limit {
			out.More = true
			break
		}
		tooMany := c.MaxEntries > 0 && left > c.MaxEntries
		if !tooMany {
			if c.Before.IsZero() {
				break
			}
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return nil, fmt.Errorf("store: decode audit entry %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if !e.Time.Before(c.Before) {
				break
			}
		}
		if err := cur.Delete(); err != nil {
			return nil, err
		}
		out.Removed++
		left--
	}
	out.Left = left
	return out, nil
}

// PruneAudit applies AuditPrune.
func (s *Store) PruneAudit(c AuditPrune) (AuditPruned, error) {
	return applyAs[AuditPruned](s, &c)
}
