package congestion

import (
	"math"
	"testing"
	"time"
)

// pipe drives a rateEstimator through an ideal path: packets leave every
// `gap`, the path delivers them after `rtt`, and each is acked on its own.
type pipe struct {
	r      rateEstimator
	now    time.Time
	flight []PacketState
	infl   int
}

func (p *pipe) send(size int) {
	ps := p.r.onSent(p.now, size, p.infl)
	p.flight = append(p.flight, ps)
	p.infl += size
}

func (p *pipe) ackOldest(minRTT time.Duration) rateSample {
	ps := p.flight[0]
	p.flight = p.flight[1:]
	p.infl -= ps.Size
	return p.r.onAck(p.now, []PacketState{ps}, minRTT)
}

func TestRateEstimatorSteadyRate(t *testing.T) {
	const size = 1000
	gap := time.Millisecond // 1 MB/s
	rtt := 50 * time.Millisecond
	p := &pipe{now: time.Unix(100, 0)}
	var last rateSample
	// Keep 50 packets in flight: the packet sent at step i is acked at
	// step i+50 (one RTT later).
	for i := 0; i < 500; i++ {
		if i >= int(rtt/gap) {
			last = p.ackOldest(rtt)
		}
		p.send(size)
		p.now = p.now.Add(gap)
	}
	want := float64(size) / gap.Seconds()
	if math.Abs(last.rate-want)/want > 0.03 {
		t.Fatalf("rate %.0f B/s, want %.0f ±3%%", last.rate, want)
	}
	if last.appLimited {
		t.Fatal("bulk sample marked app-limited")
	}
	if last.interval < rtt-2*gap {
		t.Fatalf("interval %v shorter than about one RTT", last.interval)
	}
}

func TestRateEstimatorAckCompressionRejected(t *testing.T) {
	// Packets sent 1 ms apart over 10 ms, then all acked at one instant: the
	// ACK-side interval is tiny, but the send-side interval bounds the rate
	// (max of the two), so no absurd rate comes out.
	p := &pipe{now: time.Unix(100, 0)}
	for i := 0; i < 10; i++ {
		p.send(1000)
		p.now = p.now.Add(time.Millisecond)
	}
	p.now = p.now.Add(40 * time.Millisecond)
	rs := p.r.onAck(p.now, p.flight, 0)
	if rs.sendElapsed < 9*time.Millisecond {
		t.Fatalf("send elapsed %v, want ≥ 9ms", rs.sendElapsed)
	}
	if rs.rate > 0 && rs.rate > 10000/rs.sendElapsed.Seconds()+1 {
		t.Fatalf("rate %.0f exceeds what the send interval allows", rs.rate)
	}
	// With a known min RTT of 50 ms, an interval shorter than that is not a
	// valid sample at all.
	p2 := &pipe{now: time.Unix(100, 0)}
	for i := 0; i < 10; i++ {
		p2.send(1000)
		p2.now = p2.now.Add(time.Millisecond)
	}
	p2.now = p2.now.Add(40 * time.Millisecond)
	if rs := p2.r.onAck(p2.now, p2.flight, 100*time.Millisecond); rs.rate != 0 {
		t.Fatalf("sample with interval %v < minRTT accepted (rate %.0f)", rs.interval, rs.rate)
	}
}

func TestRateEstimatorAppLimited(t *testing.T) {
	p := &pipe{now: time.Unix(100, 0)}
	p.send(1000)
	p.send(1000)
	// The application runs dry with 2000 bytes in flight.
	p.r.markAppLimited(p.infl)
	p.send(1000) // sent while app-limited
	if !p.flight[2].AppLimited {
		t.Fatal("packet sent while app-limited not marked")
	}
	p.now = p.now.Add(50 * time.Millisecond)
	if rs := p.ackOldest(0); rs.appLimited {
		t.Fatal("packet sent before the app-limited mark produced an app-limited sample")
	}
	p.ackOldest(0)
	// Both packets that were in flight at the mark are delivered (2000 bytes):
	// the mark is still on until delivered exceeds it, which the next ACK does.
	rs := p.ackOldest(0)
	if !rs.appLimited {
		t.Fatal("sample from an app-limited packet not flagged")
	}
	if p.r.appLimitedUntil != 0 {
		t.Fatalf("app-limited mark not cleared after its bytes were delivered (until=%d delivered=%d)", p.r.appLimitedUntil, p.r.delivered)
	}
	p.send(1000)
	if p.flight[0].AppLimited {
		t.Fatal("packet sent after the mark cleared is still app-limited")
	}
}

func TestRateEstimatorIdleRestart(t *testing.T) {
	// After an idle period with nothing in flight the interval restarts at the
	// first new send; the idle time must not dilute the next sample.
	p := &pipe{now: time.Unix(100, 0)}
	p.send(1000)
	p.now = p.now.Add(10 * time.Millisecond)
	p.ackOldest(0)
	p.now = p.now.Add(5 * time.Second) // idle
	for i := 0; i < 10; i++ {
		p.send(1000)
		p.now = p.now.Add(time.Millisecond)
	}
	p.now = p.now.Add(10 * time.Millisecond)
	var rs rateSample
	for len(p.flight) > 0 {
		rs = p.ackOldest(0)
	}
	if rs.interval > 30*time.Millisecond {
		t.Fatalf("interval %v includes the idle period", rs.interval)
	}
}
