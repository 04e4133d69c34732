package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/evacuation"
	"github.com/ferry-vm/ferry/internal/migration"
)

// RecordsPrune removes history older than its cut-offs: events (logs and
// alarms) stored before EventsBefore, and migration records and
// evacuations that ended before RecordsBefore. Nothing open is removed,
// nor a migration a running evacuation names (its step would take the
// record's absence for a lost migration). A zero cut-off keeps that kind.
// At most Limit entries go per command (More: apply it again), so that
// one raft entry stays one short transaction.
type RecordsPrune struct {
	EventsBefore  time.Time `json:"events_before,omitzero"`
	RecordsBefore time.Time `json:"records_before,omitzero"`
	Limit         int       `json:"limit,omitempty"`
}

// RecordsPruned is what a RecordsPrune removed.
type RecordsPruned struct {
	Events      int  `json:"events"`
	Migrations  int  `json:"migrations"`
	Evacuations int  `json:"evacuations"`
	More        bool `json:"more"`
}

func init() { register(func() Command { return &RecordsPrune{} }) }

// Kind implements Command.
func (*RecordsPrune) Kind() CommandKind { return "records.prune" }

func (c *RecordsPrune) apply(tx *bolt.Tx) (any, error) {
	var out RecordsPruned
	budget := func() bool {
		if c.Limit > 0 && out.Events+out.Migrations+out.Evacuations >= c.Limit {
			out.More = true
			return false
		}
		return true
	}
	if b := tx.Bucket(bucketEvents); b != nil && !c.EventsBefore.IsZero() {
		// Events are stored in time order: the oldest are first. Each
		// deletion seeks the first key again (a bbolt cursor moved on
		// after a Delete can skip a key).
		cur := b.Cursor()
		for k, v := cur.First(); k != nil && budget(); k, v = cur.First() {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return nil, fmt.Errorf("store: decode event %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if !e.Time.Before(c.EventsBefore) {
				break
			}
			if err := cur.Delete(); err != nil {
				return nil, err
			}
			out.Events++
		}
	}
	if c.RecordsBefore.IsZero() {
		return out, nil
	}
	named := map[string]bool{} // migrations running evacuations name
	var oldGroups [][]byte
	if b := tx.Bucket(bucketEvacuations); b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			var r evacuation.Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if r.State.Open() {
				for _, it := range r.Items {
					named[it.Migration] = true
				}
			} else if r.Finished.Before(c.RecordsBefore) {
				oldGroups = append(oldGroups, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	if b := tx.Bucket(bucketMigrations); b != nil {
		var old [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			var m migration.Record
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			if !m.State.Open() && !named[m.ID] && len(m.Cleanup) == 0 && m.Updated.Before(c.RecordsBefore) {
				old = append(old, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return nil, err
		}
		for _, k := range old {
			if !budget() {
				return out, nil
			}
			if err := b.Delete(k); err != nil {
				return nil, err
			}
			out.Migrations++
		}
	}
	if b := tx.Bucket(bucketEvacuations); b != nil {
		for _, k := range oldGroups {
			if !budget() {
				return out, nil
			}
			if err := b.Delete(k); err != nil {
				return nil, err
			}
			out.Evacuations++
		}
	}
	return out, nil
}

// PruneRecords applies RecordsPrune.
func (s *Store) PruneRecords(c RecordsPrune) (RecordsPruned, error) {
	return applyAs[RecordsPruned](s, &c)
}
