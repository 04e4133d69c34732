package congestion

import (
	"os"
	"testing"
	"time"
)

// TestFairnessSweep is the robustness sweep behind the tolerances of
// TestSimFairness and the design notes in doc.go. It takes about a minute, so
// it only runs on request:
//
//	FERRY_CC_SWEEP=1 go test -run TestFairnessSweep -v ./internal/sudp/congestion/
//
// It runs 2 and 4 flows, 0.25 and 1 BDP drop-tail buffers, 20/50/80 ms RTT
// and three stagger intervals (36 scenarios) for the controller as built and
// for two variants: a BBRv2-style 2 % loss-rate threshold, and no loss rule.
func TestFairnessSweep(t *testing.T) {
	if os.Getenv("FERRY_CC_SWEEP") == "" {
		t.Skip("set FERRY_CC_SWEEP=1 to run the fairness sweep")
	}
	variants := []struct {
		name  string
		setup func(*Controller)
	}{
		{"as built (any loss + standing queue)", func(*Controller) {}},
		{"2% loss threshold + standing queue", func(c *Controller) { c.lossThreshold = 0.02 }},
		{"no loss rule (BBRv1)", func(c *Controller) { c.noLossRule = true }},
	}
	for _, v := range variants {
		worstJ, worstU, worstDrop, sumJ, n := 1.0, 1.0, 0.0, 0.0, 0
		for _, flows := range []int{2, 4} {
			for _, q := range []float64{1, 0.25} {
				for _, d := range []time.Duration{10 * time.Millisecond, 25 * time.Millisecond, 40 * time.Millisecond} {
					for _, stag := range []time.Duration{1500 * time.Millisecond, 2 * time.Second, 3100 * time.Millisecond} {
						bdp := int(refRate * (2 * d).Seconds())
						var fl []flowSpec
						for i := 0; i < flows; i++ {
							setup := v.setup
							fl = append(fl, flowSpec{start: time.Duration(i) * stag, newCC: func(now time.Time) ccAlgo {
								c := New(Config{MaxDatagramSize: mss}, now)
								setup(c)
								return c
							}})
						}
						const dur = 30 * time.Second
						s := newSim(simConfig{rate: refRate, delay: d, queue: int(q * float64(bdp)), seed: 1, duration: dur}, fl...)
						s.run()
						from, to := dur/2, dur
						shares := make([]float64, flows)
						for i := range shares {
							shares[i] = s.goodput(i, from, to) / refRate
						}
						j, u, dr := jain(shares), s.totalGoodput(from, to)/refRate, s.dropRate(from, to)
						worstJ, worstU, worstDrop = min(worstJ, j), min(worstU, u), max(worstDrop, dr)
						sumJ += j
						n++
						if j < 0.9 {
							t.Logf("  %s: %d flows, %.2f BDP buffer, RTT %v, stagger %v: Jain %.3f", v.name, flows, q, 2*d, stag, j)
						}
					}
				}
			}
		}
		t.Logf("%-40s worst Jain %.3f, mean Jain %.3f, worst utilisation %.1f%%, worst drop rate %.2f%%",
			v.name, worstJ, sumJ/float64(n), 100*worstU, 100*worstDrop)
	}
}
