package congestion

import (
	"math/rand/v2"
	"testing"
	"time"
)

// bruteBest is the exact windowed best the filter approximates.
func bruteBest(vals []float64, ts []uint64, now, window uint64, keepMax bool) float64 {
	best, ok := 0.0, false
	for i := range vals {
		if now-ts[i] > window {
			continue
		}
		if !ok || (keepMax && vals[i] > best) || (!keepMax && vals[i] < best) {
			best, ok = vals[i], true
		}
	}
	return best
}

func TestMaxFilterBasic(t *testing.T) {
	f := newMaxFilter[float64](10)
	if f.Get() != 0 {
		t.Fatalf("empty filter = %v, want 0", f.Get())
	}
	f.Update(5, 1)
	f.Update(3, 2)
	if got := f.Get(); got != 5 {
		t.Fatalf("max = %v, want 5", got)
	}
	f.Update(9, 3)
	if got := f.Get(); got != 9 {
		t.Fatalf("max = %v, want 9 (a new best replaces everything)", got)
	}
	// Feed lower values: 9 (t=3) must survive through t=13 and expire after.
	for tt := uint64(4); tt <= 13; tt++ {
		if got := f.Update(4, tt); got != 9 {
			t.Fatalf("t=%d: max = %v, want 9 still in window", tt, got)
		}
	}
	if got := f.Update(4, 14); got != 4 {
		t.Fatalf("t=14: max = %v, want 4 after 9 expired", got)
	}
}

func TestMaxFilterIncreasingSignalIsExact(t *testing.T) {
	// For a rising signal every sample is a new best: the estimate is exact.
	f := newMaxFilter[float64](10)
	for tt := uint64(0); tt < 100; tt++ {
		if got := f.Update(float64(tt), tt); got != float64(tt) {
			t.Fatalf("t=%d: got %v", tt, got)
		}
	}
}

func TestWindowedFilterRandomBounds(t *testing.T) {
	// On arbitrary input the estimate is a value that was seen within the
	// window, and never worse than the exact best over the most recent
	// quarter of it (the sub-window guarantee of Nichols' algorithm).
	rng := rand.New(rand.NewPCG(1, 2))
	for _, keepMax := range []bool{true, false} {
		f := windowedFilter[float64]{window: 40, keepMax: keepMax}
		var vals []float64
		var ts []uint64
		tt := uint64(0)
		for i := 0; i < 2000; i++ {
			tt += uint64(rng.IntN(3)) // repeated and skipped keys
			v := rng.Float64() * 100
			vals, ts = append(vals, v), append(ts, tt)
			got := f.Update(v, tt)
			exact := bruteBest(vals, ts, tt, 40, keepMax)
			recent := bruteBest(vals, ts, tt, 10, keepMax)
			if keepMax && (got > exact || got < recent) {
				t.Fatalf("max, t=%d: got %v, want in [%v, %v]", tt, got, recent, exact)
			}
			if !keepMax && (got < exact || got > recent) {
				t.Fatalf("min, t=%d: got %v, want in [%v, %v]", tt, got, exact, recent)
			}
		}
	}
}

func TestMinFilterDurations(t *testing.T) {
	f := newMinFilter[time.Duration](10)
	f.Update(50*time.Millisecond, 0)
	f.Update(70*time.Millisecond, 5)
	if got := f.Get(); got != 50*time.Millisecond {
		t.Fatalf("min = %v, want 50ms", got)
	}
	f.Update(70*time.Millisecond, 11)
	if got := f.Get(); got != 70*time.Millisecond {
		t.Fatalf("min = %v, want 70ms once 50ms aged out", got)
	}
}

func TestMinRTTFilter(t *testing.T) {
	t0 := time.Unix(0, 0)
	f := minRTTFilter{window: 10 * time.Second, stamp: t0}
	if f.Update(0, t0) {
		t.Fatal("empty filter reported expiry")
	}
	f.Update(50*time.Millisecond, t0)
	f.Update(80*time.Millisecond, t0.Add(time.Second))
	if f.min != 50*time.Millisecond {
		t.Fatalf("min = %v, want 50ms", f.min)
	}
	// A sample within 1/32 re-confirms (refreshes the stamp), a higher one
	// does not.
	f.Update(51*time.Millisecond, t0.Add(5*time.Second))
	if f.min != 50*time.Millisecond || !f.stamp.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("51ms should refresh the stamp of 50ms: min %v stamp %v", f.min, f.stamp)
	}
	f.Update(60*time.Millisecond, t0.Add(9*time.Second))
	if !f.stamp.Equal(t0.Add(5 * time.Second)) {
		t.Fatal("60ms must not refresh the 50ms minimum")
	}
	if f.Expired(t0.Add(15 * time.Second)) {
		t.Fatal("expired too early")
	}
	// After the window, the next sample replaces the minimum whatever it is.
	if !f.Update(90*time.Millisecond, t0.Add(15*time.Second+time.Millisecond)) {
		t.Fatal("expiry not reported")
	}
	if f.min != 90*time.Millisecond {
		t.Fatalf("after expiry min = %v, want the new sample 90ms", f.min)
	}
	// A lower sample always wins at once.
	f.Update(40*time.Millisecond, t0.Add(16*time.Second))
	if f.min != 40*time.Millisecond {
		t.Fatalf("min = %v, want 40ms", f.min)
	}
}
