package core

// rangeSet is a set of uint64 values kept as sorted, disjoint, non-adjacent
// half-open intervals [lo, hi). Inserts are cheapest at the top, which is where
// packet numbers and stream offsets arrive in the common case.
type rangeSet struct {
	r []span
}

type span struct{ lo, hi uint64 }

func (s *rangeSet) empty() bool { return len(s.r) == 0 }

// add inserts [lo, hi).
func (s *rangeSet) add(lo, hi uint64) {
	if lo >= hi {
		return
	}
	n := len(s.r)
	// Fast path: extends or follows the last interval.
	if n == 0 || lo > s.r[n-1].hi {
		s.r = append(s.r, span{lo, hi})
		return
	}
	if lo >= s.r[n-1].lo {
		if hi > s.r[n-1].hi {
			s.r[n-1].hi = hi
		}
		return
	}
	// General case: binary search for the first interval with hi >= lo,
	// then the first with lo > hi (acknowledged ranges arrive from the
	// peer's ACK frames). Received stream data, where the peer picks every
	// offset, uses spanSet instead, which does not move the whole set.
	i := searchHi(s.r, lo)
	j := i
	for j < n && s.r[j].lo <= hi {
		j++
		if j-i > 8 {
			// Covers many intervals: skip the rest by search.
			j = i + searchLo(s.r[i:], hi)
			break
		}
	}
	if i == j {
		s.r = append(s.r, span{})
		copy(s.r[i+1:], s.r[i:])
		s.r[i] = span{lo, hi}
		return
	}
	nl := min(lo, s.r[i].lo)
	nh := max(hi, s.r[j-1].hi)
	s.r[i] = span{nl, nh}
	s.r = append(s.r[:i+1], s.r[j:]...)
}

// searchHi returns the index of the first interval with hi >= v.
func searchHi(r []span, v uint64) int {
	lo, hi := 0, len(r)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r[m].hi < v {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// searchLo returns the index of the first interval with lo > v.
func searchLo(r []span, v uint64) int {
	lo, hi := 0, len(r)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r[m].lo <= v {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// remove deletes [lo, hi).
func (s *rangeSet) remove(lo, hi uint64) {
	if lo >= hi {
		return
	}
	out := s.r[:0:0]
	changed := false
	for _, sp := range s.r {
		if sp.hi <= lo || sp.lo >= hi {
			out = append(out, sp)
			continue
		}
		changed = true
		if sp.lo < lo {
			out = append(out, span{sp.lo, lo})
		}
		if sp.hi > hi {
			out = append(out, span{hi, sp.hi})
		}
	}
	if changed {
		s.r = out
	}
}

// first returns the lowest interval.
func (s *rangeSet) first() (span, bool) {
	if len(s.r) == 0 {
		return span{}, false
	}
	return s.r[0], true
}

// trimBelow drops everything below v.
func (s *rangeSet) trimBelow(v uint64) {
	i := 0
	for i < len(s.r) && s.r[i].hi <= v {
		i++
	}
	if i > 0 {
		s.r = append(s.r[:0], s.r[i:]...)
	}
	if len(s.r) > 0 && s.r[0].lo < v {
		s.r[0].lo = v
	}
}

// keepTop limits the set to its n highest intervals.
func (s *rangeSet) keepTop(n int) {
	if len(s.r) > n {
		s.r = append(s.r[:0], s.r[len(s.r)-n:]...)
	}
}
