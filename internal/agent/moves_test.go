package agent_test

import (
	"testing"
	"time"
)

// TestLeaderMovesWithoutBackoff: an agent that was online when the
// leadership moved goes straight to the new leader however often that
// happens. Two members each say, on the agent's standby session, that
// they lead: the agent moves back and forth, one login per move. Counted
// as redirects, the fourth move onwards waited the reconnection backoff
// (0.5–1.5 s, doubling to 5–15 s), which is what a cluster that failed
// over a few times within a minute saw: agents back after 12–18 s.
func TestLeaderMovesWithoutBackoff(t *testing.T) {
	ag := newEnrolledAgent(t)
	a, b := newFakeMMC(t, ag), newFakeMMC(t, ag)
	am, bm := a.member(), b.member()
	a.standbyLeader.Store(&am)
	b.standbyLeader.Store(&bm)
	stop := ag.run(t, bundleOf(a.ref(), b.ref()), nil)
	defer stop()
	// Counted as redirects, 16 moves take at least 7.5 s of backoff.
	const want, within = 16, 6 * time.Second
	start := time.Now()
	logins := 0
	for logins < want {
		select {
		case <-a.logins:
		case <-b.logins:
		case <-time.After(within - time.Since(start)):
			t.Fatalf("%d logins in %v, want %d: the agent waited before following a move", logins, time.Since(start), want)
		}
		logins++
	}
	t.Logf("%d logins, one per leadership move, in %v", logins, time.Since(start))
}
