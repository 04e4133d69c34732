package congestion

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestPacerNeverExceedsBucket checks the pacer's contract: a caller that only
// sends when Delay returns 0 never releases more than Burst + rate·elapsed in
// any interval. The caller here is adversarial: it polls at random instants,
// sometimes early, sometimes late, with random packet sizes.
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
			switch rng.IntN(3) {
			case 0:
			case 1:
				now = now.Add(d)
			default:
				now = now.Add(time.Duration(rng.IntN(3000)) * time.Microsecond)
			}
		}
		// Burst depends on packet size; the largest size bounds it.
		burst := Burst(rate, maxSize)
		for i := range log {
			var bytes float64
			for j := i; j < len(log); j++ {
				bytes += float64(log[j].size)
				allowed := burst + rate*log[j].at.Sub(log[i].at).Seconds()
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
