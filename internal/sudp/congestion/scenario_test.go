package congestion

import (
	"fmt"
	"testing"
	"time"
)

const (
	mbit = 1e6 / 8 // bytes/s per Mbit/s
	mss  = 1452
)

func bbrFlow(start time.Duration) flowSpec {
	return flowSpec{start: start, newCC: func(now time.Time) ccAlgo {
		return New(Config{MaxDatagramSize: mss}, now)
	}}
}

func bbrV1Flow(start time.Duration) flowSpec {
	return flowSpec{start: start, newCC: func(now time.Time) ccAlgo {
		c := New(Config{MaxDatagramSize: mss}, now)
		c.noLossRule = true
		return c
	}}
}

func renoFlow(start time.Duration) flowSpec {
	return flowSpec{start: start, newCC: func(now time.Time) ccAlgo { return newReno(mss) }}
}

func TestExplore(t *testing.T) {
	rate := 100 * mbit
	d := 25 * time.Millisecond
	bdp := int(rate * (2 * d).Seconds())
	for _, p := range []float64{0, 0.01, 0.05, 0.10} {
		s := newSim(simConfig{rate: rate, delay: d, queue: bdp, loss: p, seed: 1, duration: 12 * time.Second}, bbrFlow(0))
		start := time.Now()
		s.run()
		st := s.flows[0].cc.(*Controller).Stats()
		fmt.Printf("p=%.2f goodput=%.1f%% of R(1-p)  qdelay=%v maxq=%d  wall=%v stats=%+v\n", p,
			100*s.goodput(0, 2*time.Second, 12*time.Second)/(rate*(1-p)), s.meanQueueDelay(2*time.Second, 12*time.Second), s.maxQueue, time.Since(start), st)
	}
}

func TestExploreMulti(t *testing.T) {
	rate := 100 * mbit
	d := 25 * time.Millisecond
	bdp := int(rate * (2 * d).Seconds())
	type cfg struct {
		n     int
		q     float64
		v1    bool
		dur   time.Duration
		stagger time.Duration
	}
	for _, c := range []cfg{{2, 1, false, 30 * time.Second, 3 * time.Second}, {4, 1, false, 30 * time.Second, 3 * time.Second}, {2, 1, true, 30 * time.Second, 3 * time.Second}, {4, 1, true, 30 * time.Second, 3 * time.Second},
		{4, 0.25, false, 20 * time.Second, time.Second}, {4, 0.25, true, 20 * time.Second, time.Second}, {2, 0.25, false, 20 * time.Second, time.Second}, {4, 4, false, 30 * time.Second, 3 * time.Second}} {
		var fl []flowSpec
		for i := 0; i < c.n; i++ {
			if c.v1 {
				fl = append(fl, bbrV1Flow(time.Duration(i)*c.stagger))
			} else {
				fl = append(fl, bbrFlow(time.Duration(i)*c.stagger))
			}
		}
		s := newSim(simConfig{rate: rate, delay: d, queue: int(c.q * float64(bdp)), seed: 1, duration: c.dur}, fl...)
		start := time.Now()
		s.run()
		from, to := c.dur/2, c.dur
		var g []float64
		for i := range s.flows {
			g = append(g, s.goodput(i, from, to)/rate)
		}
		fmt.Printf("n=%d q=%.2f v1=%v util=%.3f jain=%.3f shares=%.3f qdelay=%v drop=%.4f wall=%v\n", c.n, c.q, c.v1, s.totalGoodput(from, to)/rate, jain(g), g, s.meanQueueDelay(from, to), s.dropRate(from, to), time.Since(start))
		for i := range s.flows {
			st := s.flows[i].cc.(*Controller).Stats()
			fmt.Printf("   %s bw=%.2f minrtt=%v srtt=%v cwnd=%d ceil=%d loss=%.3f cong=%d\n", st.State, st.BtlBw/rate, st.MinRTT, st.SRTT, st.Cwnd, st.InflightCeiling, st.LossRate, st.CongestionEvents)
		}
	}
}

func TestExploreCap(t *testing.T) {
	rate := 100 * mbit
	d := 25 * time.Millisecond
	bdp := int(rate * (2 * d).Seconds())
	var ctl *Controller
	fs := flowSpec{newCC: func(now time.Time) ccAlgo {
		ctl = New(Config{MaxDatagramSize: mss, MaxRate: 0.2 * rate}, now)
		return ctl
	}}
	s := newSim(simConfig{rate: rate, delay: d, queue: bdp, seed: 1, duration: 18 * time.Second}, fs)
	s.at(6*time.Second, func(time.Time) { ctl.SetMaxRate(0.5 * rate) })
	s.at(10*time.Second, func(time.Time) { ctl.SetMaxRate(0) })
	s.at(14*time.Second, func(time.Time) { ctl.SetMaxRate(0.1 * rate) })
	s.run()
	for t0 := time.Duration(0); t0 < 18*time.Second; t0 += 250 * time.Millisecond {
		fmt.Printf("%v %.3f q=%v\n", t0, s.goodput(0, t0, t0+250*time.Millisecond)/rate, s.meanQueueDelay(t0, t0+250*time.Millisecond))
	}
	fmt.Printf("%+v\n", ctl.Stats())
}
