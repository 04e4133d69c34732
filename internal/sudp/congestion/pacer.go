package congestion

import (
	"math"
	"time"
)

const (
	// BurstDuration and BurstPackets size the pacer's token bucket: it may
	// release at once whichever is larger, BurstDuration worth of bytes at
	// the current rate or BurstPackets packets. The time bound keeps the
	// queue a burst can build at the bottleneck under about a millisecond at
	// any rate; the packet bound keeps per-packet timer wake-ups affordable at
	// low rates, where a timer that fires a little late would otherwise cost
	// throughput (tokens beyond the burst are forfeited).
	BurstDuration = 2 * time.Millisecond
	BurstPackets  = 10
	// CatchUpLimit bounds the sending time a late caller may make up (see
	// Pacer): beyond it the time is lost, as with a plain token bucket.
	CatchUpLimit = 20 * time.Millisecond
)

// Burst returns the token-bucket depth in bytes for packets of size bytes
// sent at rate bytes/s. The controller uses the same figure as the send
// quantum it adds to the congestion window, so the window never blocks a
// burst the pacer allows.
func Burst(rate float64, size int) float64 {
	b := rate * BurstDuration.Seconds()
	if m := float64(BurstPackets * size); b < m {
		b = m
	}
	return b
}

// Pacer is a token bucket that spreads packets at a given rate. The zero
// value is ready to use and starts with a full bucket. It holds no clock and
// no timer: the caller asks Delay before sending, arms its own timer when the
// answer is positive, and reports every packet it sends with OnSent.
//
// Catch-up. A caller that comes back later than Delay asked (its thread was
// descheduled: on a host whose cores are busy with guests this is routinely
// 5–20 ms) would lose the sending time beyond the bucket's depth, and the
// flow would run below its pacing rate with the window open — the link
// idles though the controller's model says it is full. That lost time, up
// to CatchUpLimit, is credited and made up at up to twice the rate. Only
// lateness counts: a caller that stopped for another reason (the window
// was full, nothing to send) must call Blocked, which clears the credit, so
// an idle or window-limited flow still gets no more than one bucket.
//
// Invariants (tested): if the caller only sends when Delay returned 0, the
// bytes released in any interval of length T are at most Burst + rate·T +
// min(rate·T, rate·CatchUpLimit), and since the first call never more than
// Burst + rate·(elapsed). A caller that sends regardless (e.g. a probe or an
// ACK-eliciting PTO packet) drives the bucket negative, and later packets
// wait to repay the debt.
type Pacer struct {
	tokens float64 // bytes available now; negative = debt
	last   time.Time
	init   bool
	// due is when Delay last told the caller to come back (zero when the
	// caller is not waiting for the pacer); credit is the sending time,
	// in bytes, lost by coming back late and not yet made up.
	due    time.Time
	credit float64
}

func (p *Pacer) refill(now time.Time, rate float64, size int) {
	burst := Burst(rate, size)
	if !p.init {
		p.tokens, p.last, p.init = burst, now, true
		return
	}
	// Credit is time: what 20 ms at the old rate earned must not be
	// released at a rate that has since dropped.
	p.credit = min(p.credit, rate*CatchUpLimit.Seconds())
	// A clock that steps backwards must not mint tokens: only move forward.
	if dt := now.Sub(p.last); dt > 0 {
		// Credit is made up at up to the rate again (twice the rate in all).
		extra := min(p.credit, rate*dt.Seconds())
		p.credit -= extra
		p.tokens += rate*dt.Seconds() + extra
		p.last = now
	}
	if p.tokens > burst {
		if late := now.Sub(p.due); !p.due.IsZero() && late > 0 {
			p.credit = min(p.credit+min(p.tokens-burst, rate*late.Seconds()), rate*CatchUpLimit.Seconds())
		}
		p.tokens = burst
	}
	p.due = time.Time{}
}

// Delay returns how long to wait before a packet of size bytes may leave at
// rate bytes/s; 0 means now. A rate of 0, negative or +Inf disables pacing.
func (p *Pacer) Delay(now time.Time, rate float64, size int) time.Duration {
	if rate <= 0 || math.IsInf(rate, 1) || math.IsNaN(rate) {
		p.due = time.Time{}
		return 0
	}
	p.refill(now, rate, size)
	need := float64(size) - p.tokens
	if need <= 0 {
		return 0
	}
	r := rate
	if p.credit >= need/2 {
		r = 2 * rate // catching up
	}
	// Round up so that waking at now+d always finds enough tokens; a
	// rounded-down delay would wake the caller a nanosecond early for nothing.
	d := time.Duration(math.Ceil(need / r * 1e9))
	if d < 1 {
		d = 1
	}
	p.due = now.Add(d)
	return d
}

// OnSent takes size bytes from the bucket.
func (p *Pacer) OnSent(now time.Time, rate float64, size int) {
	if rate <= 0 || math.IsInf(rate, 1) || math.IsNaN(rate) {
		return
	}
	p.refill(now, rate, size)
	p.tokens -= float64(size)
}

// Blocked tells the pacer the caller cannot send for a reason of its own
// (the congestion window is full, or there is nothing to send): the time
// until it next asks is not lateness, and what was owed is void — a flow
// whose window is full has the pipe full.
func (p *Pacer) Blocked() {
	p.due, p.credit = time.Time{}, 0
}
