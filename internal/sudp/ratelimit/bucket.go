package ratelimit

import (
	"sync"
	"time"
)

// Bucket is a token bucket of bytes (or any unit) that several users may
// share: the SUDP receive cap of one peer, whichever of its connections a
// packet arrives on, so that opening a new session does not hand the peer
// a fresh burst. Time is passed in. It is safe for concurrent use.
type Bucket struct {
	mu          sync.Mutex
	rate, burst float64 // units a second; bucket size
	tokens      float64
	last        time.Time
	refused     uint64
}

// NewBucket returns a full bucket refilling at rate units a second up to
// burst.
func NewBucket(now time.Time, rate float64, burst int) *Bucket {
	return &Bucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// Allow takes n units from the bucket, or reports that there are not
// enough (taking nothing). A nil Bucket allows everything.
func (b *Bucket) Allow(now time.Time, n int) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < float64(n) {
		b.refused++
		return false
	}
	b.tokens -= float64(n)
	return true
}

// Refund gives back n units an Allow took for something that turned out
// not to count (up to the burst). A nil Bucket ignores it.
func (b *Bucket) Refund(n int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.burst, b.tokens+float64(n))
}

// Rate is the bucket's rate (0 for a nil Bucket).
func (b *Bucket) Rate() float64 {
	if b == nil {
		return 0
	}
	return b.rate
}

// Refused counts the calls Allow refused.
func (b *Bucket) Refused() uint64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused
}
