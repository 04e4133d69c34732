package congestion

// End-to-end scenarios on the simulator (sim_test.go). Every test logs the
// numbers it measured (go test -v shows them); tolerances are stated next to
// each assertion together with why they are what they are.

import (
	"testing"
	"time"
)

const (
	mbit = 1e6 / 8 // bytes/s per Mbit/s
	mss  = 1452

	// The reference path of the brief: 100 Mbit/s, 25 ms one way.
	refRate  = 100 * mbit
	refDelay = 25 * time.Millisecond
)

// refBDP is the bandwidth-delay product of the reference path, in bytes.
var refBDP = int(refRate * (2 * refDelay).Seconds())

func bbrFlow(start time.Duration) flowSpec {
	return flowSpec{start: start, newCC: func(now time.Time) ccAlgo {
		return New(Config{MaxDatagramSize: mss}, now)
	}}
}

// bbrV1Flow is the same controller with the loss-with-queueing rule off:
// plain BBRv1 behaviour, for same-run comparisons.
func bbrV1Flow(start time.Duration) flowSpec {
	return flowSpec{start: start, newCC: func(now time.Time) ccAlgo {
		c := New(Config{MaxDatagramSize: mss}, now)
		c.noLossRule = true
		return c
	}}
}

func renoFlow(start time.Duration) flowSpec {
	return flowSpec{start: start, newCC: func(time.Time) ccAlgo { return newReno(mss) }}
}

func ctl(s *sim, i int) *Controller { return s.flows[i].cc.(*Controller) }

// Scenario 1: one flow alone on the reference path with a 1-BDP drop-tail
// buffer and no random loss; the receiver ACKs every packet, then every
// second packet (5 ms delayed-ACK timer).
func TestSimSingleFlow(t *testing.T) {
	const dur = 8 * time.Second
	for _, ackEvery := range []int{1, 2} {
		s := newSim(simConfig{rate: refRate, delay: refDelay, queue: refBDP, seed: 1, ackEvery: ackEvery, duration: dur}, bbrFlow(0))
		s.run()
		from, to := 2*time.Second, dur // after STARTUP/DRAIN (~1 s on this path)
		util := s.goodput(0, from, to) / refRate
		qd := s.meanQueueDelay(from, to)
		st := ctl(s, 0).Stats()
		t.Logf("ACK every %d: goodput %.1f%% of R, mean queueing delay %v (1 BDP = %v), max queue %.2f BDP (STARTUP), state %s, btlbw %.1f Mbit/s, minRTT %v",
			ackEvery, 100*util, qd, 2*refDelay, float64(s.maxQueue)/float64(refBDP), st.State, st.BtlBw/mbit, st.MinRTT)
		// ≥ 90 % as the brief asks. PROBE_BW paces at 0.99×BtlBw and its
		// 0.75 phase mostly drains what the 1.25 probe queued, so ~99 % is
		// expected; PROBE_RTT (−2 % when it happens) is the main risk.
		if util < 0.90 {
			t.Errorf("ACK every %d: goodput %.1f%% of R, want ≥ 90%%", ackEvery, 100*util)
		}
		// The brief asks for less than 1 BDP of queue; a lone BBR flow only
		// queues during its one-RTT 1.25× probes (≤ 0.25 BDP at the peak,
		// once per ~7 RTTs), so hold it to a tenth of that bound.
		if qd > 2*refDelay/10 {
			t.Errorf("ACK every %d: mean queueing delay %v, want ≤ %v (0.1 BDP)", ackEvery, qd, 2*refDelay/10)
		}
		if st.MinRTT < 2*refDelay || st.MinRTT > 2*refDelay+2*time.Millisecond {
			t.Errorf("ACK every %d: minRTT %v, want ≈ %v", ackEvery, st.MinRTT, 2*refDelay)
		}
		if bw := st.BtlBw / refRate; bw < 0.95 || bw > 1.05 {
			t.Errorf("ACK every %d: BtlBw %.3f of R, want within 5%%", ackEvery, bw)
		}
	}
}

// Scenario 2: random loss on the link (1, 5, 10 %). Goodput must stay near
// R×(1−p), and a loss-based AIMD flow on the same path in the same run
// collapses (Mathis: rate ∝ 1/(RTT·√p)).
func TestSimRandomLoss(t *testing.T) {
	const dur = 8 * time.Second
	from, to := 2*time.Second, dur
	for _, p := range []float64{0.01, 0.05, 0.10, 0.15} {
		cfg := simConfig{rate: refRate, delay: refDelay, queue: refBDP, loss: p, seed: 7, duration: dur}
		s := newSim(cfg, bbrFlow(0))
		var eventsAfterStartup uint64
		s.at(from, func(time.Time) { eventsAfterStartup = ctl(s, 0).Stats().CongestionEvents })
		s.run()
		st := ctl(s, 0).Stats()
		eventsAfterStartup = st.CongestionEvents - eventsAfterStartup
		g := s.goodput(0, from, to)
		ideal := refRate * (1 - p)
		t.Logf("p=%4.1f%%: goodput %.1f%% of R(1-p), measured loss %.1f%%, congestion events after startup %d, mean queue %v",
			100*p, 100*g/ideal, 100*st.LossRate, eventsAfterStartup, s.meanQueueDelay(from, to))
		// The loss sits after the bottleneck, so delivered rate samples
		// are ≈ R(1−p): without loss compensation the flow would pace at
		// R(1−p) and deliver only (1−p) of the ideal (85 % at p=15 %).
		// The brief's floor was 80 %; loss compensation must keep every
		// case above 93 %.
		if g < 0.93*ideal {
			t.Errorf("p=%v: goodput %.1f%% of R(1-p), want ≥ 93%%", p, 100*g/ideal)
		}
		// Random loss without a standing queue is not congestion: once past
		// STARTUP the loss rule must never fire.
		if eventsAfterStartup != 0 {
			t.Errorf("p=%v: %d congestion events in PROBE_BW, want 0 (random loss mistaken for congestion)", p, eventsAfterStartup)
		}
		if p == 0.05 {
			r := newSim(cfg, renoFlow(0))
			r.run()
			rg := r.goodput(0, from, to)
			t.Logf("p=5%%: AIMD goodput %.2f Mbit/s, BBR %.2f Mbit/s (%.0f×)", rg/mbit, g/mbit, g/rg)
			// ≥ 3× as the brief asks; the Mathis model predicts ~70×.
			if g < 3*rg {
				t.Errorf("BBR %.2f Mbit/s < 3× AIMD %.2f Mbit/s", g/mbit, rg/mbit)
			}
		}
	}
}

// Scenario 3: 2 and 4 flows joining at different times share the reference
// path with a 1-BDP drop-tail buffer (the classic buffer-sizing rule).
func TestSimFairness(t *testing.T) {
	const dur = 20 * time.Second
	for _, tc := range []struct {
		n       int
		stagger time.Duration
	}{{2, 3 * time.Second}, {4, 2 * time.Second}} {
		var fl []flowSpec
		for i := 0; i < tc.n; i++ {
			fl = append(fl, bbrFlow(time.Duration(i)*tc.stagger))
		}
		s := newSim(simConfig{rate: refRate, delay: refDelay, queue: refBDP, seed: 3, duration: dur}, fl...)
		s.run()
		from, to := dur/2, dur // the last half, as the brief asks
		shares := make([]float64, tc.n)
		for i := range shares {
			shares[i] = s.goodput(i, from, to) / refRate
		}
		j, util := jain(shares), s.totalGoodput(from, to)/refRate
		t.Logf("%d flows: Jain %.3f, utilisation %.1f%%, shares %.3f, mean queue %v, drop rate %.2f%%",
			tc.n, j, 100*util, shares, s.meanQueueDelay(from, to), 100*s.dropRate(from, to))
		// Jain ≥ 0.9 and ≥ 85 % utilisation as the brief asks. Over the
		// 36 scenarios of TestFairnessSweep (2/4 flows, 0.25/1 BDP
		// buffers, 20–80 ms RTT, 3 stagger intervals, 30 s) the worst Jain
		// index was 0.94 and the worst utilisation 97.8 %.
		if j < 0.9 {
			t.Errorf("%d flows: Jain index %.3f, want ≥ 0.9", tc.n, j)
		}
		if util < 0.85 {
			t.Errorf("%d flows: utilisation %.1f%%, want ≥ 85%%", tc.n, 100*util)
		}
	}
}

// Scenario 4: four flows on a shallow buffer (0.25 BDP): congestion loss is
// real here. The loss-with-queueing rule must keep the drop rate bounded
// while keeping the link busy. The same run with the rule off (plain BBRv1)
// shows what the rule buys.
func TestSimShallowBuffer(t *testing.T) {
	const dur = 14 * time.Second
	from, to := dur/2, dur
	cfg := simConfig{rate: refRate, delay: refDelay, queue: refBDP / 4, seed: 5, duration: dur}
	run := func(flow func(time.Duration) flowSpec) (drop, util, j float64, qd time.Duration) {
		var fl []flowSpec
		for i := 0; i < 4; i++ {
			fl = append(fl, flow(time.Duration(i)*time.Second))
		}
		s := newSim(cfg, fl...)
		s.run()
		shares := make([]float64, 4)
		for i := range shares {
			shares[i] = s.goodput(i, from, to) / refRate
		}
		return s.dropRate(from, to), s.totalGoodput(from, to) / refRate, jain(shares), s.meanQueueDelay(from, to)
	}
	drop, util, j, qd := run(bbrFlow)
	vDrop, vUtil, vJ, vQd := run(bbrV1Flow)
	t.Logf("with rule: drop %.2f%%, utilisation %.1f%%, Jain %.3f, mean queue %v", 100*drop, 100*util, j, qd)
	t.Logf("BBRv1    : drop %.2f%%, utilisation %.1f%%, Jain %.3f, mean queue %v", 100*vDrop, 100*vUtil, vJ, vQd)
	// < 5 % and ≥ 80 % as the brief asks.
	if drop >= 0.05 {
		t.Errorf("drop rate %.2f%%, want < 5%%", 100*drop)
	}
	if util < 0.80 {
		t.Errorf("utilisation %.1f%%, want ≥ 80%%", 100*util)
	}
	// The rule must be what bounds the loss: BBRv1 loses several times more
	// on this path (measured ~12 % vs < 1 %).
	if drop > vDrop/3 {
		t.Errorf("drop rate %.2f%% not well below BBRv1's %.2f%%", 100*drop, 100*vDrop)
	}
}

// settleTime returns how long after `at` the flow's goodput, in 50 ms
// windows, enters [lo, hi]·R and stays there until `until`. It is measured
// at the receiver, so it includes the one-way delay and the 50 ms window
// granularity. (50 ms holds ≥ 43 packets even at 10 % of R, so one packet
// more or less is < 2.5 %, inside the 5 % band.)
func settleTime(s *sim, at, until time.Duration, lo, hi float64) time.Duration {
	const w = 50 * time.Millisecond
	settled := time.Duration(-1)
	for t0 := at; t0+w <= until; t0 += w {
		g := s.goodput(0, t0, t0+w) / refRate
		if g < lo || g > hi {
			settled = -1
			continue
		}
		if settled < 0 {
			settled = t0 + w - at
		}
	}
	return settled
}

// Scenario 5: the MaxRate cap. Start capped at 20 % of R, raise to 50 % at
// 6 s, remove at 10 s, set 10 % at 14 s.
func TestSimMaxRate(t *testing.T) {
	const dur = 18 * time.Second
	fs := flowSpec{newCC: func(now time.Time) ccAlgo {
		return New(Config{MaxDatagramSize: mss, MaxRate: 0.2 * refRate}, now)
	}}
	s := newSim(simConfig{rate: refRate, delay: refDelay, queue: refBDP, seed: 1, duration: dur}, fs)
	s.at(6*time.Second, func(time.Time) { ctl(s, 0).SetMaxRate(0.5 * refRate) })
	s.at(10*time.Second, func(time.Time) { ctl(s, 0).SetMaxRate(0) })
	s.at(14*time.Second, func(time.Time) { ctl(s, 0).SetMaxRate(0.1 * refRate) })
	s.run()
	rtt := 2 * refDelay
	type phase struct {
		name     string
		at, end  time.Duration
		cap      float64 // fraction of R; 0 = uncapped
		deadline time.Duration
	}
	for _, ph := range []phase{
		// Startup is capped too: it settles as fast as STARTUP would.
		{"cap 20% from the start", 0, 6 * time.Second, 0.2, 10 * rtt},
		// Raising the cap re-enters STARTUP, which doubles per round.
		{"cap raised to 50%", 6 * time.Second, 10 * time.Second, 0.5, 5 * rtt},
		// Removing it: STARTUP from 50 % to the link rate, then DRAIN.
		{"cap removed", 10 * time.Second, 14 * time.Second, 0, 10 * rtt},
		// Lowering it acts on the very next packet (the pacer); what is
		// left is the one-way delay and the window granularity.
		{"cap lowered to 10%", 14 * time.Second, dur, 0.1, 3 * rtt},
	} {
		lo, hi := 0.95*ph.cap, 1.05*ph.cap // within 5 % of the cap, as asked
		if ph.cap == 0 {
			lo, hi = 0.90, 1.01 // uncapped: as in scenario 1
		}
		settle := settleTime(s, ph.at, ph.end, lo, hi)
		mean := s.goodput(0, ph.at+ph.deadline, ph.end) / refRate
		t.Logf("%-24s settled in %v (%.1f RTT); mean goodput afterwards %.3f R", ph.name, settle, float64(settle)/float64(rtt), mean)
		if settle < 0 || settle > ph.deadline {
			t.Errorf("%s: settled in %v, want within %v", ph.name, settle, ph.deadline)
		}
		if mean < lo || mean > hi {
			t.Errorf("%s: goodput %.3f R, want in [%.3f, %.3f]", ph.name, mean, lo, hi)
		}
	}
}

// App-limited sender: a flow whose application produces only 20 % of R for
// 4 s and then turns bulk. While app-limited it must not build a queue nor
// let its samples drag the model down, and it must reach the link rate
// quickly once data is plentiful. This exercises OnAppLimited the way the
// core will call it.
func TestSimAppLimited(t *testing.T) {
	const dur = 8 * time.Second
	fs := bbrFlow(0)
	fs.appRate = 0.2 * refRate
	s := newSim(simConfig{rate: refRate, delay: refDelay, queue: refBDP, seed: 1, duration: dur}, fs)
	var during Stats
	s.at(4*time.Second, func(time.Time) {
		during = ctl(s, 0).Stats()
		s.flows[0].spec.appRate = 0
	})
	s.run()
	appG := s.goodput(0, time.Second, 4*time.Second) / refRate
	qd := s.meanQueueDelay(time.Second, 4*time.Second)
	settle := settleTime(s, 4*time.Second, dur, 0.9, 1.01)
	t.Logf("app-limited: goodput %.3f R, mean queue %v, state %s, cwnd %d; bulk after 4 s: ≥ 90%% R after %v",
		appG, qd, during.State, during.Cwnd, settle)
	if appG < 0.19 || appG > 0.21 {
		t.Errorf("app-limited goodput %.3f R, want the application's 0.2 R", appG)
	}
	if qd > time.Millisecond {
		t.Errorf("app-limited flow queued %v on average, want < 1 ms", qd)
	}
	if settle < 0 || settle > time.Second {
		t.Errorf("after the application turned bulk, took %v to reach 90%% of R, want ≤ 1 s", settle)
	}
}
