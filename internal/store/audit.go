package store

import (
	"encoding/json"
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
	var out []AuditEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}
