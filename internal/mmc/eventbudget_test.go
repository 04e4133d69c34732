package mmc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestEventBudget(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := newEventBudget(t0)
	for i := range eventBurst {
		if !b.admit(t0) {
			t.Fatalf("event %d of a burst refused", i)
		}
	}
	if b.admit(t0) {
		t.Fatal("an event beyond the burst admitted")
	}
	if n := b.dueSummary(t0); n != 1 {
		t.Fatalf("first summary counts %d drops, want 1", n)
	}
	// A flood at 1000/s for 10 s: 10/s get through.
	admitted := 0
	for i := range 10_000 {
		if b.admit(t0.Add(time.Duration(i+1) * time.Millisecond)) {
			admitted++
		}
	}
	if admitted < 10*eventRate-1 || admitted > 10*eventRate+1 {
		t.Fatalf("%d of a 10 s flood admitted, want about %d", admitted, 10*eventRate)
	}
	if n := b.dueSummary(t0.Add(30 * time.Second)); n != 0 {
		t.Fatalf("a summary %d s after the last one: %d", 30, n)
	}
	if n := b.dueSummary(t0.Add(time.Minute)); n != uint64(10_000-admitted) {
		t.Fatalf("summary counts %d drops, want %d", n, 10_000-admitted)
	}
	if n := b.dueSummary(t0.Add(3 * time.Minute)); n != 0 {
		t.Fatalf("a summary with nothing dropped: %d", n)
	}
	// Quiet for a while: the bucket refills to the burst, not beyond.
	later := t0.Add(time.Hour)
	got := 0
	for b.admit(later) {
		got++
	}
	if got != eventBurst {
		t.Fatalf("after an hour's quiet %d back to back, want %d", got, eventBurst)
	}
}

// An agent that floods events gets its burst and then its rate stored,
// one alarm says how many were dropped, and another agent's alarm still
// lands: one agent cannot push the others' alarms out of the event log.
func TestAgentEventFlood(t *testing.T) {
	s := startMMC(t, Config{})
	a, b, ca, cb := twoAgents(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Read what the MMC sends (acknowledgements), as an agent does: a
	// peer that never reads stalls the MMC's sends to it on flow control.
	for _, c := range []*sudp.Conn{ca, cb} {
		go func() {
			for ctx.Err() == nil {
				if _, err := message.Receive(ctx, c); err != nil {
					return
				}
			}
		}()
	}
	const flood = 3000
	start := time.Now()
	for i := range flood {
		if err := message.Send(ctx, ca, message.Event{Seq: uint64(i + 1), Time: time.Now().UnixNano(), Level: "info", Kind: "log", Message: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := message.Send(ctx, cb, message.Event{Seq: 1, Time: time.Now().UnixNano(), Alarm: true, Level: "error", Kind: "vm-stopped", Message: "honest"}); err != nil {
		t.Fatal(err)
	}
	count := func() (fromA, dropAlarms int, honest bool) {
		evs, err := s.st.Events(0, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			switch {
			case e.Agent == s.byKeyID(a) && e.Kind == "log":
				fromA++
			case e.Kind == kindEventsDropped:
				dropAlarms++
			case e.Agent == s.byKeyID(b) && e.Message == "honest":
				honest = true
			}
		}
		return
	}
	// Stored events are writes through the raft log (fsync'd): allow
	// for a loaded machine.
	waitUntilWithin(t, 60*time.Second, "every event answered", func() bool {
		fromA, _, honest := count()
		return honest && fromA+int(testutil.ToFloat64(s.metrics.eventsDropped)) == flood
	})
	elapsed := time.Since(start)
	fromA, dropAlarms, _ := count()
	// The burst, plus the rate over however long the flood took.
	if most := eventBurst + int(elapsed.Seconds()*eventRate) + 1; fromA < eventBurst || fromA > most {
		t.Fatalf("%d of %d flooded events stored in %v, want %d to %d", fromA, flood, elapsed, eventBurst, most)
	}
	if dropAlarms != 1 {
		t.Fatalf("%d events-dropped alarms, want 1", dropAlarms)
	}
}

// TestEventBudgetSurvivesRelogin: the event budget is the agent's, not its
// session's: a hostile agent that logs in again after spending its burst
// does not get a fresh one (at the handshake rate limit's 20 logins a
// second that was 4 000 stored events a second instead of 10).
func TestEventBudgetSurvivesRelogin(t *testing.T) {
	s := startMMC(t, Config{})
	a := newFakeAgent(t, s)
	a.enrolWithToken(token(t, s, 1))
	id := s.byKeyID(a)
	stored := func() int {
		evs, err := s.st.Events(0, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Agent == id && e.Kind == "log" {
				n++
			}
		}
		return n
	}
	seq := uint64(0)
	start := time.Now()
	for round := range 3 {
		c := a.login()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for ctx.Err() == nil {
				if _, err := message.Receive(ctx, c); err != nil {
					return
				}
			}
		}()
		before := testutil.ToFloat64(s.metrics.eventsDropped) + float64(stored())
		const flood = eventBurst + 50
		for range flood {
			seq++
			if err := message.Send(ctx, c, message.Event{Seq: seq, Time: time.Now().UnixNano(), Level: "info", Kind: "log", Message: "x"}); err != nil {
				t.Fatal(err)
			}
		}
		// Each stored event is a write through the raft log (an fsync):
		// on a loaded machine 200 of them take seconds.
		waitUntilWithin(t, 30*time.Second, fmt.Sprintf("round %d answered", round), func() bool {
			return testutil.ToFloat64(s.metrics.eventsDropped)+float64(stored()) >= before+flood
		})
		cancel()
		c.Close()
	}
	elapsed := time.Since(start)
	if most := eventBurst + int(elapsed.Seconds()*eventRate) + 1; stored() > most {
		t.Fatalf("%d events stored over three sessions in %v; the agent's budget allows %d", stored(), elapsed, most)
	}
}
