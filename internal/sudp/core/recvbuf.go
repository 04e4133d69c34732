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

// maxFreePages bounds the pages a connection keeps for reuse: a bulk
// stream frees pages at the rate it fills them, so a few suffice to make
// the steady state allocation-free, and an idle connection pins little.
const maxFreePages = 64

// pagePool is a connection's receive memory: the count of pages held by its
// streams (the budget) and a few free pages for reuse.
type pagePool struct {
	free  []*recvPage
	held  int // pages held by streams
	limit int // most pages the streams may hold
}

func (p *pagePool) get() *recvPage {
	p.held++
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
	if len(p.free) < maxFreePages {
		p.free = append(p.free, pg)
	}
}

// over reports whether the streams hold more than the budget.
func (p *pagePool) over() bool { return p.held > p.limit }

// recvBuf holds a stream's received bytes at and above the read offset.
type recvBuf struct {
	pages map[uint64]*recvPage // by offset / recvPageSize
	// last is the page the previous write ended in: in-order data lands
	// there (or in the next page) without a map lookup.
	lastNo uint64
	last   *recvPage
}

// page returns page no, allocating it from pool.
func (b *recvBuf) page(pool *pagePool, no uint64) *recvPage {
	if b.last != nil && b.lastNo == no {
		return b.last
	}
	pg := b.pages[no]
	if pg == nil {
		if b.pages == nil {
			b.pages = make(map[uint64]*recvPage)
		}
		pg = pool.get()
		b.pages[no] = pg
	}
	b.lastNo, b.last = no, pg
	return pg
}

// write copies p to offset off.
func (b *recvBuf) write(pool *pagePool, off uint64, p []byte) {
	for len(p) > 0 {
		pg := b.page(pool, off/recvPageSize)
		n := copy(pg[off%recvPageSize:], p)
		p = p[n:]
		off += uint64(n)
	}
}

// read copies the bytes at offset off (the read offset) into p; the caller
// knows they are present. Each page read to its end goes back to pool: the
// stream never reads below its read offset again.
func (b *recvBuf) read(pool *pagePool, off uint64, p []byte) {
	for len(p) > 0 {
		no := off / recvPageSize
		pg := b.last
		if pg == nil || b.lastNo != no {
			pg = b.pages[no]
		}
		n := copy(p, pg[off%recvPageSize:])
		p = p[n:]
		off += uint64(n)
		if off%recvPageSize == 0 {
			delete(b.pages, no)
			pool.put(pg)
			if b.last == pg {
				b.last = nil
			}
		}
	}
}

// drop returns every page to pool (the stream was reset or stopped).
func (b *recvBuf) drop(pool *pagePool) {
	for no, pg := range b.pages {
		delete(b.pages, no)
		pool.put(pg)
	}
	b.last = nil
}
