package congestion

import (
	"fmt"
	"testing"
	"time"
)

func TestSweepFair(t *testing.T) {
	mn, sum, k := 1.0, 0.0, 0
	var worstU = 1.0
	var drops float64
	sweepFair(func(j, u, dr float64) { mn = min(mn, j); sum += j; k++; worstU = min(worstU, u); drops = max(drops, dr) })
	fmt.Printf("minJain=%.3f mean=%.3f worstUtil=%.3f maxDrop=%.4f\n", mn, sum/float64(k), worstU, drops)
}

func sweepFair(report func(j, u, dr float64)) {
	rate := 100 * mbit
	for _, n := range []int{2, 4} {
		for _, q := range []float64{1, 0.25} {
			for _, d := range []time.Duration{10 * time.Millisecond, 25 * time.Millisecond, 40 * time.Millisecond} {
				for _, stag := range []time.Duration{1500 * time.Millisecond, 2 * time.Second, 3100 * time.Millisecond} {
					bdp := int(rate * (2 * d).Seconds())
					var fl []flowSpec
					for i := 0; i < n; i++ {
						fl = append(fl, bbrFlow(time.Duration(i)*stag))
					}
					dur := 30 * time.Second
					s := newSim(simConfig{rate: rate, delay: d, queue: int(q * float64(bdp)), seed: 1, duration: dur}, fl...)
					s.run()
					from, to := dur/2, dur
					var g []float64
					for i := range s.flows {
						g = append(g, s.goodput(i, from, to)/rate)
					}
					report(jain(g), s.totalGoodput(from, to)/rate, s.dropRate(from, to))
					if jain(g) < 0.95 {
						fmt.Printf("   n=%d q=%.2f d=%v stag=%v jain=%.3f util=%.3f drop=%.4f qd=%v\n", n, q, d, stag, jain(g), s.totalGoodput(from, to)/rate, s.dropRate(from, to), s.meanQueueDelay(from, to))
					}
				}
			}
		}
	}
}
