package simvm

import (
	"context"
	"runtime"
	"time"
)

// The guest's workload: CPU burn, memory dirtier and simulated network,
// each one goroutine that Run owns. Auto-converge's throttle (percent)
// slows the CPU burn and the dirtier alike, as QEMU's CPU throttling
// slows a guest's vCPUs.

// speed is the share of its workload the guest runs at (1 unthrottled).
func (v *VM) speed() float64 { return 1 - float64(v.throttle.Load())/100 }

// pauseGuest stops the guest. The dirtier writes a tick's pages holding
// dmu and checks paused under it, so once dmu has been taken here no
// write is in flight and none will start: memory is still, which the
// stop-and-copy and the memory digest of a paused VM rely on.
func (v *VM) pauseGuest() {
	v.paused.Store(true)
	v.dmu.Lock()
	//lint:ignore SA2001 the empty critical section is the barrier: it waits out a tick in flight
	v.dmu.Unlock()
}

// burn keeps one vCPU busy for the workload's share of every 10 ms slice.
func (v *VM) burn(ctx context.Context) {
	const slice = 10 * time.Millisecond
	t := time.NewTicker(slice)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w := v.wl.Load()
		if v.paused.Load() || w.CPU <= 0 {
			continue
		}
		busy := time.Duration(float64(slice) * w.CPU * v.speed())
		for end := time.Now().Add(busy); time.Now().Before(end); {
			runtime.Gosched()
		}
	}
}

// dirtier writes to random pages at the workload's dirty rate, in 10 ms
// steps; each write stamps the page with a counter so that contents
// change. Its generator and counter live in the VM (under dmu) so that a
// migration carries them to the destination, which then continues the
// same sequence.
func (v *VM) dirtier(ctx context.Context) {
	const step = 10 * time.Millisecond
	t := time.NewTicker(step)
	defer t.Stop()
	var credit float64
	last := time.Now()
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		// Credit by elapsed time, not ticks, so a late tick on a busy
		// machine does not lower the rate; at most a second's worth.
		elapsed := min(now.Sub(last), time.Second)
		last = now
		v.dmu.Lock()
		w := v.wl.Load()
		if v.paused.Load() || w.Dirty <= 0 {
			credit = 0
			v.dmu.Unlock()
			continue
		}
		credit += w.Dirty * v.speed() * elapsed.Seconds()
		for credit >= PageSize {
			credit -= PageSize
			v.stamp++
			v.mem.stamp(v.rnd.Uint64N(v.mem.pages), v.stamp)
			v.dirty.Add(PageSize)
		}
		v.dmu.Unlock()
	}
}

// network accounts simulated traffic at the workload's rate.
func (v *VM) network(ctx context.Context) {
	const step = 100 * time.Millisecond
	t := time.NewTicker(step)
	defer t.Stop()
	last := time.Now()
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		elapsed := min(now.Sub(last), time.Second) // by time, not ticks (late ticks on a busy host)
		last = now
		if w := v.wl.Load(); !v.paused.Load() && w.Net > 0 {
			v.net.Add(uint64(w.Net * v.speed() * elapsed.Seconds()))
		}
	}
}
