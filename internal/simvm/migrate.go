package simvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// The source side of a live migration: pre-copy, as QEMU does it.
//
// Round 1 sends every page; each later round sends the pages dirtied
// since they were last sent. After each round the migrator measures the
// stream rate (bytes/s the descriptor accepted — it backpressures: the
// migration agent behind it forwards into the network) and the guest's
// dirty rate. Once the dirty memory left can be sent within the downtime
// limit at that rate, it pauses the guest, sends what is left, the
// DEVICE record and END, and leaves the guest paused ("postmigrate"): the
// migration agent then resumes it (rollback) or destroys it (commit).
// With auto-converge, rounds that do not shrink throttle the guest; after
// MaxRounds the stop-and-copy is forced with auto-converge, and the
// migration fails without it.
//
// Failure rules (hypervisor.Migrator's authority rule): a stream error
// before END was entirely written resumes the guest (the destination
// cannot have a complete image); after that the migration is completed
// and stays so whatever happens to the stream.

// Auto-converge tuning.
const (
	throttleStep = 20 // percent per step
	throttleMax  = 99
	// throttleEvery: once a round found the guest outrunning the link,
	// the throttle also steps up every throttleEvery within a round (a
	// round over a slow link can take minutes, and waiting for its end
	// to step again would stretch convergence over many of them).
	throttleEvery = 5 * time.Second
	// A round "does not shrink" when the dirty memory left after it is
	// above this share of what it had to send …
	shrinkRatio = 0.9
	// … or when the guest dirties faster than this share of the stream.
	dirtyRatio = 0.8
	// rateWindow is the least time the stream rate is measured over, so
	// that a short round written into socket buffers does not pass for
	// the link's rate.
	rateWindow = time.Second
	// maxRoundsLimit bounds MaxRounds.
	maxRoundsLimit = 10000
)

// outgoing is one outgoing migration. The status and flags are guarded by
// VM.migMu; the counters are updated by the migration goroutine as it
// goes and read by query-migrate.
type outgoing struct {
	st          hypervisor.MigrationStatus
	cancel      context.CancelFunc
	done        chan struct{} // closed when the goroutine has finished
	cancelled   bool          // migrate-cancel was accepted
	final       bool          // in the stop-and-copy (the migration owns the pause)
	pausedByUs  bool          // the stop-and-copy paused a running guest
	postmigrate bool          // completed and not resumed since
	throttledAt time.Time     // when the auto-converge throttle last stepped up

	sent   atomic.Uint64 // page bytes sent (data pages, before compression)
	zeros  atomic.Uint64 // zero pages sent
	stream *streamWriter
}

// startMigrate starts an outgoing migration onto rw, which it owns.
func (v *VM) startMigrate(rw io.ReadWriteCloser, p hypervisor.MigrationParams) error {
	if err := checkParams(p); err != nil {
		rw.Close()
		return err
	}
	v.migMu.Lock()
	defer v.migMu.Unlock()
	var err error
	switch {
	case v.in != nil && !v.in.resumed:
		err = errors.New("this VM's incoming migration has not been resumed: it has no image to send")
	case v.out != nil && v.out.st.State == hypervisor.MigActive:
		err = errors.New("a migration is already active")
	case v.out != nil && v.out.postmigrate:
		err = errors.New("the VM is paused after a completed migration (postmigrate): resume it (rollback) before migrating again")
	}
	if err != nil {
		rw.Close()
		return err
	}
	ctx, cancel := context.WithCancel(v.ctx)
	sw := &streamWriter{ctx: ctx, w: rw}
	if p.MaxBandwidth > 0 {
		sw.tb = newTokenBucket(p.MaxBandwidth)
	}
	o := &outgoing{cancel: cancel, done: make(chan struct{}), stream: sw,
		st: hypervisor.MigrationStatus{State: hypervisor.MigActive, Round: 1, Total: v.mem.pages * PageSize, Started: time.Now()}}
	v.out = o
	v.log.Info("simvm: outgoing migration", "id", v.cfg.ID, "max_bandwidth", p.MaxBandwidth,
		"downtime_limit", p.DowntimeLimit, "compress", p.Compress, "auto_converge", p.AutoConverge, "max_rounds", p.MaxRounds)
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		defer close(o.done)
		defer cancel()
		// Cancel (or the VM's shutdown) closes the stream: that unblocks
		// a write stuck on a full socket at once.
		stop := context.AfterFunc(ctx, func() { rw.Close() })
		err := v.precopy(ctx, o, sw, p)
		stop()
		rw.Close()
		v.finishOut(o, err)
	}()
	return nil
}

func checkParams(p hypervisor.MigrationParams) error {
	switch {
	case p.MaxBandwidth < 0 || math.IsNaN(p.MaxBandwidth) || math.IsInf(p.MaxBandwidth, 0):
		return fmt.Errorf("invalid max_bandwidth %v", p.MaxBandwidth)
	case p.DowntimeLimit < 0:
		return fmt.Errorf("invalid downtime_limit %v", p.DowntimeLimit)
	case p.MaxRounds < 0 || p.MaxRounds > maxRoundsLimit:
		return fmt.Errorf("max_rounds %d out of range (0 … %d)", p.MaxRounds, maxRoundsLimit)
	}
	return nil
}

// precopy runs the migration; nil means END was entirely written.
func (v *VM) precopy(ctx context.Context, o *outgoing, sw *streamWriter, p hypervisor.MigrationParams) error {
	downtime := p.DowntimeLimit
	if downtime == 0 {
		downtime = hypervisor.DefaultDowntimeLimit
	}
	maxRounds := p.MaxRounds
	if maxRounds == 0 {
		maxRounds = hypervisor.DefaultMaxRounds
	}
	enc, err := newEncoder(sw, p.Compress)
	if err != nil {
		return err
	}
	spec := hypervisor.Spec{Name: v.cfg.Name, Memory: v.cfg.Memory, VCPUs: v.cfg.VCPUs, Workload: *v.wl.Load()}
	if err := enc.writeHeader(v.mem.pages, spec); err != nil {
		return fmt.Errorf("writing the header: %w", err)
	}
	// crc is the CRC32C of the version of each page last sent; round 1
	// fills it all, later rounds update what they resend, and END
	// carries its digest: no pass over memory at the end.
	crc := make([]uint32, v.mem.pages)
	v.mem.markAllDirty()
	start := time.Now()
	meter := rateMeter{samples: []rateSample{{t: start, n: sw.n.Load()}}}
	before := float64(v.mem.pages * PageSize) // what the round has to send
	round := 1
	for ; ; round++ {
		v.setRound(o, round)
		t0, d0 := time.Now(), v.dirty.Load()
		if err := v.pass(ctx, o, enc, crc); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		if err := enc.writeRound(uint32(round)); err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		t1 := time.Now()
		n := sw.n.Load()
		rate := meter.rate(t1, n)
		meter.add(t1, n)
		dirtyRate := float64(v.dirty.Load()-d0) / max(t1.Sub(t0).Seconds(), 1e-6)
		remaining := float64(v.mem.dirtyBytes())
		expected := time.Duration(math.MaxInt64)
		if remaining == 0 {
			expected = 0
		} else if rate > 0 {
			expected = time.Duration(min(remaining/rate, 1e6) * float64(time.Second))
		}
		v.migMu.Lock()
		o.st.Rate, o.st.DirtyRate, o.st.ExpectedDowntime = rate, dirtyRate, expected
		v.migMu.Unlock()
		v.log.Info("simvm: migration round", "round", round, "remaining", uint64(remaining), "rate", rate,
			"dirty_rate", dirtyRate, "expected_downtime", expected, "throttle", v.throttle.Load())
		if expected <= downtime {
			break
		}
		if round >= maxRounds {
			if !p.AutoConverge {
				return fmt.Errorf("did not converge in %d rounds: %d bytes dirty, dirty rate %.0f B/s, stream rate %.0f B/s, expected downtime %v over the limit %v (enable auto-converge, raise the bandwidth or the downtime limit)",
					round, uint64(remaining), dirtyRate, rate, expected.Round(time.Millisecond), downtime)
			}
			v.log.Info("simvm: forcing the stop-and-copy after max rounds", "rounds", round, "expected_downtime", expected)
			break
		}
		if p.AutoConverge && (remaining > shrinkRatio*before || dirtyRate > dirtyRatio*rate) {
			t := min(v.throttle.Load()+throttleStep, throttleMax)
			v.throttle.Store(t)
			v.migMu.Lock()
			o.st.Throttle = float64(t) / 100
			o.throttledAt = time.Now()
			v.migMu.Unlock()
			v.log.Info("simvm: auto-converge throttle", "round", round, "throttle_pct", t)
		}
		before = remaining
	}

	// Stop-and-copy: the guest is still from here on, so one pass sends
	// the final version of every page left.
	round++
	v.migMu.Lock()
	if o.cancelled {
		v.migMu.Unlock()
		return context.Canceled
	}
	o.final = true
	o.pausedByUs = !v.paused.Load()
	v.pauseGuest()
	o.st.PausedAt = time.Now()
	o.st.Round = round
	v.migMu.Unlock()
	if err := v.pass(ctx, o, enc, crc); err != nil {
		return fmt.Errorf("stop-and-copy: %w", err)
	}
	if err := enc.writeRound(uint32(round)); err != nil {
		return fmt.Errorf("stop-and-copy: %w", err)
	}
	if err := enc.writeDevice(v.deviceState()); err != nil {
		return fmt.Errorf("device state: %w", err)
	}
	if err := enc.writeEnd(crcTableDigest(crc)); err != nil {
		return fmt.Errorf("end: %w", err)
	}
	return nil
}

// stepThrottleByTime raises an auto-converge throttle that is already
// on by one step every throttleEvery, within a round.
func (v *VM) stepThrottleByTime(o *outgoing) {
	t := v.throttle.Load()
	if t == 0 || t >= throttleMax {
		return
	}
	now := time.Now()
	v.migMu.Lock()
	defer v.migMu.Unlock()
	if o.final || now.Sub(o.throttledAt) < throttleEvery {
		return
	}
	t = min(t+throttleStep, throttleMax)
	v.throttle.Store(t)
	o.throttledAt = now
	o.st.Throttle = float64(t) / 100
	v.log.Info("simvm: auto-converge throttle", "round", o.st.Round, "throttle_pct", t, "within_round", true)
}

func (v *VM) setRound(o *outgoing, r int) {
	v.migMu.Lock()
	o.st.Round = r
	v.migMu.Unlock()
}

// pass sends every page that is dirty, in one scan of the bitmap. A page
// dirtied again behind the scan is sent in the next round; one dirtied
// ahead of it is sent in this one.
func (v *VM) pass(ctx context.Context, o *outgoing, enc *encoder, crc []uint32) error {
	m := v.mem
	var sent, zeros uint64
	account := func() {
		o.sent.Add(sent)
		o.zeros.Add(zeros)
		sent, zeros = 0, 0
	}
	defer account()
	for w := range m.dirty {
		db, tb := m.takeDirty(w)
		for db != 0 {
			i := bits.TrailingZeros64(db)
			db &= db - 1
			p := uint64(w)*64 + uint64(i)
			if enc.full() {
				if err := enc.flush(); err != nil {
					return err
				}
				v.stepThrottleByTime(o)
				account()
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if tb&(1<<i) == 0 {
				enc.addZero(p) // never written: zero, and not read (not faulted in)
				crc[p] = zeroCRC
				zeros++
				continue
			}
			dst := enc.slot()
			m.copyPage(p, dst)
			if bytes.Equal(dst, zeroPage[:]) {
				enc.addZero(p)
				crc[p] = zeroCRC
				zeros++
				continue
			}
			c := crc32.Checksum(dst, castagnoli)
			enc.addData(p, c)
			crc[p] = c
			sent += PageSize
		}
	}
	if err := enc.flush(); err != nil {
		return err
	}
	return ctx.Err()
}

// deviceState snapshots what the destination needs to continue; the
// guest is paused (and the dirtier still) when it is called.
func (v *VM) deviceState() deviceState {
	v.dmu.Lock()
	rng, _ := v.pcg.MarshalBinary()
	stamp := v.stamp
	v.dmu.Unlock()
	return deviceState{Workload: *v.wl.Load(), Stamp: stamp, RNG: rng, Touched: v.mem.ntouched.Load(),
		DirtyBytes: v.dirty.Load(), NetBytes: v.net.Load()}
}

// finishOut records the outcome. A cancel accepted before this point wins
// even over a complete stream: the migration agent was told "cancelled"
// and will not resume the destination.
func (v *VM) finishOut(o *outgoing, err error) {
	v.migMu.Lock()
	defer v.migMu.Unlock()
	o.st.Finished = time.Now()
	o.st.Transferred, o.st.ZeroPages, o.st.StreamBytes = o.sent.Load(), o.zeros.Load(), o.stream.n.Load()
	resume := false
	switch {
	case o.cancelled:
		o.st.State = hypervisor.MigCancelled
		resume = o.pausedByUs
	case err == nil:
		o.st.State, o.st.Remaining, o.postmigrate = hypervisor.MigCompleted, 0, true
	default:
		o.st.State, o.st.Error = hypervisor.MigFailed, err.Error()
		resume = o.pausedByUs
	}
	if o.st.State != hypervisor.MigCompleted {
		o.st.Remaining = v.mem.dirtyBytes()
	}
	o.final = false
	v.throttle.Store(0)
	if resume {
		v.paused.Store(false)
	}
	v.log.Info("simvm: outgoing migration ended", "id", v.cfg.ID, "state", o.st.State, "err", o.st.Error,
		"rounds", o.st.Round, "stream_bytes", o.st.StreamBytes, "transferred", o.st.Transferred,
		"downtime", downtimeOf(o.st), "resumed", resume)
}

func downtimeOf(st hypervisor.MigrationStatus) time.Duration {
	if st.PausedAt.IsZero() {
		return 0
	}
	return st.Finished.Sub(st.PausedAt)
}

// cancelMigration is migrate-cancel: it stops an active outgoing
// migration and returns once the guest runs again (if it was running).
// setMigrationBandwidth changes the cap of the running outgoing
// migration (bytes/s; 0: none), effective from its next chunk.
func (v *VM) setMigrationBandwidth(rate float64) error {
	if rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
		return fmt.Errorf("invalid max_bandwidth %v", rate)
	}
	v.migMu.Lock()
	defer v.migMu.Unlock()
	if v.out == nil || v.out.st.State != hypervisor.MigActive {
		return errors.New("no active outgoing migration")
	}
	v.out.stream.setRate(rate)
	v.log.Info("simvm: migration bandwidth changed", "id", v.cfg.ID, "max_bandwidth", rate)
	return nil
}

func (v *VM) cancelMigration() error {
	v.migMu.Lock()
	o := v.out
	if o == nil {
		v.migMu.Unlock()
		return errors.New("no outgoing migration")
	}
	switch o.st.State {
	case hypervisor.MigActive:
		o.cancelled = true
		o.cancel()
	case hypervisor.MigCompleted:
		v.migMu.Unlock()
		return errors.New("the migration has completed: the VM is paused (postmigrate); resume it to roll back")
	}
	v.migMu.Unlock()
	select {
	case <-o.done:
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("the migration did not stop within 5 s")
	}
}

// migrationStatus is query-migrate: the outgoing migration if there is
// one (it can only follow a resumed incoming one), else the incoming one.
func (v *VM) migrationStatus() hypervisor.MigrationStatus {
	v.migMu.Lock()
	defer v.migMu.Unlock()
	if o := v.out; o != nil {
		st := o.st
		if st.State == hypervisor.MigActive {
			st.Transferred, st.ZeroPages, st.StreamBytes = o.sent.Load(), o.zeros.Load(), o.stream.n.Load()
			st.Remaining = v.mem.dirtyBytes()
			if st.Rate == 0 {
				// Round 1 has not ended (it can take minutes on a slow
				// link): the rate so far.
				if dt := time.Since(st.Started).Seconds(); dt > 0 {
					st.Rate = float64(st.StreamBytes) / dt
				}
			}
			st.ExpectedDowntime = hypervisor.ExpectedDowntime(st.Remaining, st.Rate)
		}
		return st
	}
	if in := v.in; in != nil {
		return in.status()
	}
	return hypervisor.MigrationStatus{}
}

// streamWriter is the source's side of the descriptor: it counts the
// bytes written and paces them through the token bucket if there is one.
type streamWriter struct {
	ctx context.Context
	w   io.Writer
	tb  *tokenBucket // nil: unlimited; owned by the writing goroutine
	// next is a cap set while the migration runs (migrate-set-bandwidth),
	// taken up by the writer before its next chunk.
	next atomic.Pointer[rateChange]
	n    atomic.Uint64
}

// rateChange is a new cap for a running stream (0: none).
type rateChange struct{ rate float64 }

// setRate changes the cap of a running stream (0: none), from any
// goroutine.
func (s *streamWriter) setRate(rate float64) { s.next.Store(&rateChange{rate}) }

func (s *streamWriter) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		if c := s.next.Swap(nil); c != nil {
			s.tb = nil
			if c.rate > 0 {
				s.tb = newTokenBucket(c.rate)
			}
		}
		chunk := p
		if s.tb != nil {
			chunk = p[:min(len(p), s.tb.chunk)]
			if err := s.tb.wait(s.ctx, len(chunk)); err != nil {
				return done, err
			}
		}
		n, err := s.w.Write(chunk)
		done += n
		s.n.Add(uint64(n))
		if err != nil {
			return done, err
		}
		p = p[n:]
	}
	return done, nil
}

// tokenBucket paces writes to rate bytes/s with bursts of at most 50 ms
// worth; writes are cut into chunks no larger than a burst so that one
// big record does not go out as one burst.
type tokenBucket struct {
	rate, burst, tokens float64
	chunk               int
	last                time.Time
	timer               *time.Timer
}

func newTokenBucket(rate float64) *tokenBucket {
	burst := rate * 0.05
	chunk := int(min(max(burst, 512), 256<<10))
	burst = max(burst, float64(chunk))
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, chunk: chunk, last: time.Now(), timer: t}
}

// wait takes n tokens, sleeping until the bucket is out of debt.
func (b *tokenBucket) wait(ctx context.Context, n int) error {
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+b.rate*now.Sub(b.last).Seconds())
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return nil
	}
	b.timer.Reset(time.Duration(-b.tokens / b.rate * float64(time.Second)))
	select {
	case <-ctx.Done():
		b.timer.Stop()
		return ctx.Err()
	case <-b.timer.C:
		return nil
	}
}

// rateMeter measures the stream rate over at least rateWindow (or since
// the start), from samples taken at round ends.
type rateMeter struct{ samples []rateSample }

type rateSample struct {
	t time.Time
	n uint64
}

func (r *rateMeter) add(t time.Time, n uint64) { r.samples = append(r.samples, rateSample{t, n}) }

func (r *rateMeter) rate(t time.Time, n uint64) float64 {
	ref := r.samples[0]
	for i := len(r.samples) - 1; i >= 0; i-- {
		if t.Sub(r.samples[i].t) >= rateWindow {
			ref = r.samples[i]
			break
		}
	}
	dt := t.Sub(ref.t).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(n-ref.n) / dt
}
