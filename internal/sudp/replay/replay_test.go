package replay

import (
	"math"
	"math/rand/v2"
	"testing"
)

type step struct {
	n    uint64
	want bool
}

func TestFilterTable(t *testing.T) {
	const top = math.MaxUint64
	tests := []struct {
		name  string
		steps []step
	}{
		{"zero accepted once", []step{{0, true}, {0, false}, {1, true}, {0, false}}},
		{"in order", []step{{1, true}, {2, true}, {3, true}, {4, true}, {5, true}}},
		{"out of order within window", []step{
			{10, true}, {8, true}, {9, true}, {1, true}, {7, true}, {8, false}, {10, false}, {11, true},
		}},
		{"duplicates", []step{{5, true}, {5, false}, {6, true}, {5, false}, {6, false}}},
		{"window edge", []step{
			{WindowSize + 100, true},
			{100, true},  // exactly WindowSize below the top: still inside
			{99, false},  // one further: too old
			{100, false}, // and the edge one was recorded
			{WindowSize + 99, true},
		}},
		{"too old", []step{{20000, true}, {20000 - WindowSize - 1, false}, {1, false}, {0, false}}},
		{"slide by one block keeps history", []step{
			{63, true}, {64, true}, {63, false}, {128, true}, {64, false}, {100, true},
		}},
		{"huge jump clears window", []step{
			{1, true}, {2, true}, {3, true},
			{1 << 40, true},
			{3, false}, // too old now, not "seen"
			{1<<40 - 1, true},
			{1<<40 - WindowSize, true},
			{1 << 40, false},
		}},
		{"jump of exactly one ring", []step{
			{5, true}, {5 + RingBits, true}, {5 + RingBits - 1, true}, {5 + RingBits, false},
		}},
		{"near max uint64", []step{
			{top - 5, true}, {top, true}, {top, false}, {top - 1, true}, {top - 5, false},
			{top - WindowSize, true}, {top - WindowSize - 1, false},
		}},
		{"max first", []step{{top, true}, {0, false}, {top - 1, true}}},
		{"stale bits of a wrapped block are cleared", []step{
			// Number 1 and 1+RingBits share a bit position; after the window
			// slides past, the old bit must not make the new number a replay.
			{1, true}, {RingBits - 1, true}, {RingBits + 1, true}, {RingBits + 2, true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var f Filter
			for i, s := range tc.steps {
				if got := f.Check(s.n); got != s.want {
					t.Fatalf("step %d: Check(%d) = %v, want %v", i, s.n, got, s.want)
				}
				if got := f.Accept(s.n); got != s.want {
					t.Fatalf("step %d: Accept(%d) = %v, want %v", i, s.n, got, s.want)
				}
				// Whatever happened, n is now seen or too old.
				if f.Check(s.n) {
					t.Fatalf("step %d: Check(%d) true right after Accept", i, s.n)
				}
			}
		})
	}
}

func TestCheckDoesNotModify(t *testing.T) {
	var f Filter
	for n := uint64(0); n < 3*RingBits; n += 7 {
		for range 2 {
			if !f.Check(n) {
				t.Fatalf("Check(%d) false on a fresh filter", n)
			}
		}
	}
	if f != (Filter{}) {
		t.Fatal("Check modified the filter")
	}
}

// TestConcurrentDuplicate models two copies of one packet that both passed
// Check before either was authenticated: only the first Accept may win.
func TestConcurrentDuplicate(t *testing.T) {
	var f Filter
	f.Accept(100)
	// Both copies pass the cheap check while neither is authenticated yet.
	for range 2 {
		if !f.Check(50) {
			t.Fatal("Check(50) refused")
		}
	}
	if !f.Accept(50) {
		t.Fatal("first Accept(50) refused")
	}
	if f.Accept(50) {
		t.Fatal("second Accept(50) accepted")
	}
}

func TestReset(t *testing.T) {
	var f Filter
	for n := uint64(0); n < 1000; n++ {
		f.Accept(n)
	}
	f.Reset()
	for n := uint64(0); n < 1000; n++ {
		if !f.Accept(n) {
			t.Fatalf("Accept(%d) refused after Reset", n)
		}
	}
}

// model is the obviously correct specification: a set of every number ever
// seen, and the same age rule.
type model struct {
	seen map[uint64]bool
	last uint64
}

func (m *model) check(n uint64) bool {
	if n <= m.last && m.last-n > WindowSize {
		return false
	}
	return !m.seen[n]
}

func (m *model) accept(n uint64) bool {
	if !m.check(n) {
		return false
	}
	m.seen[n] = true
	if n > m.last {
		m.last = n
	}
	return true
}

func TestFilterMatchesModel(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		rng := rand.New(rand.NewChaCha8([32]byte{byte(seed)}))
		var f Filter
		m := model{seen: make(map[uint64]bool)}
		var top uint64
		if seed%2 == 0 {
			top = math.MaxUint64 - 1_000_000 // exercise the top of the range
		}
		m.last, f.last = top, top // both start "at" top having seen nothing there
		for i := 0; i < 50_000; i++ {
			var n uint64
			switch r := rng.IntN(100); {
			case r < 50: // mostly forward, a little ahead
				n = m.last + uint64(rng.IntN(70))
			case r < 80: // reordered inside (or just beyond) the window
				n = m.last - uint64(rng.IntN(WindowSize+200))
			case r < 90: // replay of something recent
				n = m.last - uint64(rng.IntN(64))
			case r < 98: // a jump of up to a few rings
				n = m.last + uint64(rng.IntN(4*RingBits))
			default: // a huge jump
				n = m.last + uint64(rng.Int64N(1<<40))
			}
			if n < top { // wrapped around the top of uint64: skip
				continue
			}
			if got, want := f.Check(n), m.check(n); got != want {
				t.Fatalf("seed %d op %d: Check(%d) = %v, model %v (last %d)", seed, i, n, got, want, m.last)
			}
			if got, want := f.Accept(n), m.accept(n); got != want {
				t.Fatalf("seed %d op %d: Accept(%d) = %v, model %v (last %d)", seed, i, n, got, want, m.last)
			}
		}
	}
}

func BenchmarkAcceptInOrder(b *testing.B) {
	var f Filter
	for i := 0; b.Loop(); i++ {
		f.Accept(uint64(i))
	}
}
