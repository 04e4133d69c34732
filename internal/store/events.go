package store

import (
	"encoding/binary"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketEvents     = []byte("events")
	bucketEventsSeen = []byte("events-seen")
)

// MaxEvents is the retention of the event log (logs and alarms): beyond
// it the oldest are dropped.
const MaxEvents = 100_000

// Event is a log line or an alarm, from an agent or from the MMC itself.
type Event struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`       // when the MMC stored it
	AgentAt  time.Time `json:"agent_time"` // the agent's clock, if from an agent
	Agent    string    `json:"agent"`      // agent id
	Host     string    `json:"host"`       // host name
	AgentSeq uint64    `json:"agent_seq"`  // the agent's own numbering (0 for MMC events)
	Alarm    bool      `json:"alarm"`
	Level    string    `json:"level"`
	Kind     string    `json:"kind"`
	Message  string    `json:"message"`
}

func seenKey(agent string, seq uint64) []byte {
	k := make([]byte, 0, len(agent)+9)
	k = append(k, agent...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// EventAdd stores an event once: an agent event already stored (same
// agent and AgentSeq — a resend after a lost acknowledgement) is
// skipped. Beyond MaxEvents the oldest are dropped. Its result is
// whether the event was new.
type EventAdd struct {
	Event Event `json:"event"`
}

func init() { register(func() Command { return &EventAdd{} }) }

// Kind implements Command.
func (*EventAdd) Kind() CommandKind { return "event.add" }

func (c *EventAdd) apply(tx *bolt.Tx) (any, error) {
	e := c.Event
	b, err := tx.CreateBucketIfNotExists(bucketEvents)
	if err != nil {
		return nil, err
	}
	seen, err := tx.CreateBucketIfNotExists(bucketEventsSeen)
	if err != nil {
		return nil, err
	}
	if e.AgentSeq > 0 {
		k := seenKey(e.Agent, e.AgentSeq)
		if seen.Get(k) != nil {
			return false, nil
		}
		if err := seen.Put(k, []byte{1}); err != nil {
			return nil, err
		}
	}
	n, err := appendSeq(b, func(n uint64) any { e.Seq = n; return e })
	if err != nil {
		return nil, err
	}
	// Retention: drop the oldest beyond MaxEvents.
	if n > MaxEvents {
		cur := b.Cursor()
		for k, _ := cur.First(); k != nil && binary.BigEndian.Uint64(k) <= n-MaxEvents; k, _ = cur.Next() {
			if err := cur.Delete(); err != nil {
				return nil, err
			}
		}
	}
	return true, nil
}

// AddEvent applies EventAdd and reports whether the event was new.
func (s *Store) AddEvent(e Event) (bool, error) {
	return applyAs[bool](s, &EventAdd{Event: e})
}

// Events returns up to limit events with Seq > after (oldest first),
// only alarms if alarms is set.
func (s *Store) Events(after uint64, limit int, alarms bool) ([]Event, error) {
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if !alarms || e.Alarm {
				out = append(out, e)
			}
		}
		return nil
	})
	return out, err
}
