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
// Invariant (tested): if the caller only sends when Delay returned 0, the
// bytes released in any interval of length T are at most Burst + rate·T.
// A caller that sends regardless (e.g. a probe or an ACK-eliciting PTO packet)
// drives the bucket negative, and later packets wait to repay the debt.
type Pacer struct {
	tokens float64 // bytes available now; negative = debt
	last   time.Time
	init   bool
}

func (p *Pacer) refill(now time.Time, rate float64, size int) {
	burst := Burst(rate, size)
	if !p.init {
		p.tokens, p.last, p.init = burst, now, true
		return
	}
	// A clock that steps backwards must not mint tokens: only move forward.
	if dt := now.Sub(p.last); dt > 0 {
		p.tokens += rate * dt.Seconds()
		p.last = now
	}
	if p.tokens > burst {
		p.tokens = burst
	}
}

// Delay returns how long to wait before a packet of size bytes may leave at
// rate bytes/s; 0 means now. A rate of 0, negative or +Inf disables pacing.
func (p *Pacer) Delay(now time.Time, rate float64, size int) time.Duration {
	if rate <= 0 || math.IsInf(rate, 1) || math.IsNaN(rate) {
		return 0
	}
	p.refill(now, rate, size)
	need := float64(size) - p.tokens
	if need <= 0 {
		return 0
	}
	// Round up so that waking at now+d always finds enough tokens; a
	// rounded-down delay would wake the caller a nanosecond early for nothing.
	d := time.Duration(math.Ceil(need / rate * 1e9))
	if d < 1 {
		d = 1
	}
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
