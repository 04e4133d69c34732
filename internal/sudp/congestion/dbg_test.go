package congestion

import (
	"fmt"
	"testing"
	"time"
)

func TestDbgCap(t *testing.T) {
	rate := 100 * mbit
	d := 25 * time.Millisecond
	bdp := int(rate * (2 * d).Seconds())
	var ctl *Controller
	fs := flowSpec{newCC: func(now time.Time) ccAlgo {
		ctl = New(Config{MaxDatagramSize: mss, MaxRate: 0.2 * rate}, now)
		return ctl
	}}
	s := newSim(simConfig{rate: rate, delay: d, queue: bdp, seed: 1, duration: 11 * time.Second}, fs)
	s.at(6*time.Second, func(time.Time) { ctl.SetMaxRate(0.5 * rate) })
	s.at(10*time.Second, func(time.Time) { ctl.SetMaxRate(0) })
	for t0 := 9900 * time.Millisecond; t0 < 10600*time.Millisecond; t0 += 10 * time.Millisecond {
		s.at(t0, func(time.Time) {
			st := ctl.Stats()
			fmt.Printf("%v %s bw=%.3f pr=%.3f cwnd=%d infl=%d ceil=%d\n", t0, st.State, st.BtlBw/rate, st.PacingRate/rate, st.Cwnd, s.flows[0].inflight, st.InflightCeiling)
		})
	}
	s.run()
}
