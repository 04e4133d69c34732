package mmc

import (
	"sync"
	"time"
)

// An agent's events (log lines and alarms) are stored in one log with a
// fixed retention (store.MaxEvents), so an agent that sent them without
// limit would push every other agent's alarms out of it, and cost a store
// write each. Each session therefore has a token bucket: an honest agent
// sends a handful a minute, and a burst the size of a host's worth of VMs
// stopping at once still fits.
const (
	eventRate  = 10  // events a second, sustained
	eventBurst = 200 // events back to back
	// eventDropSummaryEvery is how often at most the MMC records that it
	// dropped a session's events (one alarm, however many were dropped).
	eventDropSummaryEvery = time.Minute
)

// kindEventsDropped is the alarm that says a session's events were dropped.
const kindEventsDropped = "events-dropped"

// eventBudget is one session's allowance. It is a pure value: time is
// passed in, and the session's mutex serialises it.
type eventBudget struct {
	tokens  float64
	last    time.Time
	dropped uint64    // dropped since the last summary
	summary time.Time // when the last summary was written
}

func newEventBudget(now time.Time) eventBudget {
	return eventBudget{tokens: eventBurst, last: now}
}

// admit reports whether one more event may be stored now.
func (b *eventBudget) admit(now time.Time) bool {
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(eventBurst, b.tokens+dt.Seconds()*eventRate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	b.dropped++
	return false
}

// dueSummary returns how many events were dropped since the last summary
// when a summary is due (something was dropped, and none was written for
// eventDropSummaryEvery), and starts a new count; 0 otherwise.
func (b *eventBudget) dueSummary(now time.Time) uint64 {
	if b.dropped == 0 || (!b.summary.IsZero() && now.Sub(b.summary) < eventDropSummaryEvery) {
		return 0
	}
	n := b.dropped
	b.dropped = 0
	b.summary = now
	return n
}

// agentEvents is one agent's event budget, shared by all its sessions (the
// registry keeps it across logins, as it does the receive cap): a new
// session must not bring a fresh burst.
type agentEvents struct {
	mu sync.Mutex
	b  eventBudget
}

// take admits one event at now, or not, and returns the drops a summary is
// due for (see dueSummary).
func (e *agentEvents) take(now time.Time) (admitted bool, dropped uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.b.admit(now), e.b.dueSummary(now)
}
