package congestion

import (
	"fmt"
	"testing"
	"time"
)

func TestDbgTrace(t *testing.T) {
	rate := 100 * mbit
	n, q, d, stag := 4, 4.0, 25*time.Millisecond, 3*time.Second
	bdp := int(rate * (2 * d).Seconds())
	var fl []flowSpec
	for i := 0; i < n; i++ {
		fl = append(fl, bbrFlow(time.Duration(i)*stag))
	}
	dur := 30 * time.Second
	s := newSim(simConfig{rate: rate, delay: d, queue: int(q * float64(bdp)), seed: 1, duration: dur}, fl...)
	for t0 := 1 * time.Second; t0 < 30*time.Second; t0 += 500 * time.Millisecond {
		s.at(t0, func(time.Time) {
			fmt.Printf("%v", t0)
			for _, f := range s.flows {
				if f.cc == nil {
					continue
				}
				c := f.cc.(*Controller)
				st := c.Stats()
				fmt.Printf(" | %s g=%.2f bw=%3d ce=%3d cw=%3d infl=%3d inc=%2d cong=%d skip=%d", st.State[:3], c.pacingGain, int(c.btlBw.Get()*c.minRTT.min.Seconds())/mss, st.InflightCeiling/mss, st.Cwnd/mss, f.inflight/mss, c.ceilingIncr/mss, st.CongestionEvents, c.skipRounds)
			}
			fmt.Printf(" q=%d\n", s.qbytes/mss)
		})
	}
	s.run()
	for t0 := 1 * time.Second; t0 < 30*time.Second; t0 += 500 * time.Millisecond {
		fmt.Printf("%v", t0)
		for i := range s.flows {
			fmt.Printf(" %.3f", s.goodput(i, t0, t0+time.Second)/rate)
		}
		fmt.Println()
	}
}
