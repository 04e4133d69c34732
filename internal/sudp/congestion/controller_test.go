package congestion

import (
	"math"
	"testing"
	"time"
)

func TestNewDefaults(t *testing.T) {
	now := time.Unix(0, 0)
	c := New(Config{}, now)
	if c.cfg.MaxDatagramSize != 1452 || c.cfg.InitialWindow != 32*1452 || c.cfg.MinWindow != 4*1452 || c.cfg.InitialRTT != 100*time.Millisecond {
		t.Fatalf("defaults not applied: %+v", c.cfg)
	}
	st := c.Stats()
	if st.State != "STARTUP" || st.Cwnd != 32*1452 {
		t.Fatalf("initial stats %+v", st)
	}
	// Before any sample: 2/ln2 × initial window per initial RTT.
	want := startupPacingGain * 32 * 1452 / 0.1
	if math.Abs(c.PacingRate()-want) > 1 {
		t.Fatalf("initial pacing rate %v, want %v", c.PacingRate(), want)
	}
	c.SetMaxRate(1000)
	if c.PacingRate() != 1000 {
		t.Fatalf("cap not applied at once: %v", c.PacingRate())
	}
	c.SetMaxRate(-5)
	if math.Abs(c.PacingRate()-want) > 1 || c.Stats().MaxRate != 0 {
		t.Fatalf("negative cap must mean none: %v", c.PacingRate())
	}
}

// loop is a minimal closed loop around one controller: a single bottleneck
// of capacity `rate` serving packets FIFO, plus an RTT that the test shapes
// over time (extra delay stands for a queue owned by someone else).
type loop struct {
	c        *Controller
	pacer    Pacer
	start    time.Time
	now      time.Time
	rate     float64
	baseRTT  time.Duration
	extra    func(since time.Duration) time.Duration
	lossy    func(seq int) bool
	flight   []inflightPkt
	infl     int
	depart   time.Time
	seq      int
	ackBuf   []PacketState
	lostBuf  []PacketState
	states   []string
	sentPkts int
}

type inflightPkt struct {
	st    PacketState
	ackAt time.Time
	lost  bool
}

func newLoop(rate float64, baseRTT time.Duration) *loop {
	start := time.Unix(1000, 0)
	return &loop{
		c:       New(Config{MaxDatagramSize: mss}, start),
		start:   start,
		now:     start,
		depart:  start,
		rate:    rate,
		baseRTT: baseRTT,
		extra:   func(time.Duration) time.Duration { return 0 },
		lossy:   func(int) bool { return false },
	}
}

func (l *loop) run(d time.Duration) {
	const step = 250 * time.Microsecond
	end := l.now.Add(d)
	for l.now.Before(end) {
		// Deliver ACKs (and report losses) that are due.
		l.ackBuf, l.lostBuf = l.ackBuf[:0], l.lostBuf[:0]
		var rtt time.Duration
		for len(l.flight) > 0 && !l.flight[0].ackAt.After(l.now) {
			p := l.flight[0]
			l.flight = l.flight[1:]
			l.infl -= p.st.Size
			if p.lost {
				l.lostBuf = append(l.lostBuf, p.st)
				continue
			}
			l.ackBuf = append(l.ackBuf, p.st)
			rtt = l.now.Sub(p.st.SentTime)
		}
		if len(l.ackBuf) > 0 {
			l.c.OnAck(l.now, l.ackBuf, rtt, l.infl+sizeOf(l.lostBuf))
		}
		if len(l.lostBuf) > 0 {
			l.c.OnLoss(l.now, l.lostBuf, l.infl)
		}
		// Send what window and pacer allow.
		for l.infl+mss <= l.c.CongestionWindow() && l.pacer.Delay(l.now, l.c.PacingRate(), mss) == 0 {
			st := l.c.OnPacketSent(l.now, mss, l.infl)
			l.pacer.OnSent(l.now, l.c.PacingRate(), mss)
			if l.depart.Before(l.now) {
				l.depart = l.now
			}
			l.depart = l.depart.Add(time.Duration(float64(mss) / l.rate * 1e9))
			ackAt := l.depart.Add(l.baseRTT + l.extra(l.now.Sub(l.start)))
			l.seq++
			l.flight = append(l.flight, inflightPkt{st: st, ackAt: ackAt, lost: l.lossy(l.seq)})
			l.infl += mss
			l.sentPkts++
		}
		if s := l.c.mode.String(); len(l.states) == 0 || l.states[len(l.states)-1] != s {
			l.states = append(l.states, s)
		}
		l.now = l.now.Add(step)
	}
}

func sizeOf(ps []PacketState) int {
	n := 0
	for _, p := range ps {
		n += p.Size
	}
	return n
}

func TestStateMachineStartupDrainProbeBW(t *testing.T) {
	l := newLoop(10*mbit, 40*time.Millisecond)
	l.run(3 * time.Second)
	want := []string{"STARTUP", "DRAIN", "PROBE_BW"}
	if len(l.states) != 3 || l.states[0] != want[0] || l.states[1] != want[1] || l.states[2] != want[2] {
		t.Fatalf("states %v, want %v", l.states, want)
	}
	st := l.c.Stats()
	if math.Abs(st.BtlBw-10*mbit)/(10*mbit) > 0.05 {
		t.Fatalf("BtlBw %.0f, want ≈ %.0f", st.BtlBw, 10*mbit)
	}
	// Gain cycling: over one full cycle the pacing gain takes the values
	// 1.25, 0.75 and 1, and cruiseDrainGain in a cruise phase that follows
	// a round the probe's queue outlasted.
	seen := map[float64]bool{}
	for i := 0; i < 200; i++ {
		l.run(10 * time.Millisecond)
		seen[l.c.pacingGain] = true
	}
	delete(seen, cruiseDrainGain)
	if !seen[1.25] || !seen[0.75] || !seen[1] || len(seen) != 3 {
		t.Fatalf("PROBE_BW gains seen %v, want {1.25, 0.75, 1} and at most %v besides", seen, cruiseDrainGain)
	}
}

func TestProbeRTT(t *testing.T) {
	l := newLoop(10*mbit, 40*time.Millisecond)
	// After 1 s someone else's standing queue adds 10 ms that never drains:
	// the 40 ms minimum is never re-observed and must expire after 10 s.
	l.extra = func(since time.Duration) time.Duration {
		if since > time.Second {
			return 10 * time.Millisecond
		}
		return 0
	}
	l.run(10 * time.Second)
	if s := l.c.Stats().State; s == "PROBE_RTT" {
		t.Fatal("entered PROBE_RTT before the 10 s window")
	}
	var entered bool
	var minCwnd int = math.MaxInt
	for i := 0; i < 200 && !entered; i++ {
		l.run(10 * time.Millisecond)
		if st := l.c.Stats(); st.State == "PROBE_RTT" {
			entered = true
		}
	}
	if !entered {
		t.Fatalf("PROBE_RTT not entered ~10 s after the last minimum; states %v", l.states)
	}
	enteredAt := l.now
	for l.c.Stats().State == "PROBE_RTT" && l.now.Sub(enteredAt) < time.Second {
		minCwnd = min(minCwnd, l.c.CongestionWindow())
		l.run(time.Millisecond)
	}
	held := l.now.Sub(enteredAt)
	st := l.c.Stats()
	if st.State != "PROBE_BW" {
		t.Fatalf("after PROBE_RTT: state %s, want PROBE_BW", st.State)
	}
	if minCwnd > l.c.cfg.MinWindow {
		t.Fatalf("PROBE_RTT cwnd %d, want ≤ MinWindow %d", minCwnd, l.c.cfg.MinWindow)
	}
	// At least 200 ms and a round, at most that plus the drain and a couple
	// of round trips.
	if held < probeRTTDuration || held > probeRTTDuration+300*time.Millisecond {
		t.Fatalf("PROBE_RTT lasted %v", held)
	}
	if st.MinRTT < 50*time.Millisecond || st.MinRTT > 52*time.Millisecond {
		t.Fatalf("minRTT after PROBE_RTT %v, want the new floor ≈ 50ms", st.MinRTT)
	}
}

// TestLossRuleNeedsQueue is rule (d) in isolation. A path loses 5 % of
// packets at random; then, for two seconds, the RTT may show a standing
// queue and the loss may rise above that baseline. Only both together are
// congestion: random loss alone is not, a queue alone is not, and a queue
// over a path that keeps losing at its usual rate is not either (the flow
// built that queue itself; cruise drains it by delay).
func TestLossRuleNeedsQueue(t *testing.T) {
	tests := []struct {
		name       string
		queued     bool
		lossEvery  int // after the first 3 s: lose one packet in lossEvery
		wantEvents bool
	}{
		{"random loss, no queue", false, 20, false},
		{"random loss, standing queue", true, 20, false},
		{"more loss, no queue", false, 8, false},
		{"more loss, standing queue", true, 8, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLoop(10*mbit, 40*time.Millisecond)
			l.lossy = func(seq int) bool { return seq%20 == 0 } // 5 %
			l.run(3 * time.Second)
			before := l.c.Stats()
			if tt.queued {
				l.extra = func(time.Duration) time.Duration { return 15 * time.Millisecond }
			}
			every := tt.lossEvery
			l.lossy = func(seq int) bool { return seq%every == 0 }
			l.run(2 * time.Second)
			st := l.c.Stats()
			events := st.CongestionEvents - before.CongestionEvents
			t.Logf("%d congestion events, ceiling %d, loss rate %.3f, random-loss baseline %.3f", events, st.InflightCeiling, st.LossRate, l.c.randomLoss)
			if got := events > 0 && st.InflightCeiling > 0; got != tt.wantEvents {
				t.Errorf("congestion detected %v (events %d, ceiling %d), want %v", got, events, st.InflightCeiling, tt.wantEvents)
			}
		})
	}
}

func TestOnAckOnSentNoAllocs(t *testing.T) {
	now := time.Unix(0, 0)
	c := New(Config{}, now)
	acked := make([]PacketState, 2)
	infl := 0
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(100 * time.Microsecond)
		acked[0] = c.OnPacketSent(now, 1452, infl)
		acked[1] = c.OnPacketSent(now, 1452, infl+1452)
		now = now.Add(50 * time.Millisecond)
		c.OnAck(now, acked, 50*time.Millisecond, infl)
		c.OnLoss(now, acked[:1], infl)
		_ = c.Stats()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per OnPacketSent+OnAck+OnLoss+Stats", allocs)
	}
}

// benchLoop keeps a steady pipe of 100 packets in flight, acked one per ACK
// frame 50 ms after sending, as a 100 Mbit/s-class flow would.
func BenchmarkOnAck(b *testing.B) {
	now := time.Unix(0, 0)
	c := New(Config{}, now)
	const n = 128
	var ring [n]PacketState
	for i := 0; i < 100; i++ {
		ring[i%n] = c.OnPacketSent(now, 1452, i*1452)
		now = now.Add(100 * time.Microsecond)
	}
	acked := make([]PacketState, 1)
	head, tail := 0, 100
	b.ReportAllocs()
	for b.Loop() {
		acked[0] = ring[head%n]
		head++
		now = now.Add(100 * time.Microsecond)
		c.OnAck(now, acked, now.Sub(acked[0].SentTime), 99*1452)
		ring[tail%n] = c.OnPacketSent(now, 1452, 99*1452)
		tail++
	}
}

func BenchmarkOnPacketSent(b *testing.B) {
	now := time.Unix(0, 0)
	c := New(Config{}, now)
	b.ReportAllocs()
	var sink PacketState
	for b.Loop() {
		now = now.Add(time.Microsecond)
		sink = c.OnPacketSent(now, 1452, 100*1452)
	}
	_ = sink
}

func BenchmarkPacer(b *testing.B) {
	var p Pacer
	now := time.Unix(0, 0)
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		if p.Delay(now, 12.5e6, 1452) == 0 {
			p.OnSent(now, 12.5e6, 1452)
		}
	}
}

// TestCruiseDrainsStandingQueue: a queue that stands through a whole round
// (here an extra 15 ms that never goes away) makes cruise phases pace at
// cruiseDrainGain; with no queue, cruise paces at 1.
func TestCruiseDrainsStandingQueue(t *testing.T) {
	for _, queued := range []bool{false, true} {
		l := newLoop(10*mbit, 40*time.Millisecond)
		l.run(3 * time.Second)
		if queued {
			l.extra = func(time.Duration) time.Duration { return 15 * time.Millisecond }
		}
		l.run(200 * time.Millisecond) // let a round see the new RTT
		var cruise, drained int
		for i := 0; i < 300; i++ {
			l.run(10 * time.Millisecond)
			if l.c.mode == modeProbeBW && l.c.cycleIdx == phaseCruise {
				cruise++
				if l.c.pacingGain == cruiseDrainGain {
					drained++
				}
			}
		}
		t.Logf("queued %v: %d cruise samples, %d at gain %v", queued, cruise, drained, cruiseDrainGain)
		if cruise == 0 {
			t.Fatal("never in a cruise phase")
		}
		if queued && drained != cruise {
			t.Errorf("standing queue: %d of %d cruise samples drained, want all", drained, cruise)
		}
		if !queued && drained > cruise/4 {
			t.Errorf("no queue: %d of %d cruise samples drained, want few (only after probes)", drained, cruise)
		}
	}
}
