// Package forward runs emulated WAN links in real time between packet devices
// (TUN devices in network namespaces, or in-memory pipes in tests): two (New),
// or more with routing by a caller's function (NewMesh).
//
// A Forwarder has one reader goroutine per device and one writer goroutine per
// direction (directed pair of devices with a link). A reader picks the
// packet's direction (with two devices: the other one; with more: Route),
// copies it into that direction's pooled buffer and enqueues it on the
// direction's link.Link under the direction's mutex; the writer dequeues
// packets when they are due and writes them to the destination device.
// Several writers may write to one device at once (each write is one packet).
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
	"fmt"
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

// Forwarder carries packets between devices (ports) through one link per
// directed pair of ports. With two ports every packet read from one goes to
// the other; with more, a Route function picks the output port.
type Forwarder struct {
	opts  Options
	devs  []Device
	dirs  []*direction // dirs[src*n+dst]; nil on the diagonal and for pairs without a link
	route Route
	ran   atomic.Bool

	unroutable atomic.Uint64 // packets Route dropped (or sent to a pair without a link)
}

// Route returns the port a packet read from port src leaves on, or -1 to
// drop it. It runs on the reader goroutine of src, once per packet, and must
// not keep pkt.
type Route func(src int, pkt []byte) int

// New returns a forwarder carrying packets read from a through ab to b, and
// from b through ba to a. It installs its buffer pool on the links
// (link.SetBuffers); from now on the links may only be touched through the
// Forwarder (SetConfig, Stats).
func New(a, b Device, ab, ba *link.Link, opts Options) *Forwarder {
	return newForwarder([]Device{a, b}, [][]*link.Link{{nil, ab}, {ba, nil}}, nil, opts)
}

// NewMesh returns a forwarder between the devices devs: a packet read from
// devs[i] is routed by route to a port j and carried through links[i][j] to
// devs[j]. links[i][i] is ignored; a nil links[i][j] means no path (such
// packets are dropped and counted, as are those route rejects). The links
// get the forwarder's buffer pools, as with New.
func NewMesh(devs []Device, links [][]*link.Link, route Route, opts Options) *Forwarder {
	return newForwarder(devs, links, route, opts)
}

func newForwarder(devs []Device, links [][]*link.Link, route Route, opts Options) *Forwarder {
	if opts.MaxPacket <= 0 {
		opts.MaxPacket = 65535
	}
	if opts.SpinWindow <= 0 {
		opts.SpinWindow = 100 * time.Microsecond
	}
	if opts.TimerMargin <= 0 {
		opts.TimerMargin = 5 * time.Millisecond
	}
	n := len(devs)
	f := &Forwarder{opts: opts, devs: devs, dirs: make([]*direction, n*n), route: route}
	for i := range n {
		for j := range n {
			if i != j && i < len(links) && j < len(links[i]) && links[i][j] != nil {
				f.dirs[i*n+j] = newDirection(links[i][j], devs[j])
			}
		}
	}
	return f
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

func (f *Forwarder) dir(src, dst int) *direction {
	n := len(f.devs)
	if src < 0 || dst < 0 || src >= n || dst >= n {
		return nil
	}
	return f.dirs[src*n+dst]
}

// Stats returns both links' counters of a two-port forwarder; safe at any
// time.
func (f *Forwarder) Stats() (ab, ba link.Stats) {
	return f.LinkStats(0, 1), f.LinkStats(1, 0)
}

// LinkStats returns the counters of the link from port src to port dst
// (zero if there is none); safe at any time.
func (f *Forwarder) LinkStats(src, dst int) link.Stats {
	if d := f.dir(src, dst); d != nil {
		return d.link.Stats()
	}
	return link.Stats{}
}

// WriteErrors counts packets the destination device refused, per direction
// of a two-port forwarder.
func (f *Forwarder) WriteErrors() (ab, ba uint64) {
	return f.LinkWriteErrors(0, 1), f.LinkWriteErrors(1, 0)
}

// LinkWriteErrors counts packets of the link src→dst that port dst refused.
func (f *Forwarder) LinkWriteErrors(src, dst int) uint64 {
	if d := f.dir(src, dst); d != nil {
		return d.writeErrors.Load()
	}
	return 0
}

// Unroutable counts packets dropped because no link leads where Route sent
// them (or Route returned -1).
func (f *Forwarder) Unroutable() uint64 { return f.unroutable.Load() }

// LastWriteError is the most recent error of a device write, or nil.
func (f *Forwarder) LastWriteError() error {
	for _, d := range f.dirs {
		if d == nil {
			continue
		}
		if e := d.lastErr.Load(); e != nil {
			return *e
		}
	}
	return nil
}

// SetConfig changes the configuration of either direction of a two-port
// forwarder (nil: unchanged) while running; queued packets are kept (see
// link.Link.SetConfig).
func (f *Forwarder) SetConfig(ab, ba *link.Config) error {
	if err := f.SetLinkConfig(0, 1, ab); err != nil {
		return err
	}
	return f.SetLinkConfig(1, 0, ba)
}

// SetLinkConfig changes the configuration of the link src→dst (nil:
// unchanged) while running.
func (f *Forwarder) SetLinkConfig(src, dst int, cfg *link.Config) error {
	if cfg == nil {
		return nil
	}
	d := f.dir(src, dst)
	if d == nil {
		return fmt.Errorf("forward: no link %d→%d", src, dst)
	}
	d.mu.Lock()
	err := d.link.SetConfig(*cfg)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	d.signal()
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
	for src, dev := range f.devs {
		dl, canStop := dev.(readDeadliner)
		if canStop {
			wg.Add(1)
		}
		go func() {
			if canStop {
				defer wg.Done()
			}
			if err := f.read(ctx, src, dev); err != nil {
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
	for _, d := range f.dirs {
		if d == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.write(ctx, d)
		}()
	}
	wg.Wait()
	return runErr
}

func (f *Forwarder) read(ctx context.Context, src int, dev Device) error {
	scratch := make([]byte, f.opts.MaxPacket)
	// Two ports need no routing decision: the fixed direction keeps the
	// two-site lab's per-packet path what it was before routing existed.
	var fixed *direction
	if len(f.devs) == 2 {
		fixed = f.dir(src, 1-src)
	}
	for {
		n, err := dev.ReadPacket(scratch)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			continue
		}
		d := fixed
		if d == nil {
			dst := -1
			if f.route != nil {
				dst = f.route(src, scratch[:n])
			}
			if d = f.dir(src, dst); d == nil || dst == src {
				f.unroutable.Add(1)
				continue
			}
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
