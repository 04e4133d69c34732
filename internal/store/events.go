package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketEvents = []byte("events")
	// bucketEventsHigh holds, per agent, the highest AgentSeq stored: the
	// agent's numbering is the deduplication (one entry an agent, however
	// many events it sends).
	bucketEventsHigh = []byte("events-high")
	// bucketEventsSeenV1 is the set of (agent, seq) pairs earlier versions
	// kept, one key an event and never pruned; Open folds it into
	// bucketEventsHigh and deletes it.
	bucketEventsSeenV1 = []byte("events-seen")
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
	// AckedAt and AckedBy: an operator acknowledged the alarm (it stays
	// in the log; consoles and `alarms list` show it as handled).
	AckedAt time.Time `json:"acked_at,omitzero"`
	AckedBy string    `json:"acked_by,omitempty"`
}

// ErrNotAlarm: an acknowledgement named an event that is not an alarm.
var ErrNotAlarm = errors.New("store: not an alarm")

// AlarmAck acknowledges the alarm numbered Seq. Acknowledging one twice
// keeps the first acknowledgement (the command is idempotent: a retried
// request changes nothing).
type AlarmAck struct {
	Seq uint64    `json:"seq"`
	By  string    `json:"by"`
	At  time.Time `json:"at"`
}

func init() { register(func() Command { return &AlarmAck{} }) }

// Kind implements Command.
func (*AlarmAck) Kind() CommandKind { return "alarm.ack" }

func (c *AlarmAck) apply(tx *bolt.Tx) (any, error) {
	b := tx.Bucket(bucketEvents)
	if b == nil {
		return nil, ErrNotFound
	}
	raw := b.Get(seqKey(c.Seq))
	if raw == nil {
		return nil, ErrNotFound
	}
	var e Event
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("store: event %d: %w", c.Seq, err)
	}
	if !e.Alarm {
		return nil, ErrNotAlarm
	}
	if !e.AckedAt.IsZero() {
		return e, nil
	}
	e.AckedAt, e.AckedBy = c.At, c.By
	out, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	return e, b.Put(seqKey(c.Seq), out)
}

// AckAlarm applies AlarmAck and returns the alarm as it now stands.
func (s *Store) AckAlarm(seq uint64, by string, at time.Time) (Event, error) {
	return applyAs[Event](s, &AlarmAck{Seq: seq, By: by, At: at})
}

// EventAdd stores an event once: an agent event numbered at or below the
// highest already stored for that agent (a resend after a lost
// acknowledgement) is skipped. That needs no more than the agent already
// guarantees — it numbers events in order and sends (and resends) them in
// order over one session, where the MMC handles them in order — and it
// keeps the deduplication at one entry an agent: a set of every number
// seen would grow with each event an agent ever sent. Beyond MaxEvents the
// oldest events are dropped. Its result is whether the event was new.
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
	high, err := tx.CreateBucketIfNotExists(bucketEventsHigh)
	if err != nil {
		return nil, err
	}
	if e.AgentSeq > 0 {
		if v := high.Get([]byte(e.Agent)); len(v) == 8 && e.AgentSeq <= binary.BigEndian.Uint64(v) {
			return false, nil
		}
		if err := high.Put([]byte(e.Agent), binary.BigEndian.AppendUint64(nil, e.AgentSeq)); err != nil {
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

// foldEventsSeen replaces the per-event set of earlier versions with the
// per-agent high-water mark (the highest number seen of each agent).
func foldEventsSeen(tx *bolt.Tx) error {
	seen := tx.Bucket(bucketEventsSeenV1)
	if seen == nil {
		return nil
	}
	high, err := tx.CreateBucketIfNotExists(bucketEventsHigh)
	if err != nil {
		return err
	}
	err = seen.ForEach(func(k, _ []byte) error {
		// key: agent id, 0, big-endian seq
		if len(k) < 9 || k[len(k)-9] != 0 {
			return nil
		}
		agent, seq := k[:len(k)-9], binary.BigEndian.Uint64(k[len(k)-8:])
		if v := high.Get(agent); len(v) == 8 && binary.BigEndian.Uint64(v) >= seq {
			return nil
		}
		return high.Put(agent, binary.BigEndian.AppendUint64(nil, seq))
	})
	if err != nil {
		return err
	}
	return tx.DeleteBucket(bucketEventsSeenV1)
}

// AddEvent applies EventAdd and reports whether the event was new.
func (s *Store) AddEvent(e Event) (bool, error) {
	return applyAs[bool](s, &EventAdd{Event: e})
}

// EventsNewest is Events newest first: the newest events (alarms only,
// with alarms) numbered above after, at most limit (0: all).
func (s *Store) EventsNewest(after uint64, limit int, alarms bool) ([]Event, error) {
	return listSeq(s, bucketEvents, after, limit, true, alarmsOnly(alarms))
}

// Events returns up to limit events with Seq > after (oldest first),
// only alarms if alarms is set.
func (s *Store) Events(after uint64, limit int, alarms bool) ([]Event, error) {
	return listSeq(s, bucketEvents, after, limit, false, alarmsOnly(alarms))
}

func alarmsOnly(alarms bool) func(Event) bool {
	if !alarms {
		return nil
	}
	return func(e Event) bool { return e.Alarm }
}
