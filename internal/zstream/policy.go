package zstream

import "time"

// Policy decides, chunk by chunk, whether to compress. It is a pure
// state machine: the Writer asks Compress before each chunk and tells it
// what happened (Compressed, Wrote).
type Policy struct {
	// Always compresses every chunk that compresses, whatever the link
	// (the "zstd" setting; "auto" leaves it false).
	Always bool

	linkBound bool // the last write waited for the link
	started   bool
	skip      int // chunks still to send raw after one that did not compress
	backoff   int // the next skip
}

// Policy's constants.
const (
	// Blocked is how long a write must wait before the link counts as
	// the bottleneck: a write to a stream with room returns in
	// microseconds, one that waits for the link's queue to drain waits
	// for packets to leave (a 1400-byte packet takes 0.1 ms at 100
	// Mbit/s; the queue holds tens of ms).
	Blocked = time.Millisecond
	// MaxBackoff bounds the raw chunks between two tries on data that
	// does not compress: at most one chunk in 65 is compressed in vain.
	MaxBackoff = 64
	// poorRatio: a chunk that compresses to more than 7/8 of its size
	// is sent raw and counts as not compressing.
	poorNum, poorDen = 7, 8
)

// Compress says whether to compress the next chunk.
func (p *Policy) Compress() bool {
	if p.skip > 0 {
		p.skip--
		return false
	}
	// Before the first write nothing is known: a migration starts with
	// its whole memory to send, so assume the link is the bottleneck.
	return p.Always || p.linkBound || !p.started
}

// Compressed records that a chunk of raw bytes compressed to z bytes,
// and reports whether it is worth sending compressed.
func (p *Policy) Compressed(raw, z int) bool {
	if z*poorDen > raw*poorNum {
		p.backoff = min(max(2*p.backoff, 1), MaxBackoff)
		p.skip = p.backoff
		return false
	}
	p.backoff = 0
	return true
}

// Wrote records how long the last frame's write waited.
func (p *Policy) Wrote(waited time.Duration) {
	p.started = true
	p.linkBound = waited >= Blocked
}
