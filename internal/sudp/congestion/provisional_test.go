package congestion

import (
	"testing"
	"time"
)

// A lone flow on a path with 1 % random loss, a deep buffer and ACKs
// delayed by up to 5 ms of host noise (as on the WAN lab): STARTUP's
// queue meets a random loss and the loss rule ends STARTUP with a cut.
// That ceiling is a guess, and must stop holding the flow within a
// second: gone, or at least 1.5 BDP (where jitter no longer starves the
// pipe). Grown additively it held the flow near 1.2 BDP for seconds.
func TestStartupCeilingIsProvisional(t *testing.T) {
	cfg := simConfig{rate: refRate, delay: refDelay, queue: 2 * refBDP, loss: 0.01, seed: 3,
		duration: 4 * time.Second, ackJitter: 5 * time.Millisecond}
	s := newSim(cfg, bbrFlow(0))
	cut, after := time.Duration(-1), -1
	for at := 50 * time.Millisecond; at < cfg.duration; at += 50 * time.Millisecond {
		s.at(at, func(time.Time) {
			st := ctl(s, 0).Stats()
			if cut < 0 && st.InflightCeiling > 0 {
				cut = at
			}
			if cut >= 0 && at == cut+time.Second {
				after = st.InflightCeiling
			}
		})
	}
	s.run()
	st := ctl(s, 0).Stats()
	t.Logf("STARTUP cut at %v; ceiling 1 s later %.2f BDP; congestion events %d; goodput 1–4 s %.1f %% of R(1-p)",
		cut, float64(after)/float64(refBDP), st.CongestionEvents, 100*s.goodput(0, time.Second, cfg.duration)/(refRate*0.99))
	if cut < 0 {
		t.Fatal("STARTUP ended without a cut: the scenario no longer exercises the provisional ceiling")
	}
	if after != 0 && after < 3*refBDP/2 {
		t.Errorf("1 s after STARTUP's cut the ceiling is still %.2f BDP", float64(after)/float64(refBDP))
	}
	if st.CongestionEvents != 1 {
		t.Errorf("%d congestion events, want 1 (STARTUP's exit only)", st.CongestionEvents)
	}
}
