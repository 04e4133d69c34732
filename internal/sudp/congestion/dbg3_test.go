package congestion

import (
	"fmt"
	"testing"
	"time"
)

func TestDbgFair(t *testing.T) {
	rate := 100 * mbit
	n, q, d, stag := 4, 0.25, 40*time.Millisecond, 2*time.Second
	bdp := int(rate * (2 * d).Seconds())
	var fl []flowSpec
	for i := 0; i < n; i++ {
		fl = append(fl, bbrFlow(time.Duration(i)*stag))
	}
	dur := 30 * time.Second
	s := newSim(simConfig{rate: rate, delay: d, queue: int(q * float64(bdp)), seed: 1, duration: dur}, fl...)
	for t0 := time.Second; t0 < dur; t0 += time.Second {
		s.at(t0, func(time.Time) {
			fmt.Printf("%v", t0)
			for _, f := range s.flows {
				if f.cc == nil {
					continue
				}
				st := f.cc.(*Controller).Stats()
				fmt.Printf(" | %s bw=%.2f cw=%.2f ce=%.2f infl=%.2f cong=%d mr=%v", st.State[:3], st.BtlBw/rate, float64(st.Cwnd)/float64(bdp), float64(st.InflightCeiling)/float64(bdp), float64(f.inflight)/float64(bdp), st.CongestionEvents, st.MinRTT.Milliseconds())
			}
			fmt.Println()
		})
	}
	s.run()
	for t0 := time.Duration(0); t0 < dur; t0 += time.Second {
		fmt.Printf("%v", t0)
		for i := range s.flows {
			fmt.Printf(" %.3f", s.goodput(i, t0, t0+time.Second)/rate)
		}
		fmt.Println()
	}
}
