package congestion

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestPacerNeverExceedsBucket checks the pacer's contract: a caller that only
// sends when Delay returns 0 never releases more than Burst + rate·T +
// min(rate·T, rate·CatchUpLimit) in any interval of length T (the bucket,
// plus the catch-up of time it lost by polling late), and never more than
// Burst + rate·elapsed since it started. The caller here is adversarial: it
// polls at random instants, sometimes early, sometimes late (up to 30 ms,
// beyond the catch-up limit), sometimes stops as if its window were full,
// with random packet sizes.
func TestPacerNeverExceedsBucket(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 7))
	for _, rate := range []float64{50e3, 1.25e6, 12.5e6, 1.25e9} {
		var p Pacer
		now := time.Unix(1000, 0)
		type sent struct {
			at   time.Time
			size int
		}
		var log []sent
		maxSize := 0
		for len(log) < 1000 {
			size := 200 + rng.IntN(1300)
			d := p.Delay(now, rate, size)
			if d == 0 {
				p.OnSent(now, rate, size)
				log = append(log, sent{now, size})
				maxSize = max(maxSize, size)
			}
			// Next poll: sometimes right away, sometimes at the suggested
			// delay, sometimes much later (a late timer).
			switch rng.IntN(5) {
			case 0:
			case 1:
				now = now.Add(d)
			case 2:
				now = now.Add(d + time.Duration(rng.IntN(30000))*time.Microsecond)
			case 3:
				p.Blocked()
				now = now.Add(time.Duration(rng.IntN(3000)) * time.Microsecond)
			default:
				now = now.Add(time.Duration(rng.IntN(3000)) * time.Microsecond)
			}
		}
		// Burst depends on packet size; the largest size bounds it.
		burst := Burst(rate, maxSize)
		start := log[0].at
		var total float64
		for i := range log {
			total += float64(log[i].size)
			if lim := burst + rate*log[i].at.Sub(start).Seconds(); total > lim+1e-6 {
				t.Fatalf("rate %.0f: %.0f bytes released in the first %v, more than the rate allows (%.0f)",
					rate, total, log[i].at.Sub(start), lim)
			}
			var bytes float64
			for j := i; j < len(log); j++ {
				bytes += float64(log[j].size)
				T := log[j].at.Sub(log[i].at).Seconds()
				allowed := burst + rate*T + min(rate*T, rate*CatchUpLimit.Seconds())
				if bytes > allowed+1e-6 {
					t.Fatalf("rate %.0f: %0.f bytes released in %v, bucket allows %.0f",
						rate, bytes, log[j].at.Sub(log[i].at), allowed)
				}
			}
		}
	}
}

// TestPacerAverageRate: a caller that sleeps exactly as long as Delay says
// gets the configured rate, not less (no rounding loss per packet).
func TestPacerAverageRate(t *testing.T) {
	for _, rate := range []float64{1e5, 12.5e6, 1.25e9} {
		var p Pacer
		start := time.Unix(0, 0)
		now := start
		sent := 0
		for sent < 20000*1452 {
			if d := p.Delay(now, rate, 1452); d > 0 {
				now = now.Add(d)
				continue
			}
			p.OnSent(now, rate, 1452)
			sent += 1452
		}
		burst := Burst(rate, 1452)
		avg := (float64(sent) - burst) / now.Sub(start).Seconds()
		if math.Abs(avg-rate)/rate > 0.001 {
			t.Errorf("rate %.0f: average %.0f", rate, avg)
		}
	}
}

func TestPacerDelayIsExact(t *testing.T) {
	var p Pacer
	now := time.Unix(0, 0)
	rate := 1e6 // 1 MB/s: 1000 bytes per ms
	// Burst here is max(1 ms × rate, 10 packets) = 10 000 bytes.
	for i := 0; i < 10; i++ {
		if d := p.Delay(now, rate, 1000); d != 0 {
			t.Fatalf("packet %d of the initial burst delayed %v", i, d)
		}
		p.OnSent(now, rate, 1000)
	}
	d := p.Delay(now, rate, 1000)
	if d < time.Millisecond-time.Microsecond || d > time.Millisecond+time.Microsecond {
		t.Fatalf("after the burst: delay %v, want 1ms", d)
	}
	if d2 := p.Delay(now.Add(d), rate, 1000); d2 != 0 {
		t.Fatalf("at now+delay the packet is still delayed by %v", d2)
	}
}

func TestPacerDisabledAndClockSteps(t *testing.T) {
	var p Pacer
	now := time.Unix(0, 0)
	if d := p.Delay(now, 0, 1500); d != 0 {
		t.Fatal("rate 0 must disable pacing")
	}
	rate := 1e5
	for p.Delay(now, rate, 1500) == 0 {
		p.OnSent(now, rate, 1500)
	}
	// A clock stepping backwards must not mint tokens.
	before := p.tokens
	p.Delay(now.Add(-time.Hour), rate, 1500)
	if p.tokens != before {
		t.Fatalf("tokens changed from %v to %v on a backwards clock", before, p.tokens)
	}
}

func TestPacerNoAllocs(t *testing.T) {
	var p Pacer
	now := time.Unix(0, 0)
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Microsecond)
		if p.Delay(now, 1e7, 1452) == 0 {
			p.OnSent(now, 1e7, 1452)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per call", allocs)
	}
}

// TestPacerCatchUp: a caller woken 10 ms late (a descheduled thread) makes
// the lost sending time up at no more than twice the rate, and has sent what
// the rate allows soon after; one that was blocked by its window instead
// gets no credit for the pause.
func TestPacerCatchUp(t *testing.T) {
	const (
		rate = 12.5e6 // 100 Mbit/s
		size = 1452
	)
	run := func(blocked bool) (sent float64, peak float64) {
		var p Pacer
		start := time.Unix(0, 0)
		now := start
		var times []time.Time
		late := false
		for now.Sub(start) < 100*time.Millisecond {
			d := p.Delay(now, rate, size)
			if d > 0 {
				if !late && now.Sub(start) >= 40*time.Millisecond {
					late = true
					if blocked {
						p.Blocked()
					}
					d += 10 * time.Millisecond
				}
				now = now.Add(d)
				continue
			}
			p.OnSent(now, rate, size)
			sent += size
			times = append(times, now)
		}
		// The densest 1 ms after the late wake-up (past the bucket).
		for i := range times {
			n := 0
			for j := i; j < len(times) && times[j].Sub(times[i]) < time.Millisecond; j++ {
				n++
			}
			if times[i].Sub(start) > 51*time.Millisecond+3*time.Millisecond {
				peak = max(peak, float64(n*size))
			}
		}
		return sent, peak
	}
	sent, peak := run(false)
	burst := Burst(rate, size)
	if want := burst + rate*0.1; sent < want-2*size || sent > want+size {
		t.Errorf("late caller: %.0f bytes in 100 ms, want the rate's %.0f (the 10 ms made up)", sent, want)
	}
	if limit := 2*rate*0.001 + 2*size; peak > limit {
		t.Errorf("catch-up peaked at %.0f bytes in 1 ms, more than twice the rate (%.0f)", peak, limit)
	}
	sentBlocked, _ := run(true)
	if want := burst + rate*0.09; sentBlocked < want-2*size || sentBlocked > want+burst+size {
		t.Errorf("blocked caller: %.0f bytes in 100 ms, want about %.0f (no credit for the pause)", sentBlocked, want)
	}
}

// TestPacerCreditFollowsRate: credit earned at a high rate is sending time,
// not bytes: after the rate drops, the pacer releases no more than the new
// rate's bucket, rate and catch-up allow (the credit was capped at 20 ms
// of the old rate and released at up to the new one).
func TestPacerCreditFollowsRate(t *testing.T) {
	const size = 1452
	var p Pacer
	now := time.Unix(0, 0)
	hi, lo := 100e6, 1e6
	// Drain the bucket at the high rate, then come back 30 ms late.
	for p.Delay(now, hi, size) == 0 {
		p.OnSent(now, hi, size)
	}
	now = now.Add(p.Delay(now, hi, size) + 30*time.Millisecond)
	p.Delay(now, hi, size) // refill: the lateness is credited
	for p.Delay(now, hi, size) == 0 {
		p.OnSent(now, hi, size) // the bucket goes out at once
	}
	// The rate drops a hundredfold; send for a second at the low rate.
	start, sent := now, 0.0
	for now.Sub(start) < time.Second {
		if d := p.Delay(now, lo, size); d > 0 {
			now = now.Add(d)
			continue
		}
		p.OnSent(now, lo, size)
		sent += size
	}
	T := now.Sub(start).Seconds()
	if limit := Burst(lo, size) + lo*T + lo*CatchUpLimit.Seconds() + size; sent > limit {
		t.Fatalf("%.0f bytes in %.3f s after the rate fell to %.0f B/s, limit %.0f", sent, T, lo, limit)
	}
}
