package agent

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/message"
)

// OutboxFile holds the agent's unacknowledged events in its data
// directory, so that neither losing the MMC nor restarting the agent loses
// a log line or an alarm.
const OutboxFile = "outbox.db"

// maxOutbox bounds the events an agent keeps while the MMC is away; past
// it the oldest are dropped (and counted).
const maxOutbox = 10_000

var (
	bucketEvents = []byte("events")
	bucketMeta   = []byte("meta")
	keyNext      = []byte("next")
	// bucketStopped holds the VMs whose unexpected stop was raised, so a
	// restarted agent does not raise it again.
	bucketStopped = []byte("stopped")
)

// outbox holds events (logs and alarms) until the MMC acknowledges each,
// so losing the MMC for a while loses none: they are resent on the next
// session. With a database the events and the sequence counter survive
// restarts; the MMC drops resent duplicates by (agent, Seq), so Seq must
// never repeat for one agent.
type outbox struct {
	mu      sync.Mutex
	db      *bolt.DB // nil: memory only
	next    uint64
	pending []message.Event // in Seq order
	sent    uint64          // highest Seq sent in the current session
	notify  chan struct{}
	dropped uint64
	failed  uint64 // events the database refused (kept in memory)
	// stopped: VMs whose unexpected stop was raised (see raiseStopped).
	stopped map[string]bool
}

func newOutbox() *outbox {
	return &outbox{notify: make(chan struct{}, 1), stopped: map[string]bool{}}
}

// openOutbox opens (or creates) a persistent outbox at path and loads the
// events it holds.
func openOutbox(path string) (*outbox, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("agent: outbox %s: %w", path, err)
	}
	o := newOutbox()
	o.db = db
	err = db.Update(func(tx *bolt.Tx) error {
		evs, err := tx.CreateBucketIfNotExists(bucketEvents)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		stopped, err := tx.CreateBucketIfNotExists(bucketStopped)
		if err != nil {
			return err
		}
		if err := stopped.ForEach(func(k, _ []byte) error {
			o.stopped[string(k)] = true
			return nil
		}); err != nil {
			return err
		}
		if v := meta.Get(keyNext); len(v) == 8 {
			o.next = binary.BigEndian.Uint64(v)
		}
		return evs.ForEach(func(k, v []byte) error {
			var e message.Event
			if len(k) != 8 || json.Unmarshal(v, &e) != nil || e.Seq != binary.BigEndian.Uint64(k) {
				// A damaged record cannot be resent faithfully; drop it
				// rather than refuse to start.
				o.dropped++
				return nil
			}
			o.pending = append(o.pending, e)
			o.next = max(o.next, e.Seq)
			return nil
		})
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("agent: outbox %s: %w", path, err)
	}
	return o, nil
}

func (o *outbox) close() error {
	if o.db == nil {
		return nil
	}
	return o.db.Close()
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// add queues an event.
func (o *outbox) add(alarm bool, level, kind, msg string) {
	o.addTx(alarm, level, kind, msg, nil)
}

// raiseStopped raises the alarm for VM id's unexpected stop, once: the
// alarm and the record that it was raised are stored together, so an
// agent restarted while the MMC is away (the alarm still in the outbox)
// neither loses nor repeats it. It reports whether it raised it now.
func (o *outbox) raiseStopped(id string) bool {
	o.mu.Lock()
	done := o.stopped[id]
	o.stopped[id] = true
	o.mu.Unlock()
	if done {
		return false
	}
	// If the database refuses, the alarm still goes out from memory and
	// only a restart could raise it a second time.
	o.addTx(true, "error", "vm-stopped", "VM "+id+" stopped unexpectedly", func(tx *bolt.Tx) error {
		return tx.Bucket(bucketStopped).Put([]byte(id), []byte{1})
	})
	return true
}

// clearStopped forgets VM id's raised stop: it runs again, or is gone, and
// a later stop is a new alarm.
func (o *outbox) clearStopped(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.stopped[id] {
		return
	}
	if o.db != nil {
		err := o.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketStopped).Delete([]byte(id)) })
		if err != nil {
			// Kept, so the next report tries again: a stale record would
			// silence this VM's next stop after a restart.
			return
		}
	}
	delete(o.stopped, id)
}

// stoppedVMs returns the VMs whose stop was raised.
func (o *outbox) stoppedVMs() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]string, 0, len(o.stopped))
	for id := range o.stopped {
		out = append(out, id)
	}
	return out
}

// addTx queues an event; extra, if not nil, runs in the same database
// transaction.
func (o *outbox) addTx(alarm bool, level, kind, msg string, extra func(*bolt.Tx) error) {
	o.mu.Lock()
	o.next++
	e := message.Event{Seq: o.next, Time: time.Now().UnixNano(), Alarm: alarm, Level: level, Kind: kind, Message: msg}
	o.pending = append(o.pending, e)
	var drop []uint64
	if len(o.pending) > maxOutbox {
		for _, d := range o.pending[:len(o.pending)-maxOutbox] {
			drop = append(drop, d.Seq)
		}
		o.pending = o.pending[len(o.pending)-maxOutbox:]
		o.dropped += uint64(len(drop))
	}
	if o.db != nil {
		err := o.db.Update(func(tx *bolt.Tx) error {
			v, err := json.Marshal(e)
			if err != nil {
				return err
			}
			b := tx.Bucket(bucketEvents)
			for _, d := range drop {
				if err := b.Delete(seqKey(d)); err != nil {
					return err
				}
			}
			if err := b.Put(seqKey(e.Seq), v); err != nil {
				return err
			}
			if extra != nil {
				if err := extra(tx); err != nil {
					return err
				}
			}
			return tx.Bucket(bucketMeta).Put(keyNext, seqKey(o.next))
		})
		if err != nil {
			o.failed++ // still sent from memory in this run
		}
	}
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// restart makes every unacknowledged event due again (a new session).
func (o *outbox) restart() {
	o.mu.Lock()
	o.sent = 0
	o.mu.Unlock()
}

// due returns the events not yet sent in this session and marks them sent.
func (o *outbox) due() []message.Event {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []message.Event
	for _, e := range o.pending {
		if e.Seq > o.sent {
			out = append(out, e)
		}
	}
	if len(out) > 0 {
		o.sent = out[len(out)-1].Seq
	}
	return out
}

// ack drops the event numbered seq.
func (o *outbox) ack(seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, e := range o.pending {
		if e.Seq == seq {
			o.pending = append(o.pending[:i], o.pending[i+1:]...)
			if o.db != nil {
				_ = o.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketEvents).Delete(seqKey(seq)) })
			}
			return
		}
	}
}

// len is the number of unacknowledged events.
func (o *outbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pending)
}
