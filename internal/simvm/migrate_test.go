package simvm

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// testVM is a VM run in-process (its own Run loop and control socket).
type testVM struct {
	v    *VM
	sock string
	stop func() // stops the VM and waits for it (idempotent)
}

// stampNow reads the dirtier's counter.
func (v *VM) stampNow() uint64 {
	v.dmu.Lock()
	defer v.dmu.Unlock()
	return v.stamp
}

func startVM(t testing.TB, cfg Config) *testVM {
	t.Helper()
	// Short socket paths: t.TempDir() can exceed sun_path's 108 bytes.
	dir, err := os.MkdirTemp("", "simvm")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ID == "" {
		cfg.ID = "vm"
	}
	if cfg.Name == "" {
		cfg.Name = "vm1"
	}
	cfg.Socket = filepath.Join(dir, "vm.sock")
	v, err := newVM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		os.RemoveAll(dir)
	})
	t.Cleanup(stop)
	tv := &testVM{v: v, sock: cfg.Socket, stop: stop}
	for i := 0; ; i++ {
		if _, err := Call(context.Background(), cfg.Socket, Request{Op: "status"}); err == nil {
			return tv
		} else if i == 100 {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (tv *testVM) call(t testing.TB, req Request) Response {
	t.Helper()
	resp, err := Call(context.Background(), tv.sock, req)
	if err != nil {
		t.Fatalf("%s: %v", req.Op, err)
	}
	return resp
}

// stream hands the VM one end of a fresh socket pair with req and returns
// the other end.
func (tv *testVM) stream(t testing.TB, req Request) net.Conn {
	t.Helper()
	a, b := socketpair(t)
	defer b.Close()
	if _, err := CallFD(context.Background(), tv.sock, req, b); err != nil {
		a.Close()
		t.Fatalf("%s: %v", req.Op, err)
	}
	c, err := net.FileConn(a)
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func socketpair(t testing.TB) (*os.File, *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
}

func (tv *testVM) query(t testing.TB) hypervisor.MigrationStatus {
	t.Helper()
	return *tv.call(t, Request{Op: "query-migrate"}).Migration
}

// wait polls query-migrate until the migration is no longer active.
func (tv *testVM) wait(t testing.TB, timeout time.Duration) hypervisor.MigrationStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := tv.query(t)
		if st.State != hypervisor.MigActive {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration still active after %v: %+v", timeout, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (tv *testVM) state(t testing.TB) hypervisor.State {
	t.Helper()
	return tv.call(t, Request{Op: "status"}).VM.State
}

func (tv *testVM) digest(t testing.TB) string {
	t.Helper()
	return tv.call(t, Request{Op: "memory-digest"}).Digest
}

// fill writes n pages from page `from` with content(p).
func (tv *testVM) fill(from, n uint64, content func(p uint64) []byte) {
	for p := from; p < from+n; p++ {
		tv.v.mem.store(p, content(p))
	}
}

// relay forwards the source's stream to the destination as the two
// migration agents and the network between them would, optionally slowed
// to a rate, cut after some bytes, or corrupting a byte.
type relay struct {
	n    atomic.Int64
	wg   sync.WaitGroup
	src  net.Conn
	dst  net.Conn
	once sync.Once
	t0   time.Time
	t1   atomic.Int64 // unix nanos of the last byte forwarded
}

type relayOpts struct {
	rate     float64 // bytes/s (0: unlimited)
	cutAfter int64   // close both sides after this many bytes (0: never)
	flipAt   int64   // flip the byte at this offset (0: none)
	flipLast bool    // flip the first byte of the last 32 (END's digest)
}

func newRelay(t testing.TB, src, dst net.Conn, o relayOpts) *relay {
	r := &relay{src: src, dst: dst, t0: time.Now()}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		defer r.cut()
		buf := make([]byte, 64<<10)
		var tail []byte // held back for flipLast
		var off int64
		for {
			chunk := len(buf)
			if o.rate > 0 {
				chunk = min(chunk, max(int(o.rate/100), 1024))
			}
			n, err := src.Read(buf[:chunk])
			if n > 0 {
				b := buf[:n]
				if o.flipAt > 0 && o.flipAt >= off && o.flipAt < off+int64(n) {
					b[o.flipAt-off] ^= 0xff
				}
				if o.cutAfter > 0 && off+int64(n) > o.cutAfter {
					b = b[:o.cutAfter-off]
					_, _ = dst.Write(b)
					r.n.Add(int64(len(b)))
					return
				}
				off += int64(n)
				if o.rate > 0 {
					if d := time.Until(r.t0.Add(time.Duration(float64(off) / o.rate * float64(time.Second)))); d > 0 {
						time.Sleep(d)
					}
				}
				if o.flipLast {
					tail = append(tail, b...)
					if len(tail) > 32 {
						b, tail = tail[:len(tail)-32], append([]byte(nil), tail[len(tail)-32:]...)
					} else {
						b = nil
					}
				}
				if _, werr := dst.Write(b); werr != nil {
					return
				}
				r.n.Add(int64(len(b)))
				r.t1.Store(time.Now().UnixNano())
			}
			if err != nil {
				if o.flipLast && len(tail) > 0 {
					tail[0] ^= 0xff
					_, _ = dst.Write(tail)
				}
				// EOF: the source is done; let the destination read to the end.
				if uc, ok := dst.(*net.UnixConn); ok {
					_ = uc.CloseWrite()
				}
				return
			}
		}
	}()
	go func() {
		// The return path: when the destination closes its end (done or
		// failed), the source's stream goes too, as the agents would.
		defer r.wg.Done()
		_, _ = io.Copy(io.Discard, dst)
		r.cut()
	}()
	t.Cleanup(func() { r.cut(); r.wg.Wait() })
	return r
}

func (r *relay) cut() {
	r.once.Do(func() {
		r.src.Close()
		r.dst.Close()
	})
}

// migrate starts a migration from src to dst through a relay.
func migrate(t testing.TB, src, dst *testVM, p hypervisor.MigrationParams, o relayOpts) *relay {
	t.Helper()
	in := dst.stream(t, Request{Op: "migrate-incoming"})
	out := src.stream(t, Request{Op: "migrate", Params: &p})
	return newRelay(t, out, in, o)
}

// migrateDirect starts a migration from src to dst over one socket pair.
func migrateDirect(t testing.TB, src, dst *testVM, p hypervisor.MigrationParams) {
	t.Helper()
	a, b := socketpair(t)
	defer a.Close()
	defer b.Close()
	if _, err := CallFD(context.Background(), dst.sock, Request{Op: "migrate-incoming"}, a); err != nil {
		t.Fatal(err)
	}
	if _, err := CallFD(context.Background(), src.sock, Request{Op: "migrate", Params: &p}, b); err != nil {
		t.Fatal(err)
	}
}

func dataPage(p uint64) []byte { return randomPage(p) }

// checkVerified asserts a completed migration: source paused in
// postmigrate, destination verified, memories equal.
func checkVerified(t *testing.T, src, dst *testVM, sst, dstSt hypervisor.MigrationStatus) {
	t.Helper()
	t.Logf("source: %d rounds, %d stream bytes, %d page bytes, %d zero pages, rate %.1f MB/s, dirty %.1f MB/s, throttle %.2f, downtime %v, total %v",
		sst.Round, sst.StreamBytes, sst.Transferred, sst.ZeroPages, sst.Rate/1e6, sst.DirtyRate/1e6, sst.Throttle,
		sst.Finished.Sub(sst.PausedAt), sst.Finished.Sub(sst.Started))
	if sst.State != hypervisor.MigCompleted || sst.PausedAt.IsZero() || sst.Finished.IsZero() {
		t.Fatalf("source: %+v", sst)
	}
	if dstSt.State != hypervisor.MigCompleted || !dstSt.Verified {
		t.Fatalf("destination: %+v", dstSt)
	}
	if s := src.state(t); s != hypervisor.StateMigrating || !src.v.paused.Load() {
		t.Fatalf("source state %s (paused %v), want migrating (postmigrate, paused)", s, src.v.paused.Load())
	}
	if s := dst.state(t); s != hypervisor.StateMigrating || !dst.v.paused.Load() {
		t.Fatalf("destination state %s, want migrating (paused)", s)
	}
	if a, b := src.digest(t), dst.digest(t); a != b || len(a) != 64 {
		t.Fatalf("memory digests differ: source %s, destination %s", a, b)
	}
}

// TestMigrateIdle (a): an idle VM with a known pattern in a few pages;
// zero pages travel as 9-byte entries.
func TestMigrateIdle(t *testing.T) {
	const mem = 64 << 20
	src := startVM(t, Config{Memory: mem})
	dst := startVM(t, Config{Memory: mem, Incoming: true})
	src.fill(1000, 256, dataPage)
	want := src.digest(t)
	if st := dst.state(t); st != hypervisor.StateMigrating {
		t.Fatalf("incoming VM state %s, want migrating", st)
	}
	if _, err := Call(context.Background(), dst.sock, Request{Op: "resume"}); err == nil || !strings.Contains(err.Error(), "not complete") {
		t.Fatalf("resume before the image arrived: %v", err)
	}
	migrate(t, src, dst, hypervisor.MigrationParams{}, relayOpts{})
	sst, dstSt := src.wait(t, 30*time.Second), dst.wait(t, 30*time.Second)
	checkVerified(t, src, dst, sst, dstSt)
	if d := dst.digest(t); d != want {
		t.Fatal("destination memory differs from the pattern written")
	}
	pages := uint64(mem / PageSize)
	if sst.StreamBytes > mem/16 || sst.ZeroPages < pages-256 || sst.Transferred != 256*PageSize {
		t.Fatalf("stream %d bytes, %d zero pages, %d page bytes: zero pages not elided", sst.StreamBytes, sst.ZeroPages, sst.Transferred)
	}
	if dstSt.StreamBytes != sst.StreamBytes || dstSt.Transferred != sst.Transferred || dstSt.ZeroPages != sst.ZeroPages {
		t.Fatalf("source sent %+v, destination received %+v", sst, dstSt)
	}
	if sst.Round < 2 || dstSt.Round != sst.Round {
		t.Fatalf("rounds: source %d, destination %d", sst.Round, dstSt.Round)
	}
	// The source may not migrate again from postmigrate; resuming it is
	// the rollback, after which it runs.
	if _, err := Call(context.Background(), src.sock, Request{Op: "migrate-cancel"}); err == nil {
		t.Fatal("cancel of a completed migration accepted")
	}
	src.call(t, Request{Op: "resume"})
	if s := src.state(t); s != hypervisor.StateRunning {
		t.Fatalf("source after rollback: %s", s)
	}
	dst.call(t, Request{Op: "resume"})
	if s := dst.state(t); s != hypervisor.StateRunning {
		t.Fatalf("destination after resume: %s", s)
	}
}

// TestMigrateConverges (b): a guest dirtying below the link rate through
// a slow link converges in a few rounds; the destination continues it.
func TestMigrateConverges(t *testing.T) {
	const mem = 32 << 20
	w := hypervisor.Workload{Dirty: 4e6}
	src := startVM(t, Config{Memory: mem, Workload: w})
	dst := startVM(t, Config{Memory: mem, Incoming: true})
	src.fill(0, 2048, dataPage)
	time.Sleep(200 * time.Millisecond)
	r := migrate(t, src, dst, hypervisor.MigrationParams{DowntimeLimit: 20 * time.Millisecond}, relayOpts{rate: 16e6})
	sst, dstSt := src.wait(t, 60*time.Second), dst.wait(t, 30*time.Second)
	checkVerified(t, src, dst, sst, dstSt)
	if sst.Round < 3 || sst.Round > 15 {
		t.Fatalf("converged in %d rounds, want a few", sst.Round)
	}
	if sst.DirtyRate <= 0 || sst.Rate <= 0 {
		t.Fatalf("rates not measured: %+v", sst)
	}
	if rate := float64(r.n.Load()) / time.Duration(r.t1.Load()-r.t0.UnixNano()).Seconds(); rate > 16e6*1.2 {
		t.Fatalf("relay rate %.0f: the link was not slow", rate)
	}
	// The destination continues the guest from the source's state.
	if a, b := src.v.stampNow(), dst.v.stampNow(); a != b || a == 0 {
		t.Fatalf("stamp: destination %d, source %d", b, a)
	}
	resp := dst.call(t, Request{Op: "resume"})
	if resp.Spec.Workload != w || resp.VM.State != hypervisor.StateRunning {
		t.Fatalf("destination after resume: %+v %+v", resp.VM, resp.Spec)
	}
	before := dst.digest(t)
	time.Sleep(300 * time.Millisecond)
	st := dst.call(t, Request{Op: "status"}).Stats
	if st.Dirty < 1e6 || st.Dirty > 8e6 {
		t.Fatalf("destination dirty rate %.0f B/s, want ≈ 4e6", st.Dirty)
	}
	if dst.digest(t) == before {
		t.Fatal("destination memory does not change after resume")
	}
}

// TestMigrateNoConvergence (c): a guest dirtying faster than the cap
// fails after MaxRounds without auto-converge (and runs on), and
// completes throttled with it.
func TestMigrateNoConvergence(t *testing.T) {
	const mem = 2 << 20
	w := hypervisor.Workload{Dirty: 8e6, CPU: 0.1}
	// 2 MiB dirtied at 8 MB/s: every round leaves far more than the
	// 200 KB that 50 ms at 4 MB/s allow.
	p := hypervisor.MigrationParams{MaxBandwidth: 4e6, MaxRounds: 4, DowntimeLimit: 50 * time.Millisecond}
	t.Run("fails", func(t *testing.T) {
		src := startVM(t, Config{Memory: mem, Workload: w})
		dst := startVM(t, Config{Memory: mem, Incoming: true})
		time.Sleep(300 * time.Millisecond)
		migrate(t, src, dst, p, relayOpts{})
		st := src.wait(t, 60*time.Second)
		t.Logf("source: %+v", st)
		if st.State != hypervisor.MigFailed || !strings.Contains(st.Error, "did not converge in 4 rounds") || st.Round != 4 {
			t.Fatalf("source: %+v", st)
		}
		if s := src.state(t); s != hypervisor.StateRunning || st.Throttle != 0 {
			t.Fatalf("source after failure: %s, throttle %v", s, st.Throttle)
		}
		if d := dst.wait(t, 10*time.Second); d.State != hypervisor.MigFailed {
			t.Fatalf("destination: %+v", d)
		}
	})
	t.Run("auto-converge", func(t *testing.T) {
		src := startVM(t, Config{Memory: mem, Workload: w})
		dst := startVM(t, Config{Memory: mem, Incoming: true})
		time.Sleep(300 * time.Millisecond)
		pa := p
		pa.AutoConverge = true
		migrate(t, src, dst, pa, relayOpts{})
		sst, dstSt := src.wait(t, 60*time.Second), dst.wait(t, 30*time.Second)
		checkVerified(t, src, dst, sst, dstSt)
		if sst.Throttle <= 0 || sst.Round > 5 {
			t.Fatalf("source: throttle %v after %d rounds", sst.Throttle, sst.Round)
		}
		if src.v.throttle.Load() != 0 {
			t.Fatal("throttle left on after the migration")
		}
	})
}

// TestMigrateCompress (d): compressible pages cost fewer stream bytes
// with compression, and still verify.
func TestMigrateCompress(t *testing.T) {
	const mem = 8 << 20
	var bytes [2]uint64
	for i, compress := range []bool{false, true} {
		src := startVM(t, Config{Memory: mem})
		dst := startVM(t, Config{Memory: mem, Incoming: true})
		src.fill(0, mem/PageSize, textPage)
		migrate(t, src, dst, hypervisor.MigrationParams{Compress: compress}, relayOpts{})
		sst, dstSt := src.wait(t, 30*time.Second), dst.wait(t, 30*time.Second)
		checkVerified(t, src, dst, sst, dstSt)
		if sst.Transferred != mem {
			t.Fatalf("compress=%v: %d page bytes, want %d", compress, sst.Transferred, mem)
		}
		bytes[i] = sst.StreamBytes
	}
	if bytes[1]*4 > bytes[0] {
		t.Fatalf("stream bytes %d compressed vs %d raw: want at most a quarter", bytes[1], bytes[0])
	}
}

// TestMigrateCancel (e): migrate-cancel mid-round leaves the source
// running and the migration cancelled.
func TestMigrateCancel(t *testing.T) {
	const mem = 16 << 20
	src := startVM(t, Config{Memory: mem, Workload: hypervisor.Workload{Dirty: 1e6}})
	dst := startVM(t, Config{Memory: mem, Incoming: true})
	src.fill(0, mem/PageSize, dataPage)
	migrate(t, src, dst, hypervisor.MigrationParams{MaxBandwidth: 4e6}, relayOpts{})
	time.Sleep(300 * time.Millisecond)
	if s := src.state(t); s != hypervisor.StateMigrating {
		t.Fatalf("source during migration: %s", s)
	}
	if st := src.query(t); st.State != hypervisor.MigActive || st.Round != 1 || st.Rate <= 0 || st.Rate > 1.5*4e6 ||
		st.Remaining == 0 || st.Remaining >= mem || st.ExpectedDowntime <= 0 || st.Transferred == 0 {
		t.Fatalf("progress in round 1: %+v", st)
	}
	if _, err := CallFD(context.Background(), src.sock, Request{Op: "migrate"}, nil); err == nil {
		t.Fatal("migrate without a descriptor accepted")
	}
	resp := src.call(t, Request{Op: "migrate-cancel"})
	if resp.Migration.State != hypervisor.MigCancelled || resp.Migration.Finished.IsZero() {
		t.Fatalf("after cancel: %+v", resp.Migration)
	}
	if s := src.state(t); s != hypervisor.StateRunning || src.v.paused.Load() {
		t.Fatalf("source after cancel: %s", s)
	}
	src.call(t, Request{Op: "migrate-cancel"}) // idempotent
	if d := dst.wait(t, 10*time.Second); d.State != hypervisor.MigFailed || !strings.Contains(d.Error, "before END") {
		t.Fatalf("destination: %+v", d)
	}
	// The source may migrate again.
	dst2 := startVM(t, Config{Memory: mem, Incoming: true})
	migrate(t, src, dst2, hypervisor.MigrationParams{}, relayOpts{})
	checkVerified(t, src, dst2, src.wait(t, 30*time.Second), dst2.wait(t, 30*time.Second))
}

// TestMigrateStreamCut (f): the stream breaks mid-round; the source runs
// on, the destination fails and refuses to run.
func TestMigrateStreamCut(t *testing.T) {
	const mem = 16 << 20
	src := startVM(t, Config{Memory: mem, Workload: hypervisor.Workload{Dirty: 1e6}})
	dst := startVM(t, Config{Memory: mem, Incoming: true})
	src.fill(0, mem/PageSize, dataPage)
	migrate(t, src, dst, hypervisor.MigrationParams{}, relayOpts{cutAfter: 1 << 20})
	st := src.wait(t, 30*time.Second)
	if st.State != hypervisor.MigFailed || st.Error == "" {
		t.Fatalf("source: %+v", st)
	}
	if s := src.state(t); s != hypervisor.StateRunning {
		t.Fatalf("source after the cut: %s", s)
	}
	d := dst.wait(t, 10*time.Second)
	if d.State != hypervisor.MigFailed || d.Verified {
		t.Fatalf("destination: %+v", d)
	}
	if _, err := Call(context.Background(), dst.sock, Request{Op: "resume"}); err == nil || !strings.Contains(err.Error(), "cannot run") {
		t.Fatalf("resume of a failed incoming VM: %v", err)
	}
	if s := dst.state(t); s != hypervisor.StatePaused {
		t.Fatalf("failed destination state %s, want paused", s)
	}
}

// TestMigrateCutInStopAndCopy: the stream breaks while the source is
// paused for the final copy: it resumes.
func TestMigrateCutInStopAndCopy(t *testing.T) {
	const mem = 2 << 20
	src := startVM(t, Config{Memory: mem, Workload: hypervisor.Workload{Dirty: 20e6}})
	dst := startVM(t, Config{Memory: mem, Incoming: true})
	time.Sleep(300 * time.Millisecond)
	// One round, then a forced stop-and-copy of a memory the guest has
	// dirtied all over, at 1 MB/s: a long final copy to cut into.
	r := migrate(t, src, dst, hypervisor.MigrationParams{MaxBandwidth: 1e6, MaxRounds: 1, AutoConverge: true}, relayOpts{})
	deadline := time.Now().Add(30 * time.Second)
	for src.query(t).PausedAt.IsZero() {
		if time.Now().After(deadline) {
			t.Fatal("no stop-and-copy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := Call(context.Background(), src.sock, Request{Op: "resume"}); err == nil {
		t.Fatal("resume accepted during the stop-and-copy")
	}
	time.Sleep(100 * time.Millisecond)
	r.cut()
	st := src.wait(t, 10*time.Second)
	if st.State != hypervisor.MigFailed || st.PausedAt.IsZero() {
		t.Fatalf("source: %+v", st)
	}
	if s := src.state(t); s != hypervisor.StateRunning || src.v.paused.Load() {
		t.Fatalf("source after a cut in the stop-and-copy: %s", s)
	}
	if d := dst.wait(t, 10*time.Second); d.State != hypervisor.MigFailed {
		t.Fatalf("destination: %+v", d)
	}
}

// TestMigrateCorruption (g): a byte flipped in transit fails the
// destination: in a page (its CRC32C) or in END's digest.
func TestMigrateCorruption(t *testing.T) {
	const mem = 4 << 20
	spec, _ := json.Marshal(hypervisor.Spec{Name: "vm1", Memory: mem, VCPUs: 1})
	firstData := int64(headerLen + len(spec) + recHeaderLen + pagesPrefix + maxBatch*entryLen)
	t.Run("page", func(t *testing.T) {
		src := startVM(t, Config{Memory: mem})
		dst := startVM(t, Config{Memory: mem, Incoming: true})
		src.fill(0, mem/PageSize, dataPage)
		migrate(t, src, dst, hypervisor.MigrationParams{}, relayOpts{flipAt: firstData + 100})
		d := dst.wait(t, 30*time.Second)
		if d.State != hypervisor.MigFailed || !strings.Contains(d.Error, "CRC32C") {
			t.Fatalf("destination: %+v", d)
		}
		src.wait(t, 30*time.Second)
	})
	t.Run("digest", func(t *testing.T) {
		src := startVM(t, Config{Memory: mem})
		dst := startVM(t, Config{Memory: mem, Incoming: true})
		src.fill(0, 16, dataPage)
		migrate(t, src, dst, hypervisor.MigrationParams{}, relayOpts{flipLast: true})
		d := dst.wait(t, 30*time.Second)
		if d.State != hypervisor.MigFailed || !strings.Contains(d.Error, "verification failed") {
			t.Fatalf("destination: %+v", d)
		}
		// The source wrote END whole: completed, paused, whatever the
		// destination makes of it (the agents and the MMC decide).
		if st := src.wait(t, 10*time.Second); st.State != hypervisor.MigCompleted || src.state(t) != hypervisor.StateMigrating {
			t.Fatalf("source: %+v", st)
		}
	})
}

// TestMigrateSpecMismatch (h): a stream for another memory size fails
// the destination at the header, and the source with it.
func TestMigrateSpecMismatch(t *testing.T) {
	src := startVM(t, Config{Memory: 8 << 20})
	dst := startVM(t, Config{Memory: 4 << 20, Incoming: true})
	src.fill(0, 2048, dataPage)
	// A direct socket pair: the destination's end closing is the
	// source's write error.
	migrateDirect(t, src, dst, hypervisor.MigrationParams{})
	a, _ := socketpair(t)
	defer a.Close()
	if _, err := CallFD(context.Background(), dst.sock, Request{Op: "migrate-incoming"}, a); err == nil {
		t.Fatal("second migrate-incoming accepted")
	}
	d := dst.wait(t, 10*time.Second)
	if d.State != hypervisor.MigFailed || !strings.Contains(d.Error, "this VM has 4194304 bytes") {
		t.Fatalf("destination: %+v", d)
	}
	st := src.wait(t, 10*time.Second)
	if st.State != hypervisor.MigFailed || src.state(t) != hypervisor.StateRunning {
		t.Fatalf("source: %+v", st)
	}
}

// TestMigrateMaxBandwidth (i): the stream stays under the cap (upper
// bounds on rate only, a generous lower bound on time: the machine may be
// loaded).
func TestMigrateMaxBandwidth(t *testing.T) {
	const mem, limit = 8 << 20, 4e6
	src := startVM(t, Config{Memory: mem})
	dst := startVM(t, Config{Memory: mem, Incoming: true})
	src.fill(0, mem/PageSize, dataPage)
	r := migrate(t, src, dst, hypervisor.MigrationParams{MaxBandwidth: limit}, relayOpts{})
	sst, dstSt := src.wait(t, 60*time.Second), dst.wait(t, 30*time.Second)
	checkVerified(t, src, dst, sst, dstSt)
	elapsed := sst.Finished.Sub(sst.Started)
	if rate := float64(sst.StreamBytes) / elapsed.Seconds(); rate > 1.2*limit {
		t.Fatalf("source-measured rate %.0f B/s over the cap %.0f", rate, limit)
	}
	if rate := float64(r.n.Load()) / time.Duration(r.t1.Load()-r.t0.UnixNano()).Seconds(); rate > 1.2*limit {
		t.Fatalf("relay-measured rate %.0f B/s over the cap %.0f", rate, limit)
	}
	if min := time.Duration(0.8 * float64(sst.StreamBytes) / limit * float64(time.Second)); elapsed < min {
		t.Fatalf("%d bytes in %v: faster than the cap allows (%v)", sst.StreamBytes, elapsed, min)
	}
	if sst.Rate > 1.2*limit {
		t.Fatalf("reported rate %.0f over the cap", sst.Rate)
	}
}

// BenchmarkMigrateLocal migrates a 256 MiB VM through an unthrottled
// socket pair: memory all zero (untouched), all data, and all data with
// the guest dirtying 10 MB/s.
func BenchmarkMigrateLocal(b *testing.B) {
	const mem = 256 << 20
	for _, c := range []struct {
		name  string
		fill  bool
		dirty float64
	}{{"zero", false, 0}, {"data/dirty=0", true, 0}, {"data/dirty=10MB/s", true, 10e6}} {
		b.Run(c.name, func(b *testing.B) {
			src := startVM(b, Config{Memory: mem, Workload: hypervisor.Workload{Dirty: c.dirty}})
			if c.fill {
				page := make([]byte, PageSize)
				for p := uint64(0); p < mem/PageSize; p++ {
					copy(page, randomPage(p%64))
					page[0], page[1], page[2] = byte(p), byte(p>>8), byte(p>>16)
					src.v.mem.store(p, page)
				}
			}
			var rounds, streamBytes float64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dst := startVM(b, Config{Memory: mem, Incoming: true})
				b.StartTimer()
				migrateDirect(b, src, dst, hypervisor.MigrationParams{})
				sst, dstSt := src.wait(b, 5*time.Minute), dst.wait(b, time.Minute)
				if sst.State != hypervisor.MigCompleted || !dstSt.Verified {
					b.Fatalf("source %+v destination %+v", sst, dstSt)
				}
				b.StopTimer()
				dst.stop()
				rounds += float64(sst.Round)
				streamBytes += float64(sst.StreamBytes)
				src.call(b, Request{Op: "resume"}) // rollback, to migrate again
				b.StartTimer()
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)*mem/1e6/sec, "mem-MB/s")
			b.ReportMetric(streamBytes/1e6/sec, "stream-MB/s")
			b.ReportMetric(rounds/float64(b.N), "rounds")
		})
	}
}

// TestMigrateNoFDLeak: every descriptor a migration passes or opens is
// closed when it ends, on both sides, on success and on failure.
func TestMigrateNoFDLeak(t *testing.T) {
	countFDs := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip(err)
		}
		return len(ents)
	}
	before := countFDs()
	for _, fail := range []bool{false, true} {
		src := startVM(t, Config{Memory: 4 << 20})
		dstMem := uint64(4 << 20)
		if fail {
			dstMem = 8 << 20 // a header mismatch
		}
		dst := startVM(t, Config{Memory: dstMem, Incoming: true})
		src.fill(0, 64, dataPage)
		migrateDirect(t, src, dst, hypervisor.MigrationParams{Compress: true})
		src.wait(t, 10*time.Second)
		if st := dst.wait(t, 10*time.Second); (st.State == hypervisor.MigFailed) != fail {
			t.Fatalf("fail=%v: destination %+v", fail, st)
		}
		// A descriptor sent with an op that takes none is closed too.
		a, b := socketpair(t)
		if _, err := CallFD(context.Background(), src.sock, Request{Op: "status"}, a); err != nil {
			t.Fatal(err)
		}
		a.Close()
		b.Close()
		src.stop()
		dst.stop()
	}
	if after := countFDs(); after > before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}

// A VM booted with fill=1 has all its memory in use, incompressible: the
// first round sends every page as data, and compression cannot shrink it.
func TestMigrateFilled(t *testing.T) {
	const mem = 16 << 20
	src := startVM(t, Config{Memory: mem, Workload: hypervisor.Workload{Fill: 1}})
	dst := startVM(t, Config{Memory: mem, Incoming: true})
	if st := src.call(t, Request{Op: "status"}); st.Stats.MemUsed != mem {
		t.Fatalf("mem_used %d after fill=1, want %d", st.Stats.MemUsed, mem)
	}
	want := src.digest(t)
	migrate(t, src, dst, hypervisor.MigrationParams{Compress: true}, relayOpts{})
	sst, dstSt := src.wait(t, 30*time.Second), dst.wait(t, 30*time.Second)
	checkVerified(t, src, dst, sst, dstSt)
	if d := dst.digest(t); d != want {
		t.Fatal("destination memory differs")
	}
	if sst.ZeroPages != 0 || sst.Transferred < mem || sst.StreamBytes < mem {
		t.Fatalf("stream %d bytes, %d page bytes, %d zero pages: want every page sent as data", sst.StreamBytes, sst.Transferred, sst.ZeroPages)
	}
}

// Once a round has found the guest outrunning the link, the throttle
// also steps within a round, every throttleEvery, up to throttleMax; not
// before a round turned it on, and not in the stop-and-copy.
func TestThrottleStepsWithinRound(t *testing.T) {
	v, err := newVM(Config{ID: "t", Name: "t", Memory: 1 << 20, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	o := &outgoing{}
	v.stepThrottleByTime(o)
	if got := v.throttle.Load(); got != 0 {
		t.Fatalf("stepped to %d without a round turning it on", got)
	}
	v.throttle.Store(throttleStep)
	o.throttledAt = time.Now()
	v.stepThrottleByTime(o)
	if got := v.throttle.Load(); got != throttleStep {
		t.Fatalf("stepped to %d before throttleEvery passed", got)
	}
	for want := 2 * throttleStep; want <= throttleMax+throttleStep; want += throttleStep {
		o.throttledAt = time.Now().Add(-throttleEvery)
		v.stepThrottleByTime(o)
		if got := v.throttle.Load(); got != min(int32(want), throttleMax) {
			t.Fatalf("throttle %d, want %d", got, min(want, throttleMax))
		}
	}
	v.throttle.Store(40)
	o.final, o.throttledAt = true, time.Now().Add(-throttleEvery)
	v.stepThrottleByTime(o)
	if got := v.throttle.Load(); got != 40 {
		t.Fatalf("stepped to %d during the stop-and-copy", got)
	}
}
