package core

// spanSet is the set of received ranges of a stream: sorted, disjoint,
// non-adjacent half-open intervals, like rangeSet, but the peer chooses
// where every interval goes, so no insertion may cost time in proportion to
// the set (issue #20). One sorted slice would move every interval above an
// insertion; here they are kept in blocks of at most spanBlock, found by
// binary search over the blocks then within one, so an insertion moves at
// most a block's intervals and, on a split or merge of blocks, the block
// list (at most 1 + n/(spanBlock/4) entries, since every block but the last
// holds at least spanBlock/4; the last grows by in-order appends).
type spanSet struct {
	blocks [][]span
	n      int
	// spare is the last block emptied by a read: a reader that keeps up
	// empties the set after nearly every packet, and the next one reuses
	// it instead of allocating.
	spare []span
}

const spanBlock = 64

func (s *spanSet) len() int { return s.n }

func (s *spanSet) first() (span, bool) {
	if s.n == 0 {
		return span{}, false
	}
	return s.blocks[0][0], true
}

func (s *spanSet) last() (span, bool) {
	if s.n == 0 {
		return span{}, false
	}
	b := s.blocks[len(s.blocks)-1]
	return b[len(b)-1], true
}

// add inserts [lo, hi).
func (s *spanSet) add(lo, hi uint64) {
	if lo >= hi {
		return
	}
	nb := len(s.blocks)
	if nb == 0 {
		blk := s.spare
		if blk == nil {
			blk = make([]span, 0, spanBlock)
		}
		s.spare = nil
		s.blocks = append(s.blocks, append(blk, span{lo, hi}))
		s.n = 1
		return
	}
	// Fast path, in-order data: extends or follows the last interval.
	lb := s.blocks[nb-1]
	top := &lb[len(lb)-1]
	if lo > top.hi {
		if len(lb) < spanBlock {
			s.blocks[nb-1] = append(lb, span{lo, hi})
		} else {
			s.blocks = append(s.blocks, append(make([]span, 0, spanBlock), span{lo, hi}))
		}
		s.n++
		return
	}
	if lo >= top.lo {
		top.hi = max(top.hi, hi)
		return
	}
	// The first block whose last interval reaches lo, and in it the first
	// such interval: [lo, hi) goes before it or merges with it.
	b := searchBlocks(s.blocks, lo)
	blk := s.blocks[b]
	i := searchHi(blk, lo)
	if blk[i].lo > hi {
		s.insertAt(b, i, span{lo, hi})
		return
	}
	blk[i].lo = min(blk[i].lo, lo)
	nh := max(blk[i].hi, hi)
	// Absorb the intervals that follow and start within [lo, hi): each
	// disappears, so this work is paid for by the insertions that made
	// them.
	k := 0 // intervals to remove after (b, i)
	for bb, j := b, i+1; ; j++ {
		if j == len(s.blocks[bb]) {
			if bb++; bb == len(s.blocks) {
				break
			}
			j = 0
		}
		sp := s.blocks[bb][j]
		if sp.lo > hi {
			break
		}
		nh = max(nh, sp.hi)
		k++
	}
	blk[i].hi = nh
	if k > 0 {
		s.removeAfter(b, i, k)
	}
}

// searchBlocks returns the first block whose last interval has hi >= v
// (one exists: the caller checked the last block).
func searchBlocks(blocks [][]span, v uint64) int {
	lo, hi := 0, len(blocks)-1
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		b := blocks[m]
		if b[len(b)-1].hi < v {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// insertAt puts sp at index i of block b, splitting a full block in two.
func (s *spanSet) insertAt(b, i int, sp span) {
	s.n++
	blk := s.blocks[b]
	if len(blk) < spanBlock {
		blk = append(blk, span{})
		copy(blk[i+1:], blk[i:])
		blk[i] = sp
		s.blocks[b] = blk
		return
	}
	half := spanBlock / 2
	right := append(make([]span, 0, spanBlock), blk[half:]...)
	left := blk[:half]
	if i <= half {
		left = append(left, span{})
		copy(left[i+1:], left[i:])
		left[i] = sp
	} else {
		i -= half
		right = append(right, span{})
		copy(right[i+1:], right[i:])
		right[i] = sp
	}
	s.blocks[b] = left
	s.blocks = append(s.blocks, nil)
	copy(s.blocks[b+2:], s.blocks[b+1:])
	s.blocks[b+1] = right
}

// removeAfter deletes the k intervals that follow index i of block b.
func (s *spanSet) removeAfter(b, i, k int) {
	s.n -= k
	blk := s.blocks[b]
	r := min(k, len(blk)-i-1)
	s.blocks[b] = append(blk[:i+1], blk[i+1+r:]...)
	k -= r
	next := b + 1
	whole := 0
	for k > 0 && next+whole < len(s.blocks) && len(s.blocks[next+whole]) <= k {
		k -= len(s.blocks[next+whole])
		whole++
	}
	if whole > 0 {
		s.blocks = append(s.blocks[:next], s.blocks[next+whole:]...)
	}
	if k > 0 {
		s.blocks[next] = s.blocks[next][k:]
	}
	if next < len(s.blocks) {
		s.rebalance(next)
	}
	s.rebalance(b)
}

// rebalance restores the invariant that every block but the last holds at
// least spanBlock/4 intervals, by merging block b with its right neighbour
// or sharing theirs evenly.
func (s *spanSet) rebalance(b int) {
	if b >= len(s.blocks)-1 || len(s.blocks[b]) >= spanBlock/4 {
		return
	}
	l, r := b, b+1
	lb, rb := s.blocks[l], s.blocks[r]
	if len(lb)+len(rb) <= spanBlock {
		merged := append(make([]span, 0, spanBlock), lb...)
		s.blocks[l] = append(merged, rb...)
		s.blocks = append(s.blocks[:r], s.blocks[r+1:]...)
		return
	}
	all := make([]span, 0, len(lb)+len(rb))
	all = append(append(all, lb...), rb...)
	half := len(all) / 2
	s.blocks[l] = append(make([]span, 0, spanBlock), all[:half]...)
	s.blocks[r] = append(make([]span, 0, spanBlock), all[half:]...)
}

// trimBelow drops everything below v (the application read it).
func (s *spanSet) trimBelow(v uint64) {
	for len(s.blocks) > 0 {
		blk := s.blocks[0]
		if blk[len(blk)-1].hi > v {
			break
		}
		if len(s.blocks) == 1 {
			// Everything read: keep the arrays for the next packet.
			s.spare = blk[:0]
			s.blocks, s.n = s.blocks[:0], 0
			return
		}
		// A whole block read: reslice, the backing array is dropped
		// when append next reallocates.
		s.n -= len(blk)
		s.blocks = s.blocks[1:]
	}
	if len(s.blocks) == 0 {
		return
	}
	blk := s.blocks[0]
	i := searchHi(blk, v+1)
	if i > 0 {
		s.n -= i
		s.blocks[0] = blk[i:]
		s.rebalance(0)
	}
	if f := &s.blocks[0][0]; f.lo < v {
		f.lo = v
	}
}
