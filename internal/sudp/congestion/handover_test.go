package congestion

import (
	"testing"
	"time"
)

// A handover between two transfers on one path, as a one-at-a-time
// evacuation makes them (evacuation.StartAt): flow A fills the reference
// path (1 % random loss, a 2-BDP queue as the WAN lab's `wan` profile
// has) and stops; flow B, resumed from A's model, starts either as A
// stops or a second before. Started as A stops, B has the link within
// its first second. Started while A still sends, the two overfill the
// queue, B takes congestion cuts and its bandwidth filter holds its half
// share, and in the second after A is gone it still has only part of the
// link: the overlap costs more link time than the start-up it hides.
func TestHandoverWithoutOverlap(t *testing.T) {
	const (
		aStops = 6 * time.Second
		dur    = 9 * time.Second
	)
	var worstAfter, bestOverlap float64 = 1, 0
	for seed := uint64(1); seed <= 6; seed++ {
		share := func(lead time.Duration) float64 {
			a := bbrFlow(0)
			a.stop = aStops
			b := resumedFlow(aStops-lead, refRate, 2*refDelay)
			s := newSim(simConfig{rate: refRate, delay: refDelay, queue: 2 * refBDP, loss: 0.01, seed: seed, duration: dur}, a, b)
			s.run()
			return s.goodput(1, aStops, aStops+time.Second) / refRate
		}
		after, overlap := share(0), share(time.Second)
		t.Logf("seed %d: B's share of the second after A stops: %.1f%% started then, %.1f%% started a second before",
			seed, 100*after, 100*overlap)
		worstAfter, bestOverlap = min(worstAfter, after), max(bestOverlap, overlap)
	}
	if worstAfter < 0.85 {
		t.Errorf("started as A stops: as little as %.1f%% of the link in its first second, want ≥ 85%%", 100*worstAfter)
	}
	if bestOverlap > worstAfter-0.1 {
		t.Errorf("a second of overlap left B %.1f%% of the link, starting at the handover %.1f%%: the overlap no longer costs what evacuation.Handover says", 100*bestOverlap, 100*worstAfter)
	}
}
