// Package forward runs emulated WAN links in real time between two packet
// devices (TUN devices in two network namespaces, or in-memory pipes in
// tests).
//
// A Forwarder has one reader goroutine per device and one writer goroutine per
// direction. A reader copies each packet into a pooled buffer and enqueues it
// on the direction's link.Link under that direction's mutex; the writer
// dequeues packets when they are due and writes them to the other device.
//
// Timing: Go timers resolve to about 1 ms on this kernel (the runtime's
// epoll_pwait takes a millisecond timeout), far too coarse for a 120 µs packet
// time at 100 Mbit/s. Each writer therefore locks its OS thread, sets that
// thread's timer slack to 1 ns (prctl PR_SET_TIMERSLACK; the default 50 µs
// slack adds to every sleep), and waits for a deadline in three stages: a Go
// timer while the deadline is more than TimerMargin away (cheap, and a new
// packet can wake it), clock_nanosleep in slices of at most 500 µs until
// SpinWindow before the deadline, then a runtime.Gosched spin. Measured on
// this 2-core VM, a nanosleep overshoots by ~60 µs at the median and ~110 µs
// at p99 (with 50 µs slack: ~95/145 µs), time.Sleep by ~0.7–1.1 ms, a Gosched
// spin by ~7 µs median; sleeping until 100 µs before and spinning the rest
// keeps delivery within a few µs of the deadline at little CPU cost
// (TestDelayPrecision: p50 ~12–25 µs, p99 ~0.15–0.3 ms after the deadline,
// never early). When other processes keep both cores busy, the writer's
// wake-ups wait for the CPU and the p99 grows to a few ms; SCHED_FIFO on the
// writer thread was tried and only halved that, so it is not used.
//
// Both links should have different Seeds, or their loss decisions are
// identical packet for packet.
package forward

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/link"
)

// Device is a packet device: a TUN fd (read or write one IP packet per call)
// or, in tests, anything alike. If it also has SetReadDeadline(time.Time)
// error (as TUNDevice does), Run unblocks its reader with a past deadline when
// the context ends, and clears the deadline before returning; otherwise a
// reader still blocked when Run returns exits after its next packet.
type Device interface {
	ReadPacket(buf []byte) (int, error)
	WritePacket(pkt []byte) error
}

type readDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// Options tune a Forwarder; the zero value is fine.
type Options struct {
	// MaxPacket is the read buffer size, the largest packet carried
	// (default 65535).
	MaxPacket int
	// SpinWindow is how long before a deadline the writer stops sleeping and
	// spins (default 100 µs; about the p99 overshoot of nanosleep here).
	SpinWindow time.Duration
	// TimerMargin: deadlines further away than this are waited for with a Go
	// timer until TimerMargin before them (default 5 ms: a Go timer fires
	// up to ~1.5 ms late here, more when the machine is busy).
	TimerMargin time.Duration
}

const (
	poolBufSize  = 2048  // pooled buffers fit a 1500-byte MTU packet and more
	maxPoolFree  = 16384 // keep at most 32 MiB of free buffers per direction
	maxNanoSlice = 500 * time.Microsecond
)

// Forwarder carries packets between two devices through two links.
type Forwarder struct {
	opts   Options
	a, b   Device
	ab, ba *direction
	ran    atomic.Bool
}

type direction struct {
	mu   sync.Mutex // guards link and free
	link *link.Link
	free [][]byte

	dst         Device
	kick        chan struct{} // cap 1: the earliest deadline may have moved earlier
	writeErrors atomic.Uint64
	lastErr     atomic.Pointer[error]
}

// New returns a forwarder carrying packets read from a through ab to b, and
// from b through ba to a. It installs its buffer pool on the links
// (link.SetBuffers); from now on the links may only be touched through the
// Forwarder (SetConfig, Stats).
func New(a, b Device, ab, ba *link.Link, opts Options) *Forwarder {
	if opts.MaxPacket <= 0 {
		opts.MaxPacket = 65535
	}
	if opts.SpinWindow <= 0 {
		opts.SpinWindow = 100 * time.Microsecond
	}
	if opts.TimerMargin <= 0 {
		opts.TimerMargin = 5 * time.Millisecond
	}
	f := &Forwarder{opts: opts, a: a, b: b, ab: newDirection(ab, b), ba: newDirection(ba, a)}
	return f
}

func newDirection(l *link.Link, dst Device) *direction {
	d := &direction{link: l, dst: dst, kick: make(chan struct{}, 1)}
	l.SetBuffers(d.get, d.put)
	return d
}

// get and put manage the free list; callers hold d.mu.
func (d *direction) get(n int) []byte {
	if n > poolBufSize {
		return make([]byte, n)
	}
	if k := len(d.free); k > 0 {
		b := d.free[k-1]
		d.free[k-1] = nil
		d.free = d.free[:k-1]
		return b[:n]
	}
	return make([]byte, n, poolBufSize)
}

func (d *direction) put(b []byte) {
	if cap(b) == poolBufSize && len(d.free) < maxPoolFree {
		d.free = append(d.free, b)
	}
}

func (d *direction) writeFailed(err error) {
	d.writeErrors.Add(1)
	d.lastErr.Store(&err) // err escapes here only, not on every write
}

func (d *direction) signal() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Stats returns both links' counters; safe at any time.
func (f *Forwarder) Stats() (ab, ba link.Stats) {
	return f.ab.link.Stats(), f.ba.link.Stats()
}

// WriteErrors counts packets the destination device refused, per direction.
func (f *Forwarder) WriteErrors() (ab, ba uint64) {
	return f.ab.writeErrors.Load(), f.ba.writeErrors.Load()
}

// LastWriteError is the most recent error of a device write, or nil.
func (f *Forwarder) LastWriteError() error {
	for _, d := range []*direction{f.ab, f.ba} {
		if e := d.lastErr.Load(); e != nil {
			return *e
		}
	}
	return nil
}

// SetConfig changes the configuration of either direction (nil: unchanged)
// while running; queued packets are kept (see link.Link.SetConfig).
func (f *Forwarder) SetConfig(ab, ba *link.Config) error {
	for _, x := range []struct {
		d   *direction
		cfg *link.Config
	}{{f.ab, ab}, {f.ba, ba}} {
		if x.cfg == nil {
			continue
		}
		x.d.mu.Lock()
		err := x.d.link.SetConfig(*x.cfg)
		x.d.mu.Unlock()
		if err != nil {
			return err
		}
		x.d.signal()
	}
	return nil
}

// Run forwards until ctx ends, then returns nil; or until a device read
// fails, then returns that error (closing a device while Run is running is
// such a failure: cancel ctx first). Write errors are counted (WriteErrors), not
// fatal: the packet is dropped. Run may be called once.
func (f *Forwarder) Run(ctx context.Context) error {
	if f.ran.Swap(true) {
		return errors.New("forward: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		runErr  error
	)
	fail := func(err error) {
		errOnce.Do(func() { runErr = err })
		cancel()
	}
	for _, r := range []struct {
		src Device
		d   *direction
	}{{f.a, f.ab}, {f.b, f.ba}} {
		dl, canStop := r.src.(readDeadliner)
		if canStop {
			wg.Add(1)
		}
		go func() {
			if canStop {
				defer wg.Done()
			}
			if err := f.read(ctx, r.src, r.d); err != nil {
				fail(err)
			}
		}()
		if canStop {
			stop := context.AfterFunc(ctx, func() { _ = dl.SetReadDeadline(time.Unix(1, 0)) })
			defer func() {
				stop()
				_ = dl.SetReadDeadline(time.Time{})
			}()
		}
	}
	for _, d := range []*direction{f.ab, f.ba} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.write(ctx, d)
		}()
	}
	wg.Wait()
	return runErr
}

func (f *Forwarder) read(ctx context.Context, src Device, d *direction) error {
	scratch := make([]byte, f.opts.MaxPacket)
	for {
		n, err := src.ReadPacket(scratch)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			continue
		}
		now := time.Now()
		d.mu.Lock()
		prev, had := d.link.NextDelivery()
		b := d.get(n)
		copy(b, scratch[:n])
		d.link.Enqueue(now, b)
		next, ok := d.link.NextDelivery()
		d.mu.Unlock()
		if ok && (!had || next.Before(prev)) {
			d.signal()
		}
	}
}

func (f *Forwarder) write(ctx context.Context, d *direction) {
	// The thread is locked for good: it has 1 ns timer slack, and exits with
	// the goroutine.
	runtime.LockOSThread()
	tuneThread()
	var (
		out   [][]byte
		timer = time.NewTimer(time.Hour)
	)
	timer.Stop()
	for ctx.Err() == nil {
		d.mu.Lock()
		for i, b := range out {
			d.put(b)
			out[i] = nil
		}
		out = d.link.Dequeue(time.Now(), out[:0])
		next, ok := d.link.NextDelivery()
		d.mu.Unlock()
		if len(out) > 0 {
			for _, b := range out {
				if err := d.dst.WritePacket(b); err != nil {
					d.writeFailed(err)
				}
			}
			continue
		}
		if !ok {
			select {
			case <-d.kick:
			case <-ctx.Done():
			}
			continue
		}
		f.waitUntil(ctx, d, next, timer)
	}
}

// waitUntil returns at deadline, or earlier when kicked or ctx ends.
func (f *Forwarder) waitUntil(ctx context.Context, d *direction, deadline time.Time, timer *time.Timer) {
	for {
		rem := time.Until(deadline)
		switch {
		case rem <= 0:
			return
		case rem > f.opts.TimerMargin:
			timer.Reset(rem - f.opts.TimerMargin)
			select {
			case <-timer.C:
			case <-d.kick:
				timer.Stop()
				return
			case <-ctx.Done():
				timer.Stop()
				return
			}
		case rem > f.opts.SpinWindow:
			if kicked(ctx, d) {
				return
			}
			preciseSleep(min(rem-f.opts.SpinWindow, maxNanoSlice))
		default:
			for time.Now().Before(deadline) {
				if kicked(ctx, d) {
					return
				}
				runtime.Gosched()
			}
			return
		}
	}
}

func kicked(ctx context.Context, d *direction) bool {
	select {
	case <-d.kick:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}
