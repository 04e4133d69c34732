package congestion

import (
	"testing"
	"time"
)

// resumedFlow is a controller given an earlier connection's model.
func resumedFlow(start time.Duration, bw float64, minRTT time.Duration) flowSpec {
	return flowSpec{start: start, newCC: func(now time.Time) ccAlgo {
		c := New(Config{MaxDatagramSize: mss}, now)
		c.Resume(bw, minRTT, -1)
		return c
	}}
}

// Careful resume on the reference path (100 Mbit/s, 50 ms, 1 % random
// loss): a new connection given the model an earlier one left delivers
// more in its first second than one that starts from its initial
// window, without a deeper queue or more drops; on a path whose capacity
// halved since, it settles to the new rate within a few seconds, as a
// fresh flow does, and what it overshoots is bounded.
func TestResumeSkipsTheRamp(t *testing.T) {
	const dur = 6 * time.Second
	cfg := simConfig{rate: refRate, delay: refDelay, queue: refBDP, loss: 0.01, seed: 3, duration: dur}
	fresh := newSim(cfg, bbrFlow(0))
	fresh.run()
	resumed := newSim(cfg, resumedFlow(0, refRate, 2*refDelay))
	resumed.run()
	first := [2]float64{fresh.goodput(0, 0, 500*time.Millisecond), resumed.goodput(0, 0, 500*time.Millisecond)}
	t.Logf("first 0.5 s: fresh %.1f Mbit/s, resumed %.1f; max queue %.2f / %.2f BDP; drops %.4f / %.4f",
		first[0]/mbit, first[1]/mbit, float64(fresh.maxQueue)/float64(refBDP), float64(resumed.maxQueue)/float64(refBDP),
		fresh.dropRate(0, dur), resumed.dropRate(0, dur))
	if !ctl(resumed, 0).Stats().Resumed || ctl(fresh, 0).Stats().Resumed {
		t.Fatal("Stats.Resumed does not say which flow resumed")
	}
	if first[1] < 1.25*first[0] || first[1] < 0.75*refRate {
		t.Errorf("first 0.5 s: resumed %.1f Mbit/s against fresh %.1f: the ramp was not skipped", first[1]/mbit, first[0]/mbit)
	}
	if resumed.maxQueue > fresh.maxQueue+refBDP/10 {
		t.Errorf("resumed max queue %d bytes, fresh %d: the jump queued more than STARTUP does", resumed.maxQueue, fresh.maxQueue)
	}
	if d := resumed.dropRate(0, dur); d > fresh.dropRate(0, dur)+0.005 {
		t.Errorf("drops resumed %.4f, fresh %.4f", d, fresh.dropRate(0, dur))
	}
	for i, s := range []*sim{fresh, resumed} {
		if u := s.goodput(0, 2*time.Second, dur) / refRate; u < 0.9 {
			t.Errorf("flow %d: %.1f%% of the link after 2 s", i, 100*u)
		}
	}

	// The path lost half its capacity since the model was taken.
	half := cfg
	half.rate = refRate / 2
	halfBDP := int(half.rate * (2 * refDelay).Seconds())
	half.queue = halfBDP
	over := newSim(half, resumedFlow(0, refRate, 2*refDelay))
	over.run()
	base := newSim(half, bbrFlow(0))
	base.run()
	u := over.goodput(0, 3*time.Second, dur) / half.rate
	t.Logf("halved path: %.1f%% of it after 3 s, drops %.4f (fresh %.4f), max queue %.2f BDP (fresh %.2f)",
		100*u, over.dropRate(0, dur), base.dropRate(0, dur), float64(over.maxQueue)/float64(halfBDP), float64(base.maxQueue)/float64(halfBDP))
	if u < 0.85 {
		t.Errorf("halved path: %.1f%% of it after 3 s", 100*u)
	}
	if q := over.meanQueueDelay(3*time.Second, dur); q > 2*refDelay/5 {
		t.Errorf("halved path: mean queueing delay %v after 3 s: the stale model still fills the queue", q)
	}
	if d := over.dropRate(0, dur); d > base.dropRate(0, dur)+0.02 {
		t.Errorf("halved path: drops %.4f against a fresh flow's %.4f", d, base.dropRate(0, dur))
	}
}

// The seed is used only if the first RTT sample shows the same path, and
// only by a controller that has not started.
func TestResumeNeedsTheSamePath(t *testing.T) {
	now := simTime(0)
	for _, tc := range []struct {
		rtt  time.Duration
		want bool
	}{
		{50 * time.Millisecond, true},
		{26 * time.Millisecond, true},
		{149 * time.Millisecond, true},
		{24 * time.Millisecond, false},
		{151 * time.Millisecond, false},
	} {
		c := New(Config{MaxDatagramSize: mss}, now)
		if !c.Resume(12.5e6, 50*time.Millisecond, -1) {
			t.Fatal("a new controller refused the seed")
		}
		ps := c.OnPacketSent(now, mss, 0)
		c.OnAck(now.Add(tc.rtt), []PacketState{ps}, tc.rtt, 0)
		st := c.Stats()
		if st.Resumed != tc.want {
			t.Errorf("first RTT %v against 50 ms: resumed %v, want %v", tc.rtt, st.Resumed, tc.want)
		}
		if tc.want && (st.BtlBw < 6e6 || c.CongestionWindow() < int(12.5e6*0.05)) {
			t.Errorf("first RTT %v: BtlBw %.0f, cwnd %d after the resume", tc.rtt, st.BtlBw, c.CongestionWindow())
		}
		if !tc.want && c.CongestionWindow() > 64*mss {
			t.Errorf("first RTT %v: cwnd %d without a resume", tc.rtt, c.CongestionWindow())
		}
	}
	// Its first packets acknowledged already (the handshake's): judged
	// by the RTT it has, at once.
	c := New(Config{MaxDatagramSize: mss}, now)
	ps := c.OnPacketSent(now, mss, 0)
	c.OnAck(now.Add(50*time.Millisecond), []PacketState{ps}, 50*time.Millisecond, 0)
	if !c.Resume(12.5e6, 50*time.Millisecond, -1) || !c.Stats().Resumed || c.PacingRate() < 12.5e6 {
		t.Errorf("a controller with an RTT sample: resumed %v, pacing %.0f B/s", c.Stats().Resumed, c.PacingRate())
	}
	// One that has delivered its initial window has found its own rate.
	c = New(Config{MaxDatagramSize: mss}, now)
	var sent []PacketState
	for range 40 {
		sent = append(sent, c.OnPacketSent(now, mss, 0))
	}
	c.OnAck(now.Add(50*time.Millisecond), sent, 50*time.Millisecond, 0)
	if c.Resume(12.5e6, 50*time.Millisecond, -1) {
		t.Error("a controller that has delivered its initial window took a seed")
	}
	for _, bad := range []float64{0, -1} {
		if New(Config{}, now).Resume(bad, 50*time.Millisecond, -1) {
			t.Errorf("seed of %v B/s taken", bad)
		}
	}
}

// A seed's random-loss rate becomes the new flow's loss baseline at once
// (its own rounds replace it later); without one the flow measures its
// own from nothing. On a lossy path with noisy RTT samples, flows whose
// baseline came with the seed take fewer random losses for overflow.
func TestResumeSeedsTheLossBaseline(t *testing.T) {
	now := simTime(0)
	for _, loss := range []float64{0.01, -1, 0.9} {
		c := New(Config{MaxDatagramSize: mss}, now)
		c.Resume(12.5e6, 50*time.Millisecond, loss)
		ps := c.OnPacketSent(now, mss, 0)
		c.OnAck(now.Add(50*time.Millisecond), []PacketState{ps}, 50*time.Millisecond, 0)
		st := c.Stats()
		want, rounds := min(loss, maxLossCompensation), lossMedianRounds // a baseline never excuses more
		if loss < 0 {
			want, rounds = 0, 0
		}
		if st.RandomLoss != want || st.LossRounds != rounds {
			t.Errorf("seeded loss %v: baseline %v over %d rounds, want %v over %d", loss, st.RandomLoss, st.LossRounds, want, rounds)
		}
	}

	// The known limitation of doc.go: at 5 % loss with 20 ms of ACK
	// jitter a new flow's rounds rarely measure the loss, and the 2 %
	// threshold takes random losses for overflow.
	const dur = 10 * time.Second
	for _, tc := range []struct {
		loss   float64
		jitter time.Duration
		better bool // the seed must cut the cuts to a quarter, and gain 10 % of R
	}{
		{0.01, 5 * time.Millisecond, false},
		{0.05, 20 * time.Millisecond, true},
	} {
		var cuts [2]uint64
		var good [2]float64
		for seed := uint64(1); seed <= 6; seed++ {
			cfg := simConfig{rate: refRate, delay: refDelay, queue: refBDP, loss: tc.loss, ackJitter: tc.jitter, seed: seed, duration: dur}
			for i, f := range []flowSpec{resumedFlow(0, refRate, 2*refDelay), {newCC: func(now time.Time) ccAlgo {
				c := New(Config{MaxDatagramSize: mss}, now)
				c.Resume(refRate, 2*refDelay, tc.loss)
				return c
			}}} {
				s := newSim(cfg, f)
				s.run()
				cuts[i] += ctl(s, 0).Stats().CongestionEvents
				good[i] += s.goodput(0, 0, dur) / refRate / 6
			}
		}
		t.Logf("%.0f %% loss, %v ACK jitter, 6 runs of 10 s: loss-rule cuts %d without the loss seed, %d with; goodput %.1f%% / %.1f%% of R",
			100*tc.loss, tc.jitter, cuts[0], cuts[1], 100*good[0], 100*good[1])
		if cuts[1] > cuts[0] || good[1] < good[0]-0.005 {
			t.Errorf("%.0f %% loss: the seeded baseline made it worse: cuts %d → %d, goodput %.3f → %.3f", 100*tc.loss, cuts[0], cuts[1], good[0], good[1])
		}
		if tc.better && (4*cuts[1] > cuts[0] || good[1] < good[0]+0.1) {
			t.Errorf("%.0f %% loss: cuts %d → %d, goodput %.3f → %.3f: the seeded baseline should have ended the mistaken cuts", 100*tc.loss, cuts[0], cuts[1], good[0], good[1])
		}
	}
}
