package core

// ring holds the bytes of a stream between two offsets, addressed by absolute
// stream offset. It grows by doubling up to the flow-control window, so a
// small message costs little while a bulk stream gets a buffer of a full
// window without a per-packet allocation.
type ring struct {
	buf []byte
	lo  uint64 // lowest live offset; bytes below it may be overwritten
}

// ringMinSize is the first allocation: most control messages are a few
// hundred bytes, and every message is a stream with its own ring.
const ringMinSize = 512

// ensure makes room for offsets up to hi (exclusive) given lo.
func (r *ring) ensure(hi uint64) {
	need := hi - r.lo
	if uint64(len(r.buf)) >= need {
		return
	}
	size := max(len(r.buf), ringMinSize)
	for uint64(size) < need {
		size *= 2
	}
	nb := make([]byte, size)
	if len(r.buf) > 0 {
		// Copy the live bytes [lo, lo+len(old)) to their new positions.
		old := uint64(len(r.buf))
		for off := r.lo; off < r.lo+old; {
			src := off % old
			n := min(old-src, r.lo+old-off)
			dst := off % uint64(size)
			c := copy(nb[dst:], r.buf[src:src+n])
			if uint64(c) < n {
				copy(nb, r.buf[src+uint64(c):src+n])
			}
			off += n
		}
	}
	r.buf = nb
}

// write copies p to offset off; the caller ensured capacity.
func (r *ring) write(off uint64, p []byte) {
	size := uint64(len(r.buf))
	for len(p) > 0 {
		i := off % size
		n := copy(r.buf[i:], p)
		p = p[n:]
		off += uint64(n)
	}
}

// read copies bytes at offset off into p.
func (r *ring) read(off uint64, p []byte) {
	size := uint64(len(r.buf))
	for len(p) > 0 {
		i := off % size
		n := copy(p, r.buf[i:])
		p = p[n:]
		off += uint64(n)
	}
}

// release lets bytes below lo be reused.
func (r *ring) release(lo uint64) {
	if lo > r.lo {
		r.lo = lo
	}
}
