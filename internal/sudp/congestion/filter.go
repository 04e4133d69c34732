package congestion

import (
	"cmp"
	"time"
)

// windowedFilter tracks the best (maximum or minimum) value seen over a
// sliding window of "time" t, where t is any monotonic counter (BBR keys the
// bandwidth filter by packet-timed round trips, not by wall time, so that the
// window covers the same number of feedback loops on every path).
//
// Keeping the exact best of a window would need every sample of the window.
// Instead it keeps the best, second-best and third-best values of successive
// sub-windows (Kathleen Nichols' algorithm, as used by BBR): when the best
// sample ages out, a candidate from a later part of the window is already at
// hand. The result is always a value seen within the window, exact for a
// rising (max) or falling (min) signal, and never worse than the exact best
// of the latest quarter of the window — with O(1) memory and time and no
// allocation, which is what a per-ACK path needs.
type windowedFilter[V cmp.Ordered] struct {
	window  uint64
	keepMax bool
	est     [3]filterSample[V]
	valid   bool
}

type filterSample[V cmp.Ordered] struct {
	v V
	t uint64
}

func newMaxFilter[V cmp.Ordered](window uint64) windowedFilter[V] {
	return windowedFilter[V]{window: window, keepMax: true}
}

func newMinFilter[V cmp.Ordered](window uint64) windowedFilter[V] {
	return windowedFilter[V]{window: window}
}

// better reports whether a is at least as good as b. Ties count as better so
// that an equal, newer sample refreshes the timestamp and keeps the value from
// ageing out while it is still being observed.
func (f *windowedFilter[V]) better(a, b V) bool {
	if f.keepMax {
		return a >= b
	}
	return a <= b
}

// Get returns the current best value, or the zero value if no sample was seen.
func (f *windowedFilter[V]) Get() V { return f.est[0].v }

// Reset forgets the history and restarts from one sample.
func (f *windowedFilter[V]) Reset(v V, t uint64) {
	s := filterSample[V]{v: v, t: t}
	f.est = [3]filterSample[V]{s, s, s}
	f.valid = true
}

// Update adds a sample taken at t (t must not go backwards) and returns the
// new best value.
func (f *windowedFilter[V]) Update(v V, t uint64) V {
	s := filterSample[V]{v: v, t: t}
	// A new overall best, or a gap so long that even the newest kept sample
	// is outside the window: everything we know is superseded.
	if !f.valid || f.better(v, f.est[0].v) || t-f.est[2].t > f.window {
		f.Reset(v, t)
		return v
	}
	if f.better(v, f.est[1].v) {
		f.est[1], f.est[2] = s, s
	} else if f.better(v, f.est[2].v) {
		f.est[2] = s
	}
	age := t - f.est[0].t
	switch {
	case age > f.window:
		// The best expired: promote the later candidates. The second one
		// may be outside the window too, then promote once more.
		f.est[0], f.est[1], f.est[2] = f.est[1], f.est[2], s
		if t-f.est[0].t > f.window {
			f.est[0], f.est[1] = f.est[1], f.est[2]
		}
	case f.est[1].t == f.est[0].t && age > f.window/4:
		// A quarter of the window passed without a distinct second
		// candidate: start tracking one from the current sub-window.
		f.est[1], f.est[2] = s, s
	case f.est[2].t == f.est[1].t && age > f.window/2:
		// Same for the third candidate after half the window.
		f.est[2] = s
	}
	return f.est[0].v
}

// minRTTFilter is BBR's RTprop estimator: the minimum RTT observed over a
// window (10 s), replaced by the current sample once it is older than the
// window. Unlike the bandwidth filter it deliberately does not fall back to
// a "second best": an old minimum that was not re-observed for a whole window
// means the queue never drained in that time, and the right response is to
// drain it on purpose (PROBE_RTT) rather than to believe a later, inflated
// sample. The caller learns of the expiry from Update's result.
type minRTTFilter struct {
	window time.Duration
	min    time.Duration
	stamp  time.Time
}

// Update offers an RTT sample taken at now and reports whether the previous
// minimum had expired (it is then replaced by the sample, whatever its value).
func (f *minRTTFilter) Update(rtt time.Duration, now time.Time) (expired bool) {
	expired = f.Expired(now)
	if rtt <= 0 {
		return expired
	}
	switch {
	case f.min == 0 || rtt < f.min || expired:
		f.min = rtt
		f.stamp = now
	case rtt <= f.min+f.min/minRTTConfirmDivisor:
		// A sample within ~3% of the minimum shows the queue (nearly)
		// empty right now, which is all PROBE_RTT would find out: count it
		// as a re-observation. Without this, a flow that never builds a
		// queue (paced under a cap, or alone on its path) would still cut
		// its window every 10 s just because jitter-free samples never
		// come in strictly below the old minimum.
		f.stamp = now
	}
	return expired
}

// minRTTConfirmDivisor: samples up to minRTT·(1+1/32) re-confirm the minimum.
const minRTTConfirmDivisor = 32

// Expired reports whether the minimum is older than the window.
func (f *minRTTFilter) Expired(now time.Time) bool {
	return f.min > 0 && now.Sub(f.stamp) > f.window
}

// Refresh marks the current minimum as freshly confirmed (after PROBE_RTT
// drained the queue and found nothing lower).
func (f *minRTTFilter) Refresh(now time.Time) { f.stamp = now }
