package agent

import (
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
)

// maxOutbox bounds the events an agent keeps while the MMC is away; past
// it the oldest are dropped (and counted).
const maxOutbox = 10_000

// outbox holds events (logs and alarms) until the MMC acknowledges each,
// so losing the MMC for a while loses none: they are resent on the next
// session.
type outbox struct {
	mu      sync.Mutex
	next    uint64
	pending []message.Event // in Seq order
	sent    uint64          // highest Seq sent in the current session
	notify  chan struct{}
	dropped uint64
}

func newOutbox() *outbox { return &outbox{notify: make(chan struct{}, 1)} }

// add queues an event.
func (o *outbox) add(alarm bool, level, kind, msg string) {
	o.mu.Lock()
	o.next++
	o.pending = append(o.pending, message.Event{Seq: o.next, Time: time.Now().UnixNano(), Alarm: alarm, Level: level, Kind: kind, Message: msg})
	if len(o.pending) > maxOutbox {
		o.pending = o.pending[len(o.pending)-maxOutbox:]
		o.dropped++
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
			return
		}
	}
}
