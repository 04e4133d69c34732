package core

// Received stream data is stored in fixed-size pages keyed by page number,
// not in one buffer addressed by offset: what a stream holds then costs
// memory in proportion to the pages its bytes touch, wherever the peer put
// them. A buffer sized by the highest offset seen let one small frame at the
// top of a 16 MiB window allocate 16 MiB (issue #20).
//
// Pages never move or merge, so out-of-order data costs one copy in and one
// copy out, as in-order data does; which bytes are present is the stream's
// rangeSet, whose size the connection's receive budget bounds.

// recvPageSize trades the memory one sparse byte can pin (a page) against
// per-page work on the bulk path (a 1452-byte packet touches one or two).
const recvPageSize = 4096

type recvPage [recvPageSize]byte

// minFreePages is how many free pages a connection always may keep.
const minFreePages = 16

// pagePool is a connection's receive memory: the count of pages held by its
// streams (the budget) and free pages for reuse. A bulk stream whose reader
// lags holds many pages and frees them in bursts when the reader catches
// up; keeping them (up to the most the streams held at once, so never more
// memory than the budget allowed) spares the allocator and the collector a
// page per 4 KiB received. The old single buffer per stream kept its whole
// size for the stream's life; the pool gives its excess back when a stream
// ends (trim).
type pagePool struct {
	free  []*recvPage
	held  int // pages held by streams
	peak  int // most pages held at once since the last trim
	limit int // most pages the streams may hold
}

func (p *pagePool) get() *recvPage {
	p.held++
	p.peak = max(p.peak, p.held)
	if n := len(p.free); n > 0 {
		pg := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		return pg
	}
	return new(recvPage)
}

func (p *pagePool) put(pg *recvPage) {
	p.held--
	if p.held+len(p.free) < max(p.peak, minFreePages) {
		p.free = append(p.free, pg)
	}
}

// trim gives back the free pages beyond a few, when a stream ended.
func (p *pagePool) trim() {
	if len(p.free) > minFreePages {
		clear(p.free[minFreePages:])
		p.free = p.free[:minFreePages]
	}
	p.peak = p.held
}

// over reports whether the streams hold more than the budget.
func (p *pagePool) over() bool { return p.held > p.limit }

// recvBuf holds a stream's received bytes at and above the read offset.
// The pages from the read offset's up to the first missing one form a dense
// queue: in-order data appends to it and reads pop from it, with no lookup.
// A page beyond a missing one (a loss spanning a whole page, or a peer's
// jump) waits in a map until the queue reaches it.
type recvBuf struct {
	head   uint64               // page number of seq[0]: the read offset's
	seq    []*recvPage          // pages head, head+1, ..., all present
	base   []*recvPage          // seq's backing array, reused from its start
	sparse map[uint64]*recvPage // pages above head+len(seq)
}

// held is the number of pages the stream holds.
func (b *recvBuf) held() int { return len(b.seq) + len(b.sparse) }

// page returns page no (at or above the read offset's), allocating it from
// pool.
func (b *recvBuf) page(pool *pagePool, no uint64) *recvPage {
	i := no - b.head
	if i < uint64(len(b.seq)) {
		return b.seq[i]
	}
	if i > uint64(len(b.seq)) {
		pg := b.sparse[no]
		if pg == nil {
			if b.sparse == nil {
				b.sparse = make(map[uint64]*recvPage)
			}
			pg = pool.get()
			b.sparse[no] = pg
		}
		return pg
	}
	pg := b.takeSparse(no)
	if pg == nil {
		pg = pool.get()
	}
	b.push(pg)
	// The queue reached pages that arrived ahead of it.
	for len(b.sparse) > 0 {
		next := b.takeSparse(b.head + uint64(len(b.seq)))
		if next == nil {
			break
		}
		b.push(next)
	}
	return pg
}

// push appends to the queue. Reads pop from its front, so when the backing
// array is full at the end the queue moves back to its start (a bulk stream
// cycles through one array without allocating).
func (b *recvBuf) push(pg *recvPage) {
	if len(b.seq) == cap(b.seq) && len(b.seq) <= len(b.base)*3/4 {
		// At least a quarter of the array is free: moving the queue
		// costs at most three pointer copies per push until the next.
		n := copy(b.base, b.seq)
		clear(b.base[n:])
		b.seq = b.base[:n]
	}
	if len(b.seq) == cap(b.seq) {
		b.base = make([]*recvPage, max(2*len(b.base), 8))
		n := copy(b.base, b.seq)
		b.seq = b.base[:n]
	}
	b.seq = append(b.seq, pg)
}

func (b *recvBuf) takeSparse(no uint64) *recvPage {
	if len(b.sparse) == 0 {
		return nil
	}
	pg := b.sparse[no]
	if pg != nil {
		delete(b.sparse, no)
	}
	return pg
}

// write copies p to offset off (at or above the read offset).
func (b *recvBuf) write(pool *pagePool, off uint64, p []byte) {
	for len(p) > 0 {
		pg := b.page(pool, off/recvPageSize)
		n := copy(pg[off%recvPageSize:], p)
		p = p[n:]
		off += uint64(n)
	}
}

// read copies the bytes at offset off (the read offset) into p; the caller
// knows they are present, so they are in the queue. Each page read to its
// end goes back to pool: the stream never reads below its read offset again.
func (b *recvBuf) read(pool *pagePool, off uint64, p []byte) {
	for len(p) > 0 {
		pg := b.seq[off/recvPageSize-b.head]
		n := copy(p, pg[off%recvPageSize:])
		p = p[n:]
		off += uint64(n)
		if off%recvPageSize == 0 {
			// Only the queue's first page can be finished.
			b.seq[0] = nil
			b.seq = b.seq[1:]
			b.head++
			pool.put(pg)
		}
	}
}

// drop returns every page to pool (the stream was reset, stopped or read
// to its end: nothing is written to it again).
func (b *recvBuf) drop(pool *pagePool) {
	for i, pg := range b.seq {
		b.seq[i] = nil
		pool.put(pg)
	}
	b.seq, b.base = nil, nil
	for no, pg := range b.sparse {
		delete(b.sparse, no)
		pool.put(pg)
	}
}
