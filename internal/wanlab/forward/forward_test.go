package forward

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/link"
)

// memDevice is an in-memory Device: packets sent on rx are read by the
// forwarder; packets the forwarder writes go to onWrite.
type memDevice struct {
	rx      chan []byte
	onRead  func(p []byte)
	onWrite func(p []byte)

	mu      sync.Mutex
	stop    chan struct{}
	stopped bool
}

func newMem() *memDevice { return &memDevice{rx: make(chan []byte, 8192), stop: make(chan struct{})} }

func (m *memDevice) ReadPacket(buf []byte) (int, error) {
	m.mu.Lock()
	stop := m.stop
	m.mu.Unlock()
	select {
	case p := <-m.rx:
		if m.onRead != nil {
			m.onRead(p)
		}
		return copy(buf, p), nil
	case <-stop:
		return 0, os.ErrDeadlineExceeded
	}
}

func (m *memDevice) WritePacket(p []byte) error {
	if m.onWrite != nil {
		m.onWrite(p)
	}
	return nil
}

func (m *memDevice) SetReadDeadline(t time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case t.IsZero() && m.stopped:
		m.stop, m.stopped = make(chan struct{}), false
	case !t.IsZero() && !m.stopped:
		close(m.stop)
		m.stopped = true
	}
	return nil
}

func mustLink(t testing.TB, cfg link.Config) *link.Link {
	t.Helper()
	l, err := link.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// start runs f until the test ends.
func start(t testing.TB, f *Forwarder) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestDelayPrecision sends 1000 packets through a 10 ms link and checks
// arrival − read − 10 ms. A control thread sleeping 200 µs at a time runs
// alongside and its overshoot is logged, to tell the forwarder's precision
// from the machine's load.
func TestDelayPrecision(t *testing.T) {
	// Robust properties only: never early, median within 200 µs, tail
	// within 10 ms. The sub-millisecond p99 the forwarder reaches on a
	// quiet machine is a measurement, not a test condition: under a loaded
	// CI run (other test packages in parallel on 2 cores) the scheduler,
	// not the forwarder, sets the tail (the control thread shows it).
	// The tail is the one property a burst of load elsewhere can break
	// for a moment, so it gets up to three runs: the forwarder must reach
	// it once; never-early and the median must hold in every run.
	var tail []string
	for attempt := 1; attempt <= 3; attempt++ {
		stop := make(chan struct{})
		noisec := make(chan time.Duration)
		go func() { noisec <- sleepNoiseP99(stop) }()
		early, p50, p99, msg := delayRun(t)
		close(stop)
		noise := <-noisec
		t.Logf("run %d: %s; control sleep p99 overshoot %v", attempt, msg, noise)
		if early {
			t.Fatalf("a packet arrived early: %s", msg)
		}
		if p50 > 200*time.Microsecond {
			t.Fatalf("p50 delay error %v > 200µs", p50)
		}
		if p99 <= 10*time.Millisecond {
			return
		}
		tail = append(tail, p99.String())
	}
	t.Errorf("p99 delay error above 10ms in every run: %v", tail)
}

// sleepNoiseP99 sleeps 200 µs at a time on a tuned thread until stop and
// returns the p99 overshoot.
func sleepNoiseP99(stop <-chan struct{}) time.Duration {
	runtime.LockOSThread() // tuned thread: discarded when the goroutine exits
	tuneThread()
	var over []time.Duration
	for {
		select {
		case <-stop:
			slices.Sort(over)
			if len(over) == 0 {
				return 0
			}
			return over[len(over)*99/100]
		default:
		}
		t0 := time.Now()
		preciseSleep(200 * time.Microsecond)
		over = append(over, time.Since(t0)-200*time.Microsecond)
	}
}

func delayRun(t *testing.T) (early bool, p50, p99 time.Duration, msg string) {
	const n = 1000
	const delay = 10 * time.Millisecond
	a, b := newMem(), newMem()
	readAt := make([]time.Time, n)
	arrive := make([]time.Time, n)
	done := make(chan struct{})
	var got int
	a.onRead = func(p []byte) { readAt[binary.BigEndian.Uint32(p)] = time.Now() }
	b.onWrite = func(p []byte) {
		arrive[binary.BigEndian.Uint32(p)] = time.Now()
		if got++; got == n {
			close(done)
		}
	}
	f := New(a, b, mustLink(t, link.Config{Delay: delay}), mustLink(t, link.Config{Delay: delay}), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = f.Run(ctx) }()
	for i := range n {
		p := make([]byte, 64)
		binary.BigEndian.PutUint32(p, uint32(i))
		a.rx <- p
		if i%3 == 2 {
			time.Sleep(time.Millisecond)
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d packets arrived", got, n)
	}
	errs := make([]time.Duration, n)
	for i := range errs {
		errs[i] = arrive[i].Sub(readAt[i]) - delay
	}
	slices.Sort(errs)
	if s, _ := f.Stats(); s.Delivered != n || s.Enqueued != n {
		t.Errorf("stats %+v", s)
	}
	p50, p99 = errs[n/2], errs[n*99/100]
	msg = fmt.Sprintf("delay error (arrival − read − %v): min %v p50 %v p99 %v max %v", delay, errs[0], p50, p99, errs[n-1])
	return errs[0] < 0, p50, p99, msg
}

func TestRateLimit(t *testing.T) {
	rate := 50e6
	const size = 1500
	n := int(rate / 8 / size) // one second's worth
	a, b := newMem(), newMem()
	a.rx = make(chan []byte, n)
	var (
		mu          sync.Mutex
		first, last time.Time
		got         int
		done        = make(chan struct{})
	)
	b.onWrite = func(p []byte) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if got == 0 {
			first = now
		}
		last = now
		if got++; got == n {
			close(done)
		}
	}
	ab := mustLink(t, link.Config{Rate: rate, QueueBytes: 2 * n * size, Delay: 5 * time.Millisecond})
	f := New(a, b, ab, mustLink(t, link.Config{}), Options{})
	pkt := make([]byte, size)
	for range n {
		a.rx <- pkt
	}
	start(t, f)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d packets arrived", got, n)
	}
	mu.Lock()
	defer mu.Unlock()
	measured := float64((n-1)*size*8) / last.Sub(first).Seconds()
	t.Logf("rate: %.2f Mbit/s over %v (configured %.0f)", measured/1e6, last.Sub(first), rate/1e6)
	if measured < rate*0.95 || measured > rate*1.05 {
		t.Errorf("rate %.2f Mbit/s, want %.0f ± 5%%", measured/1e6, rate/1e6)
	}
	if s, _ := f.Stats(); s.DroppedQueue != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestSetConfigAndStop(t *testing.T) {
	a, b := newMem(), newMem()
	var got atomic.Int64
	b.onWrite = func([]byte) { got.Add(1) }
	f := New(a, b, mustLink(t, link.Config{}), mustLink(t, link.Config{}), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	a.rx <- make([]byte, 100)
	for got.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	if err := f.SetConfig(&link.Config{Loss: 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.SetConfig(&link.Config{Loss: 2}, nil); err == nil {
		t.Fatal("bad config accepted")
	}
	a.rx <- make([]byte, 100)
	for s, _ := f.Stats(); s.DroppedLoss != 1; s, _ = f.Stats() {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return")
	}
	if f.Run(context.Background()) == nil {
		t.Fatal("second Run accepted")
	}
}

// genDevice produces packets as fast as they are read, but keeps at most
// window packets in the forwarder.
type genDevice struct {
	pkt      []byte
	read     atomic.Int64
	written  *atomic.Int64
	window   int64
	stopping atomic.Bool
}

func (g *genDevice) ReadPacket(buf []byte) (int, error) {
	for g.read.Load()-g.written.Load() >= g.window {
		if g.stopping.Load() {
			return 0, os.ErrDeadlineExceeded
		}
		time.Sleep(50 * time.Microsecond)
	}
	if g.stopping.Load() {
		return 0, os.ErrDeadlineExceeded
	}
	g.read.Add(1)
	return copy(buf, g.pkt), nil
}

func (g *genDevice) WritePacket([]byte) error { return nil }

func (g *genDevice) SetReadDeadline(t time.Time) error {
	g.stopping.Store(!t.IsZero())
	return nil
}

type countDevice struct {
	n atomic.Int64
}

func (c *countDevice) ReadPacket([]byte) (int, error) { select {} }
func (c *countDevice) WritePacket([]byte) error       { c.n.Add(1); return nil }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkForwarder measures one direction's packet rate through an
// unlimited link with 1500-byte packets. 1 Gbit/s is 83 k packets/s.
func BenchmarkForwarder(b *testing.B) {
	sink := &countDevice{}
	src := &genDevice{pkt: make([]byte, 1500), written: &sink.n, window: 1024}
	f := New(src, sink, mustLink(b, link.Config{}), mustLink(b, link.Config{}), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	b.ReportAllocs()
	b.ResetTimer()
	t0, c0 := time.Now(), cpuTime()
	for sink.n.Load() < int64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	wall, cpu := time.Since(t0), cpuTime()-c0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/wall.Seconds(), "pkts/s")
	b.ReportMetric(float64(b.N)*1500*8/wall.Seconds()/1e9, "Gbit/s")
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
	cancel()
	<-done
}
