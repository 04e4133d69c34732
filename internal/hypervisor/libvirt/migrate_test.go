package libvirt

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/hypervisor/libvirt/lvtest"
	"github.com/ferry-vm/ferry/internal/hypervisor/qemu"
)

// Migrations between two real libvirtds on this machine (the system one
// and one in its own mount namespace, lvtest.NewHost), with the agents'
// part played by splice: what the MA would carry over SUDP streams is
// carried over local connections here.

// splice joins a and b both ways until either ends.
func splice(wg *sync.WaitGroup, a, b net.Conn) {
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go cp(a, b)
	go cp(b, a)
}

// miniMA carries VM id's migration from src to dst as the two MAs would.
type miniMA struct {
	once  sync.Once
	mu    sync.Mutex
	conns []net.Conn // the channels' connections, both ends
	wg    sync.WaitGroup
	lns   map[string]net.Listener
	in    net.Conn
	out   net.Conn
	errs  chan error
}

func startMigration(t *testing.T, src, dst *Driver, spec hypervisor.Spec, p hypervisor.MigrationParams) *miniMA {
	t.Helper()
	ctx := context.Background()
	m := &miniMA{errs: make(chan error, 8)}
	lns, err := src.ListenChannels(spec.Name, hypervisor.MigrationParams{})
	if err != nil {
		t.Fatal(err)
	}
	m.lns = lns
	for name, ln := range lns {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				d, err := dst.DialChannel(ctx, spec.Name, name)
				if err != nil {
					m.errs <- err
					c.Close()
					continue
				}
				m.mu.Lock()
				m.conns = append(m.conns, c, d)
				m.mu.Unlock()
				splice(&m.wg, c, d)
			}
		}()
	}
	_, in, err := dst.PrepareIncoming(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	out, err := src.MigrateOut(ctx, spec.Name, p)
	if err != nil {
		t.Fatal(err)
	}
	m.in, m.out = in, out
	splice(&m.wg, out, in)
	t.Cleanup(m.stop)
	return m
}

// stop closes every connection the miniMA carries, as a link that dies
// does (idempotent).
func (m *miniMA) stop() {
	m.once.Do(func() {
		for _, ln := range m.lns {
			ln.Close()
		}
		m.in.Close()
		m.out.Close()
		m.mu.Lock()
		for _, c := range m.conns {
			c.Close()
		}
		m.mu.Unlock()
		m.wg.Wait()
	})
}

func waitStatus(t *testing.T, d *Driver, id string, limit time.Duration, ok func(hypervisor.MigrationStatus) bool) hypervisor.MigrationStatus {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st, err := d.MigrationStatus(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: migration status %+v after %v", id, st, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testbed is the system libvirtd (host a) and a second one (host b).
type testbed struct {
	a, b   *Driver
	hostB  *lvtest.Host
	kernel string // directory for guest kernels, the same path on both hosts
}

func newTestbed(t *testing.T) *testbed {
	lvtest.RequireRoot(t)
	lvtest.EnsureSystemDaemon(t)
	h := lvtest.NewHost(t, "f0000000-0000-4000-8000-00000000000b")
	ctx := context.Background()
	a, err := New(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(ctx, Config{URI: h.URI(), SocketDir: h.SocketDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	dir, err := os.MkdirTemp("", "ferry-lvguest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Host b creates the destination's disk images in a storage pool,
	// as libvirt does for a path in one.
	if _, err := lvtest.Virsh(h.URI(), "pool-create-as", "images", "dir", "--target", "/var/lib/libvirt/images"); err != nil {
		t.Fatal(err)
	}
	return &testbed{a: a, b: b, hostB: h, kernel: dir}
}

// defineGuest defines and starts, on host a, a domain running the test
// guest of spec (its disk, if withDisk, a qcow2 image holding diskData
// at offset 0), and waits until the guest wrote its pattern.
func (tb *testbed) defineGuest(t *testing.T, spec hypervisor.Spec, withDisk bool) (diskPath string) {
	t.Helper()
	img, err := qemu.Layout(spec).Image()
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(tb.kernel, spec.Name+".bin")
	if err := os.WriteFile(kernel, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if withDisk {
		diskPath = "/var/lib/libvirt/images/" + spec.Name + ".qcow2"
		_ = os.Remove(diskPath)
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", diskPath, "32M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
		// 4 MiB of a byte pattern, then 1 MiB of another at 16 MiB.
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4M", "-c", "write -P 0xc3 16M 1M", diskPath).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
		t.Cleanup(func() { os.Remove(diskPath) })
	}
	x := filepath.Join(tb.kernel, spec.Name+".xml")
	if err := os.WriteFile(x, []byte(lvtest.DomainXML(spec.Name, int(spec.Memory>>20), kernel, diskPath)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := lvtest.Virsh("qemu:///system", "define", x); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = lvtest.Virsh("qemu:///system", "destroy", spec.Name)
		_, _ = lvtest.Virsh("qemu:///system", "undefine", spec.Name)
	})
	if _, err := tb.a.Create(context.Background(), hypervisor.Spec{Name: spec.Name}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for counters(t, tb.a, spec.Name).Status != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the test guest did not write its pattern", spec.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return diskPath
}

func counters(t *testing.T, d *Driver, id string) qemu.GuestCounters {
	t.Helper()
	b, err := d.ReadMemory(context.Background(), id, qemu.GuestCountersAddr, 12)
	if err != nil {
		t.Fatal(err)
	}
	c, err := qemu.ParseCounters(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkPattern compares VM id's pattern region with the guest's stream.
func checkPattern(t *testing.T, uri, id string, spec hypervisor.Spec) {
	t.Helper()
	l := qemu.Layout(spec)
	got, err := lvtest.Memory{URI: uri}.ReadMemory(context.Background(), id, l.PatternAddr, l.PatternLen)
	if err != nil {
		t.Fatal(err)
	}
	want := l.PatternData()
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: guest memory differs from the pattern at %#x", id, l.PatternAddr+uint64(i))
		}
	}
}

func running(t *testing.T, d *Driver) map[string]hypervisor.State {
	t.Helper()
	vms, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]hypervisor.State{}
	for _, vm := range vms {
		out[vm.ID] = vm.State
	}
	return out
}

// A TCG domain with a qcow2 disk migrates from host a to host b: the
// source waits paused for its confirmation and the destination paused
// and verified; after the commit (the source destroyed, the destination
// resumed) only b runs it, its memory holds the guest's pattern and
// dirtied pages agree with its counters, and its disk equals the
// source's.
//
// Then (one testbed for both: each libvirtd host costs seconds to start)
// testCancel.
func TestMigrate(t *testing.T) {
	tb := newTestbed(t)
	t.Run("disk", func(t *testing.T) { testMigrateWithDisk(t, tb) })
	t.Run("cancel", func(t *testing.T) { testCancel(t, tb) })
	t.Run("linkcut", func(t *testing.T) { testLinkCut(t, tb) })
}

func testMigrateWithDisk(t *testing.T, tb *testbed) {
	spec := hypervisor.Spec{Name: "lvmig", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Dirty: 4 << 20}}
	disk := tb.defineGuest(t, spec, true)
	start := time.Now()
	startMigration(t, tb.a, tb.b, spec, hypervisor.MigrationParams{})
	src := waitStatus(t, tb.a, spec.Name, 120*time.Second, func(st hypervisor.MigrationStatus) bool { return st.State != hypervisor.MigActive })
	if src.State != hypervisor.MigCompleted {
		t.Fatalf("source: %+v", src)
	}
	dst := waitStatus(t, tb.b, spec.Name, 10*time.Second, func(st hypervisor.MigrationStatus) bool { return st.State != hypervisor.MigActive })
	if dst.State != hypervisor.MigCompleted || !dst.Verified {
		t.Fatalf("destination: %+v", dst)
	}
	t.Logf("migrated in %v: %d bytes of memory sent, %d rounds", time.Since(start).Round(time.Millisecond), src.Transferred, src.Round)
	// Both paused: never two running copies.
	if st := running(t, tb.a)[spec.Name]; st == hypervisor.StateRunning {
		t.Fatalf("source runs before the commit")
	}
	if st := running(t, tb.b)[spec.Name]; st == hypervisor.StateRunning {
		t.Fatalf("destination runs before the commit")
	}
	// The destination's image, paused: pattern and dirtied pages.
	checkPattern(t, tb.hostB.URI(), spec.Name, spec)
	l := qemu.Layout(spec)
	c := counters(t, tb.b, spec.Name)
	region, err := lvtest.Memory{URI: tb.hostB.URI()}.ReadMemory(context.Background(), spec.Name, l.DirtyAddr, l.DirtyLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CheckDirtied(region, c); err != nil {
		t.Fatal(err)
	}
	// Commit.
	if err := tb.a.Destroy(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	if err := tb.b.Resume(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	if _, ok := running(t, tb.a)[spec.Name]; ok {
		t.Fatalf("source still listed after the commit")
	}
	if out, err := lvtest.Virsh("qemu:///system", "dominfo", spec.Name); err == nil {
		t.Fatalf("source still defined after the commit: %s", out)
	}
	if st := running(t, tb.b)[spec.Name]; st != hypervisor.StateRunning {
		t.Fatalf("destination after the commit: %q", st)
	}
	// It runs on: its counters advance.
	before := counters(t, tb.b, spec.Name).Pages
	time.Sleep(500 * time.Millisecond)
	if after := counters(t, tb.b, spec.Name).Pages; after == before {
		t.Fatalf("destination guest does not run (pages %d)", after)
	}
	// The disk: host b's copy (its mount namespace's image) equals the
	// source's.
	dstDisk := filepath.Join(tb.hostB.Dir, "lib", "images", filepath.Base(disk))
	if out, err := exec.Command("qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", disk, dstDisk).CombinedOutput(); err != nil {
		t.Fatalf("disk at the destination differs: %v: %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -P 0xc3 16M 1M", dstDisk).CombinedOutput(); err != nil || !containsNoMismatch(string(out)) {
		t.Fatalf("destination disk content: %v: %s", err, out)
	}
}

func containsNoMismatch(s string) bool {
	return !strings.Contains(s, "Pattern verification failed") && strings.Contains(s, "read ")
}

// A migration cancelled while it copies memory leaves exactly one
// running copy: the source, running; libvirt removed the destination's
// domain.
func testCancel(t *testing.T, tb *testbed) {
	spec := hypervisor.Spec{Name: "lvcancel", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Dirty: 8 << 20}}
	tb.defineGuest(t, spec, false)
	// 1 MiB/s: the first pass alone takes many seconds.
	startMigration(t, tb.a, tb.b, spec, hypervisor.MigrationParams{MaxBandwidth: 1 << 20})
	waitStatus(t, tb.a, spec.Name, 30*time.Second, func(st hypervisor.MigrationStatus) bool {
		return st.State == hypervisor.MigActive && st.Transferred > 1<<20
	})
	waitStatus(t, tb.b, spec.Name, 10*time.Second, func(st hypervisor.MigrationStatus) bool { return st.State == hypervisor.MigActive })
	if err := tb.a.CancelMigration(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, tb.a, spec.Name, 10*time.Second, func(st hypervisor.MigrationStatus) bool { return st.State != hypervisor.MigActive })
	if st.State != hypervisor.MigCancelled {
		t.Fatalf("source after the cancel: %+v", st)
	}
	dst := waitStatus(t, tb.b, spec.Name, 10*time.Second, func(st hypervisor.MigrationStatus) bool { return st.State != hypervisor.MigActive })
	if dst.State != hypervisor.MigFailed {
		t.Fatalf("destination after the cancel: %+v", dst)
	}
	if st := running(t, tb.a)[spec.Name]; st != hypervisor.StateRunning {
		t.Fatalf("source after the cancel: %q, want running", st)
	}
	if st, ok := running(t, tb.b)[spec.Name]; ok {
		t.Fatalf("destination still has the domain (%q) after the cancel", st)
	}
	before := counters(t, tb.a, spec.Name).Pages
	time.Sleep(300 * time.Millisecond)
	if after := counters(t, tb.a, spec.Name).Pages; after == before {
		t.Fatalf("source guest does not run after the cancel")
	}
	checkPattern(t, "qemu:///system", spec.Name, spec)
}

// The link dies mid-copy (every connection the MAs carry drops at once):
// the source fails its migration and runs on, the destination's libvirt
// removes the incoming domain (its client went away). One running copy.
func testLinkCut(t *testing.T, tb *testbed) {
	spec := hypervisor.Spec{Name: "lvcut", Memory: 64 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.5, Dirty: 2 << 20}}
	tb.defineGuest(t, spec, false)
	ma := startMigration(t, tb.a, tb.b, spec, hypervisor.MigrationParams{MaxBandwidth: 1 << 20})
	waitStatus(t, tb.a, spec.Name, 30*time.Second, func(st hypervisor.MigrationStatus) bool {
		return st.State == hypervisor.MigActive && st.Transferred > 1<<20
	})
	ma.stop()
	st := waitStatus(t, tb.a, spec.Name, 30*time.Second, func(st hypervisor.MigrationStatus) bool { return st.State != hypervisor.MigActive })
	if st.State != hypervisor.MigFailed || st.Error == "" {
		t.Fatalf("source after the link died: %+v", st)
	}
	t.Logf("source: %s", st.Error)
	waitStatus(t, tb.b, spec.Name, 30*time.Second, func(st hypervisor.MigrationStatus) bool { return st.State == hypervisor.MigFailed })
	if st := running(t, tb.a)[spec.Name]; st != hypervisor.StateRunning {
		t.Fatalf("source after the link died: %q, want running", st)
	}
	if st, ok := running(t, tb.b)[spec.Name]; ok {
		t.Fatalf("destination kept the domain (%q) after the link died", st)
	}
	before := counters(t, tb.a, spec.Name).Pages
	time.Sleep(300 * time.Millisecond)
	if after := counters(t, tb.a, spec.Name).Pages; after == before {
		t.Fatalf("source guest does not run after the link died")
	}
}
