package ratelimit

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := NewBucket(t0, 1000, 3000)
	steps := []struct {
		at   time.Duration
		n    int
		want bool
	}{
		{0, 1200, true},                       // from the burst
		{0, 1200, true},                       // 600 left
		{0, 1200, false},                      // over: nothing taken
		{500 * time.Millisecond, 1200, false}, // 1,100 left
		{600 * time.Millisecond, 1200, true},  // 1,200: exactly enough
		{time.Hour, 3000, true},               // refilled to the burst, not beyond
		{time.Hour, 1, false},
		{time.Hour - time.Second, 1, false}, // time going back adds nothing
	}
	for i, s := range steps {
		if got := b.Allow(t0.Add(s.at), s.n); got != s.want {
			t.Fatalf("step %d (%v, %d): allowed %v, want %v", i, s.at, s.n, got, s.want)
		}
	}
	if b.Refused() != 4 || b.Rate() != 1000 {
		t.Errorf("refused %d, rate %v; want 4, 1000", b.Refused(), b.Rate())
	}
	var none *Bucket
	if !none.Allow(t0, 1<<30) || none.Rate() != 0 || none.Refused() != 0 {
		t.Error("a nil bucket limited something")
	}
}
