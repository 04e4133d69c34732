package zstream

import (
	"math/rand/v2"
	"testing"
	"time"
)

// One step of a policy's life: the decision it must take, then what
// happened.
type step struct {
	want   bool          // Compress's answer
	z      int           // the chunk of 1000 bytes compressed to z (if compressed)
	waited time.Duration // the write's wait
}

func TestPolicy(t *testing.T) {
	const blocked, free = 5 * time.Millisecond, 10 * time.Microsecond
	for _, tc := range []struct {
		name   string
		always bool
		steps  []step
	}{
		{"compresses from the start, and for LinkMemory frames after the link held it back", false, append(append(
			repeat(step{true, 400, free}, LinkMemory-1), // the start counts as held back
			step{true, 400, blocked}),                   // held back: LinkMemory more
			append(repeat(step{true, 400, free}, LinkMemory),
				step{false, 0, free}, step{false, 0, free}, // free for LinkMemory frames: raw
				step{false, 0, Blocked - time.Microsecond}, // not a wait
				step{false, 0, Blocked},                    // a wait: compress again
				step{true, 400, free})...)},
		{"incompressible data backs off 1, 2, 4 chunks", false, []step{
			{true, 950, blocked}, // poor: skip 1
			{false, 0, blocked},
			{true, 990, blocked}, // poor: skip 2
			{false, 0, blocked}, {false, 0, blocked},
			{true, 1001, blocked}, // poor: skip 4
			{false, 0, blocked}, {false, 0, blocked}, {false, 0, blocked}, {false, 0, blocked},
			{true, 500, blocked}, // compresses again: no backoff
			{true, 870, blocked}, // 7/8 exactly is still worth it
			{true, 500, blocked},
		}},
		{"always: compresses on a free link too, and backs off the same", true, []step{
			{true, 400, free}, {true, 400, free}, {true, 950, free}, {false, 0, free}, {true, 400, free},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Policy{Always: tc.always}
			for i, s := range tc.steps {
				if got := p.Compress(); got != s.want {
					t.Fatalf("step %d: Compress %v, want %v", i, got, s.want)
				}
				if s.want {
					p.Compressed(1000, s.z)
				}
				p.Wrote(s.waited)
			}
		})
	}
}

func repeat(s step, n int) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestPolicyBackoffBounded(t *testing.T) {
	p := Policy{Always: true}
	tries := 0
	for i := 0; i < 10000; i++ {
		if p.Compress() {
			tries++
			if p.Compressed(1000, 1000) {
				t.Fatal("an incompressible chunk is to be sent compressed")
			}
		}
	}
	// 1+2+4+8 = 15 chunks to reach the bound, then one try in 9.
	if want := 4 + (10000-4-15)/9; tries < want-1 || tries > want+1 {
		t.Fatalf("%d tries in 10000 incompressible chunks, want about %d", tries, want)
	}
}

func TestRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	rnd := make([]byte, MaxFrame)
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	text := make([]byte, MaxFrame)
	for i := range text {
		text[i] = 'a' + byte(r.IntN(26))
	}
	page := append(make([]byte, 0, MaxFrame), rnd[:4096]...)
	for len(page) < MaxFrame {
		page = append(page, page[:4096]...)
	}
	block := append(make([]byte, 0, MaxFrame), rnd[:64<<10]...)
	for len(block) < MaxFrame {
		block = append(block, block[:64<<10]...)
	}
	half := append(append([]byte(nil), rnd[:MaxFrame/2]...), make([]byte, MaxFrame/2)...)
	for _, tc := range []struct {
		name string
		c    []byte
		want bool
	}{
		{"random", rnd, true},
		{"random, under the sample minimum", rnd[:minSample-1], false},
		{"letters", text, false},
		{"zeros", make([]byte, MaxFrame), false},
		{"half random, half zeros", half, false},
		// A page repeated: its 256 sampled bytes read as 7.2 bits.
		{"one random page repeated", page, false},
		// The documented blind spot: random bytes repeated at a
		// longer period.
		{"a 64 KiB random block repeated", block, true},
	} {
		if got := Random(tc.c); got != tc.want {
			t.Errorf("%s: Random %v, want %v", tc.name, got, tc.want)
		}
	}
}
