package core

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
)

// rangeSet against a bitmap model, with random adds, removes and trims.
func TestRangeSetModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for iter := 0; iter < 200; iter++ {
		var s rangeSet
		model := make([]bool, 512)
		for op := 0; op < 100; op++ {
			lo := uint64(r.IntN(500))
			hi := lo + uint64(r.IntN(12))
			switch r.IntN(5) {
			case 0, 1, 2:
				s.add(lo, hi)
				for v := lo; v < hi; v++ {
					model[v] = true
				}
			case 3:
				s.remove(lo, hi)
				for v := lo; v < hi; v++ {
					model[v] = false
				}
			case 4:
				s.trimBelow(lo / 4)
				for v := uint64(0); v < lo/4; v++ {
					model[v] = false
				}
			}
			// Invariants: sorted, disjoint, non-adjacent, non-empty.
			for i, sp := range s.r {
				if sp.lo >= sp.hi || (i > 0 && s.r[i-1].hi >= sp.lo) {
					t.Fatalf("iter %d op %d: bad intervals %v", iter, op, s.r)
				}
			}
			for v := range model {
				in := false
				for _, sp := range s.r {
					if uint64(v) >= sp.lo && uint64(v) < sp.hi {
						in = true
					}
				}
				if in != model[v] {
					t.Fatalf("iter %d op %d: value %d: set %v model %v (%v)", iter, op, v, in, model[v], s.r)
				}
			}
		}
	}
	var s rangeSet
	for i := uint64(0); i < 10; i++ {
		s.add(i*10, i*10+5)
	}
	s.keepTop(3)
	if len(s.r) != 3 || s.r[0].lo != 70 {
		t.Fatalf("keepTop: %v", s.r)
	}
}

// ring keeps bytes at their offsets across growth and wrap-around.
func TestRingGrowthAndWrap(t *testing.T) {
	var r ring
	var model []byte
	rng := rand.New(rand.NewPCG(2, 2))
	var lo, hi uint64
	for step := 0; step < 2000; step++ {
		n := rng.IntN(9000)
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		r.ensure(hi + uint64(n))
		r.write(hi, p)
		model = append(model, p...)
		hi += uint64(n)
		if rng.IntN(3) == 0 && hi > lo {
			lo += uint64(rng.IntN(int(hi-lo) + 1))
			r.release(lo)
		}
		if hi > lo {
			got := make([]byte, hi-lo)
			r.read(lo, got)
			if !bytes.Equal(got, model[lo:hi]) {
				t.Fatalf("step %d: ring content differs in [%d,%d)", step, lo, hi)
			}
		}
	}
}

// TestSpanSetMatchesRangeSet drives the received-ranges set and the plain
// sorted slice with the same random insertions and trims, across block
// splits and merges, and checks they agree and the blocks keep their shape.
func TestSpanSetMatchesRangeSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for round := 0; round < 60; round++ {
		var a spanSet
		var b rangeSet
		var floor uint64
		space := uint64(64 + rng.IntN(20000))
		for op := 0; op < 3000; op++ {
			if rng.IntN(50) == 0 {
				floor += uint64(rng.IntN(int(space/8) + 1))
				a.trimBelow(floor)
				b.trimBelow(floor)
			} else {
				lo := floor + uint64(rng.IntN(int(space)))
				hi := lo + 1 + uint64(rng.IntN(1+rng.IntN(64)))
				a.add(lo, hi)
				b.add(lo, hi)
			}
			var flat []span
			for i, blk := range a.blocks {
				if len(blk) == 0 || len(blk) > spanBlock || (i < len(a.blocks)-1 && len(blk) < spanBlock/4) {
					t.Fatalf("round %d op %d: block %d of %d has %d intervals", round, op, i, len(a.blocks), len(blk))
				}
				flat = append(flat, blk...)
			}
			if a.len() != len(flat) || !slices.Equal(flat, b.r) {
				t.Fatalf("round %d op %d: spanSet %v (n=%d), rangeSet %v", round, op, flat, a.len(), b.r)
			}
		}
	}
}
