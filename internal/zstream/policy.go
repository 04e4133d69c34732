package zstream

import (
	"math"
	"time"
)

// Policy decides, chunk by chunk, whether to compress. It is a pure
// state machine: the Writer asks Compress before each chunk and tells it
// what happened (Compressed, Wrote).
type Policy struct {
	// Always compresses every chunk that compresses, whatever the link
	// (the "zstd" setting; "auto" leaves it false).
	Always bool

	sinceBlocked int // frames written since the last that waited for the link
	skip         int // chunks still to send raw after one that did not compress
	backoff      int // the next skip
}

// Policy's constants.
const (
	// Blocked is how long a write must wait before the link counts as
	// the bottleneck: a write to a stream with room returns in
	// microseconds, one that waits for the link's queue to drain waits
	// for packets to leave (a 1400-byte packet takes 0.1 ms at 100
	// Mbit/s; the queue holds tens of ms).
	Blocked = time.Millisecond
	// LinkMemory is how many frames after one that waited the link
	// still counts as the bottleneck: a compressed frame is small
	// enough to fit the room the last wait left, so "the last write
	// waited" alone flips between compressing and not on a link that
	// is full all along (measured: a third of the frames compressed on
	// a 100 Mbit/s path, instead of all).
	LinkMemory = 16
	// MaxBackoff bounds the raw chunks between two tries on data that
	// does not compress: at most one chunk in 9 is compressed in vain
	// (the fastest level gives up on random data at ~1 GB/s), and once
	// the data compresses again at most 8 chunks (2 MiB) go raw before
	// that is seen (with 64: 16 MiB of a guest's text after its random
	// stretch, 15 % more bytes on the wire for the migration measured).
	MaxBackoff = 8
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
	// its whole memory to send, so the link is taken for the bottleneck
	// (sinceBlocked starts at 0).
	return p.Always || p.sinceBlocked < LinkMemory
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
	if waited >= Blocked {
		p.sinceBlocked = 0
	} else if p.sinceBlocked < LinkMemory {
		p.sinceBlocked++
	}
}

// Random returns whether chunk c looks random from its bytes' entropy,
// estimated from every sampleStride-th byte: random or encrypted data
// (7.99 bits a byte) is not worth a compressor's time, and the estimate
// costs ~1 % of trying (measured: the fastest level spends 1.6 ms on 256
// KiB of random data). What it cannot see is data random byte by byte
// but repeated at a long period (a 64 KiB random block four times in a
// chunk): it goes raw. (A page repeated is seen: its 256 sampled bytes
// estimate at 7.2 bits.)
// Chunks under minSample bytes are never judged random.
func Random(c []byte) bool {
	if len(c) < minSample {
		return false
	}
	var h [256]uint32
	n := 0
	for i := 0; i < len(c); i += sampleStride {
		h[c[i]]++
		n++
	}
	e := 0.0
	for _, v := range h {
		if v > 0 {
			p := float64(v) / float64(n)
			e -= p * math.Log2(p)
		}
	}
	return e > randomBits
}

// Random's constants: 256 KiB sampled at a stride of 16 is 16 Ki
// samples, for which a uniform source estimates at 7.99 bits; guest text
// is at 3–5 bits, code at 6–6.5, a page of zeros with a counter near 0.
const (
	sampleStride = 16
	minSample    = 64 << 10
	randomBits   = 7.9
)
