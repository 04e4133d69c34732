package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/hypervisor/qemu"
	"github.com/ferry-vm/ferry/internal/wanlab"
)

// lab is a WAN lab: two sites (network namespaces) on either side of an
// emulated link.
type lab struct {
	name  string
	netns [2]string
	addr  [2]string
}

// upLab brings up a WAN lab with profile for the test (root only; the
// caller checks) and takes it down at the end.
func upLab(t testing.TB, profile string, extra ...string) *lab {
	t.Helper()
	bin := filepath.Join(filepath.Dir(ferryBin), "wanlab")
	l := &lab{name: fmt.Sprintf("fe%d", os.Getpid()%100000)}
	_ = exec.Command(bin, "down", l.name).Run()
	if out, err := exec.Command(bin, append([]string{"up", l.name, "--profile", profile}, extra...)...).CombinedOutput(); err != nil {
		t.Fatalf("wanlab up: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(bin, "down", l.name).CombinedOutput(); err != nil {
			t.Errorf("wanlab down: %v: %s", err, out)
		}
	})
	st, err := wanlab.Status(l.name)
	if err != nil {
		t.Fatalf("wanlab status: %v", err)
	}
	for i := range 2 {
		l.netns[i], l.addr[i] = st.Sites[i].Netns, st.Sites[i].Addr
	}
	return l
}

// checkRunsOn checks the migrated guest spec on its destination d (its
// pattern, then, paused, its dirtied pages against its counters), resumes
// it and waits until it dirties pages again; it returns the counters read
// while it was paused.
func (c *cluster) checkRunsOn(t *testing.T, d *qemu.Driver, spec hypervisor.Spec) qemu.GuestCounters {
	t.Helper()
	cnt := checkGuestMemory(t, d, spec.Name, spec)
	if err := d.Resume(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest runs on at the destination", func() bool {
		return guestCounters(t, d, spec.Name).Pages > cnt.Pages
	})
	return cnt
}

// requireQEMU: the suite's install step (scripts/install-test-deps.sh)
// installs QEMU; without it, or without root for the lab, there is
// nothing to run.
func requireQEMUAndRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the WAN lab needs root (network namespaces, TUN devices); run the suite as root")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed; `make test` installs it: ", err)
	}
}

// qemuSites starts an MMC and an agent with the QEMU driver in each site
// of a WAN lab (east beside the MMC, west across the link) and returns
// the cluster and a driver on each agent's VM directory (to read guest
// memory as a test, beside the agents).
func qemuSites(t testing.TB, profile string, labArgs ...string) (*cluster, map[string]*qemu.Driver) {
	l := upLab(t, profile, labArgs...)
	c := newClusterIn(t, l.netns[0], l.addr[0]+":7946")
	c.agentNetns["east"], c.agentNetns["west"] = l.netns[0], l.netns[1]
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	drivers := map[string]*qemu.Driver{}
	for _, h := range []string{"east", "west"} {
		args := []string{"--token", tok.Token, "--site", h, "--driver", "qemu", "--report-interval", "1s", "--log-level", e2eLogLevel()}
		if d := os.Getenv("FERRY_E2E_CPUPROFILE"); d != "" {
			// A directory: each agent writes a CPU profile there.
			args = append(args, "--cpuprofile", filepath.Join(d, h+time.Now().Format("-150405")+".prof"))
		}
		c.startAgent(h, args...)
		d, err := qemu.New(filepath.Join(c.agentDirs[h], "qemu"), "")
		if err != nil {
			t.Fatal(err)
		}
		drivers[h] = d
	}
	t.Cleanup(func() {
		for _, d := range drivers {
			vms, _ := d.List(context.Background())
			for _, vm := range vms {
				_ = d.Destroy(context.Background(), vm.ID)
			}
		}
	})
	c.waitFor("both hosts online", func() bool {
		var hosts []hostView
		_ = c.ctl(&hosts, "hosts", "list")
		n := 0
		for _, h := range hosts {
			if h.Online {
				n++
			}
		}
		return n == 2
	})
	return c, drivers
}

// guestVM is a driver whose VMs' guest memory a test reads (QEMU's,
// libvirt's).
type guestVM interface {
	ReadMemory(ctx context.Context, id string, addr, n uint64) ([]byte, error)
	Pause(ctx context.Context, id string) error
}

func guestCounters(t testing.TB, d guestVM, id string) qemu.GuestCounters {
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

// checkGuestMemory checks VM id of spec s on d: its pattern, then, paused
// (and left paused), its dirtied region against its counters, which it
// returns.
func checkGuestMemory(t testing.TB, d guestVM, id string, s hypervisor.Spec) qemu.GuestCounters {
	t.Helper()
	checkGuestPattern(t, d, id, s)
	if err := d.Pause(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	l := qemu.Layout(s)
	cnt := guestCounters(t, d, id)
	region, err := d.ReadMemory(context.Background(), id, l.DirtyAddr, l.DirtyLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CheckDirtied(region, cnt); err != nil {
		t.Fatal(err)
	}
	return cnt
}

// checkGuestPattern compares VM id's pattern region with the stream the
// test guest of spec s writes.
func checkGuestPattern(t testing.TB, d guestVM, id string, s hypervisor.Spec) {
	t.Helper()
	l := qemu.Layout(s)
	got, err := d.ReadMemory(context.Background(), id, l.PatternAddr, l.PatternLen)
	if err != nil {
		t.Fatal(err)
	}
	want := l.PatternData()
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: guest memory differs from the pattern at %#x (of %d bytes)", id, l.PatternAddr+uint64(i), len(got))
		}
	}
}

// A real QEMU guest (TCG) migrates from site east to site west through
// the agents' SUDP tunnel across the emulated WAN (100 Mbit/s, 50 ms RTT,
// 1 % loss) and keeps running there: its pattern is intact, its dirtied
// pages agree with its counters, it runs on, and the source QEMU is gone.
func TestQEMUMigrationWAN(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	spec := hypervisor.Spec{Name: "guest", Memory: 128 << 20, VCPUs: 1,
		Workload: hypervisor.Workload{Fill: 0.5, Dirty: 1 << 20}}
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&created, "vms", "create", "guest", "--host", "east", "--memory", "128MiB", "--workload", "fill=0.5,dirty=1MiB/s"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest wrote its pattern", func() bool { return guestCounters(t, drv["east"], "guest").Status == 1 })
	checkGuestPattern(t, drv["east"], "guest", spec)
	srcPID := 0
	if vms, err := drv["east"].List(context.Background()); err == nil && len(vms) == 1 {
		srcPID = vms[0].PID
	}

	var mig struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&mig, "migrate", "guest", "--to", "west"); err != nil {
		t.Fatal(err)
	}
	m, err := c.watch(mig.ID)
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	c.checkCompleted(m, "guest", "east", "west")
	t.Logf("QEMU guest east→west over the WAN: total %d ms, downtime %d ms, %d bytes on the wire, %d rounds",
		m.TotalMS, m.DowntimeMS, m.BytesOnWire, m.Rounds)
	if pat := qemu.Layout(spec).PatternLen; m.BytesOnWire < pat {
		t.Fatalf("%d bytes on the wire for a guest with %d bytes of pattern", m.BytesOnWire, pat)
	}
	if srcPID == 0 || syscall.Kill(srcPID, 0) == nil {
		t.Fatalf("the source QEMU (pid %d) still runs", srcPID)
	}

	// On the destination: the pattern, then (paused) the dirtied
	// region against the counters, then it runs on.
	west := drv["west"]
	cnt := c.checkRunsOn(t, west, spec)
	if cnt.Pages == 0 {
		t.Fatal("the guest never dirtied a page")
	}
	t.Logf("destination guest: %d pages dirtied (%d passes) before the check", cnt.Pages, cnt.Generation)
	if log := c.mmc.log(); !strings.Contains(log, "migration completed") {
		t.Fatalf("the MMC did not log the completion")
	}
}

// With --channels QEMU moves memory over multifd channels beside its main
// stream, every one of them a stream of the agents' one SUDP connection
// (the destination's QEMU listening on a Unix socket the destination
// agent connects each stream to), and the agents compress the streams:
// a guest whose memory is mostly text arrives exact, in fewer bytes on
// the wire than its memory.
func TestQEMUMultifdWAN(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	const workload = "fill=1,text=0.9,dirty=1MiB/s"
	w, err := hypervisor.ParseWorkload(workload)
	if err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.Spec{Name: "guest", Memory: 64 << 20, VCPUs: 1, Workload: w}
	if err := c.ctl(nil, "vms", "create", "guest", "--host", "east", "--memory", "64MiB", "--workload", workload); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest wrote its pattern", func() bool { return guestCounters(t, drv["east"], "guest").Status == 1 })
	var mig struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&mig, "migrate", "guest", "--to", "west", "--channels", "3"); err != nil {
		t.Fatal(err)
	}
	m, err := c.watch(mig.ID)
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	c.checkCompleted(m, "guest", "east", "west")
	pat := qemu.Layout(spec).PatternLen
	t.Logf("multifd guest east→west: total %d ms, downtime %d ms, %d bytes on the wire for %d of pattern", m.TotalMS, m.DowntimeMS, m.BytesOnWire, pat)
	if m.BytesOnWire > pat*7/10 {
		t.Fatalf("%d bytes on the wire for %d bytes of pattern that compresses 2×: the streams were not compressed", m.BytesOnWire, pat)
	}
	// The source agent carried QEMU's three multifd connections, each
	// on its own stream, and the destination agent joined each to the
	// incoming QEMU's socket (which took them as its multifd channels:
	// the memory checked below came over them).
	if n := strings.Count(c.agentProcs["east"].log(), `msg="agent: migration channel opened" id=`+mig.ID+" channel=multifd"); n != 3 {
		t.Fatalf("the source agent carried %d multifd channels, want 3", n)
	}
	if n := strings.Count(c.agentProcs["west"].log(), `msg="agent: migration channel joined" id=`+mig.ID+" channel=multifd framed=true"); n != 3 {
		t.Fatalf("the destination agent joined %d framed multifd channels, want 3", n)
	}
	// And the main stream carried little of the memory: the channels
	// did (QEMU's main stream holds the device state and page headers).
	sent, key := c.agentProcs["east"].log(), `msg="agent: migration stream sent" id=`+mig.ID+" bytes="
	i := strings.Index(sent, key)
	if i < 0 {
		t.Fatal("the source agent did not log its main stream's end")
	}
	var main int64
	fmt.Sscan(sent[i+len(key):], &main)
	if main <= 0 || main > int64(pat)/10 {
		t.Fatalf("the main stream carried %d bytes of %d of pattern: the memory did not go over the channels", main, pat)
	}
	c.checkRunsOn(t, drv["west"], spec)
	// Post-copy and XBZRLE do not combine with multifd: refused up front.
	for _, bad := range [][]string{{"--postcopy"}, {"--compress"}, {"--channels", "17"}} {
		if err := c.ctl(nil, append([]string{"migrate", "guest", "--to", "east", "--channels", "2"}, bad...)...); err == nil {
			t.Fatalf("migrate --channels with %v was accepted", bad)
		}
	}
}

// With --compress the MMC has the source QEMU send pages it sent before
// as XBZRLE deltas. The test guest rewrites one word of each page it
// dirties, cycling through its 16 MiB region about once a second — about
// once a pass over this link — so from the third pass on the pages it
// sends again are in QEMU's cache and go as deltas; the guest's memory
// still arrives exact.
func TestQEMUCompressWAN(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	spec := hypervisor.Spec{Name: "guest", Memory: 64 << 20, VCPUs: 1,
		Workload: hypervisor.Workload{Fill: 0.5, Dirty: 16 << 20}}
	if err := c.ctl(nil, "vms", "create", "guest", "--host", "east", "--memory", "64MiB", "--workload", "fill=0.5,dirty=16MiB/s"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest wrote its pattern", func() bool { return guestCounters(t, drv["east"], "guest").Status == 1 })

	var mig struct {
		ID string `json:"id"`
	}
	// The agents' own compression off: it would carry the dirtied pages
	// (one word each, the rest zeros) at a hundredth of their size, and
	// the migration would end before pages are sent a third time.
	if err := c.ctl(&mig, "migrate", "guest", "--to", "west", "--compress", "--stream-compression", "off"); err != nil {
		t.Fatal(err)
	}
	// Watch the source QEMU itself while it sends (the record ends with
	// it): the capability on, and pages going as deltas.
	var xbzrle struct {
		Cap   bool
		Pages uint64
	}
	watched, stopWatch := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		for ctx := context.Background(); ; time.Sleep(50 * time.Millisecond) {
			select {
			case <-stopWatch:
				return
			default:
			}
			var caps []struct {
				Capability string `json:"capability"`
				State      bool   `json:"state"`
			}
			var mi struct {
				Status string `json:"status"`
				Cache  struct {
					Pages uint64 `json:"pages"`
				} `json:"xbzrle-cache"`
			}
			if err := drv["east"].QMP(ctx, "guest", "query-migrate", nil, &mi); err != nil {
				continue // the agent's QMP call holds the monitor, or the VM is gone
			}
			xbzrle.Pages = max(xbzrle.Pages, mi.Cache.Pages)
			if mi.Status == "completed" {
				return
			}
			if drv["east"].QMP(ctx, "guest", "query-migrate-capabilities", nil, &caps) == nil {
				for _, cp := range caps {
					if cp.Capability == "xbzrle" && cp.State {
						xbzrle.Cap = true
					}
				}
			}
		}
	}()
	m, err := c.watch(mig.ID)
	close(stopWatch)
	<-watched
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	c.checkCompleted(m, "guest", "east", "west")
	t.Logf("compressed migration: total %d ms, downtime %d ms, %d bytes on the wire, %d rounds; %d pages sent as XBZRLE deltas",
		m.TotalMS, m.DowntimeMS, m.BytesOnWire, m.Rounds, xbzrle.Pages)
	if !m.Compress || !xbzrle.Cap {
		t.Fatalf("record compress=%v, source QEMU's xbzrle capability %v", m.Compress, xbzrle.Cap)
	}
	if xbzrle.Pages < 1000 {
		t.Fatalf("%d pages went as XBZRLE deltas in %d rounds, want the dirtied region's (4096) several times over", xbzrle.Pages, m.Rounds)
	}
	checkGuestMemory(t, drv["west"], "guest", spec)
}

// cutSite drops every packet into and out of namespace ns (nftables), as
// a WAN link that goes down.
func cutSite(t testing.TB, ns string) {
	t.Helper()
	rules := `table inet ferrycut {
	chain in { type filter hook input priority -200; policy drop; iif "lo" accept; }
	chain out { type filter hook output priority -200; policy drop; oif "lo" accept; }
}`
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// healSite undoes cutSite.
func healSite(t testing.TB, ns string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "ferrycut").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}

// The WAN link goes down mid-transfer: the migration ends failed, and the
// source VM runs on, unchanged (its pattern intact, its dirtied pages
// agreeing with its counters).
func TestQEMUMigrationLinkCut(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	spec := hypervisor.Spec{Name: "stays", Memory: 256 << 20, VCPUs: 1,
		Workload: hypervisor.Workload{Fill: 0.5, Dirty: 1 << 20}}
	if err := c.ctl(nil, "vms", "create", "stays", "--host", "east", "--memory", "256MiB", "--workload", "fill=0.5,dirty=1MiB/s"); err != nil {
		t.Fatal(err)
	}
	east := drv["east"]
	c.waitFor("the guest wrote its pattern", func() bool { return guestCounters(t, east, "stays").Status == 1 })
	var mig struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&mig, "migrate", "stays", "--to", "west"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the transfer under way", func() bool {
		st, err := east.MigrationStatus(context.Background(), "stays")
		return err == nil && st.State == hypervisor.MigActive && st.Transferred > 8<<20
	})
	cutSite(t, c.agentNetns["west"])
	if _, err := c.watch(mig.ID); err == nil {
		t.Fatal("watch succeeded although the link went down")
	}
	var list []migrationView
	if err := c.ctl(&list, "migrations", "list"); err != nil || len(list) != 1 {
		t.Fatalf("migrations: %+v, %v", list, err)
	}
	m := list[0]
	if m.State != "failed" {
		t.Fatalf("after the link went down: %+v", m)
	}
	t.Logf("migration %s: %s (%s)", m.ID, m.State, m.Error)
	vms, err := east.List(context.Background())
	if err != nil || len(vms) != 1 || vms[0].State != hypervisor.StateRunning {
		t.Fatalf("source VMs: %+v, %v", vms, err)
	}
	checkGuestPattern(t, east, "stays", spec)
	if err := east.Pause(context.Background(), "stays"); err != nil {
		t.Fatal(err)
	}
	l := qemu.Layout(spec)
	cnt := guestCounters(t, east, "stays")
	region, err := east.ReadMemory(context.Background(), "stays", l.DirtyAddr, l.DirtyLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CheckDirtied(region, cnt); err != nil {
		t.Fatal(err)
	}
	if err := east.Resume(context.Background(), "stays"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the source guest runs on", func() bool { return guestCounters(t, east, "stays").Pages > cnt.Pages })
}

// A guest with a local qcow2 disk migrates across the WAN with its disk:
// the destination's copy (in its agent's pool) has the same content as
// the source's image, and the guest runs there.
func TestQEMUMigrationWithLocalDisk(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	dir := t.TempDir()
	raw, img := filepath.Join(dir, "data.raw"), filepath.Join(dir, "disk.qcow2")
	data := qemu.Pattern(0x5eed, 8<<20) // 8 MiB of incompressible data, then zeros
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(raw, 48<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	spec := hypervisor.Spec{Name: "disky", Memory: 128 << 20, VCPUs: 1,
		Workload: hypervisor.Workload{Fill: 0.25, Dirty: 1 << 20}}
	if err := c.ctl(nil, "vms", "create", "disky", "--host", "east", "--memory", "128MiB",
		"--workload", "fill=0.25,dirty=1MiB/s", "--disk", img); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest wrote its pattern", func() bool { return guestCounters(t, drv["east"], "disky").Status == 1 })
	var mig struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&mig, "migrate", "disky", "--to", "west"); err != nil {
		t.Fatal(err)
	}
	m, err := c.watch(mig.ID)
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	c.checkCompleted(m, "disky", "east", "west")
	ms := func(a, b time.Time) int64 { return b.Sub(a).Milliseconds() }
	t.Logf("QEMU guest with an 8 MiB-used, 48 MiB disk east→west: total %d ms, downtime %d ms (copy %d, deliver %d, resume %d), %d bytes on the wire",
		m.TotalMS, m.DowntimeMS, ms(m.PausedAt, m.SentAt), ms(m.SentAt, m.VerifiedAt), ms(m.VerifiedAt, m.ResumedAt), m.BytesOnWire)
	if m.BytesOnWire < uint64(len(data))+qemu.Layout(spec).PatternLen {
		t.Fatalf("%d bytes on the wire: less than the disk's data and the guest's pattern", m.BytesOnWire)
	}
	moved := filepath.Join(c.agentDirs["west"], "qemu", "disks", "disky-disk0.qcow2")
	if out, err := exec.Command("qemu-img", "compare", "-U", img, moved).CombinedOutput(); err != nil {
		t.Fatalf("the destination's disk differs from the source's: %v: %s", err, out)
	}
	checkGuestPattern(t, drv["west"], "disky", spec)
	before := guestCounters(t, drv["west"], "disky")
	c.waitFor("the guest runs on at the destination", func() bool {
		return guestCounters(t, drv["west"], "disky").Pages > before.Pages
	})
	// Committed, the disk is the VM's: no longer listed as made for an
	// incoming VM (which a rollback would remove).
	if _, err := os.Stat(filepath.Join(c.agentDirs["west"], "qemu", "disky.created")); !os.IsNotExist(err) {
		t.Fatalf("the destination still lists the moved disk as its own leftover: %v", err)
	}
}

// fastDirtier is a guest that rewrites its 16 MiB dirty region at
// 64 MB/s, five times what the wan profile's link carries: pre-copy
// cannot converge.
var fastDirtier = hypervisor.Spec{Name: "racer", Memory: 64 << 20, VCPUs: 1,
	Workload: hypervisor.Workload{Fill: 0.5, Dirty: 64 << 20}}

func createFastDirtier(t *testing.T, c *cluster, d *qemu.Driver) int {
	t.Helper()
	if err := c.ctl(nil, "vms", "create", fastDirtier.Name, "--host", "east", "--memory", "64MiB", "--workload", "fill=0.5,dirty=64MiB/s"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest wrote its pattern", func() bool { return guestCounters(t, d, fastDirtier.Name).Status == 1 })
	checkGuestPattern(t, d, fastDirtier.Name, fastDirtier)
	vms, err := d.List(context.Background())
	if err != nil || len(vms) != 1 {
		t.Fatalf("east VMs %+v %v", vms, err)
	}
	return vms[0].PID
}

// A guest that dirties memory faster than the WAN link carries, migrated
// with post-copy allowed: after --max-rounds passes the MMC lets the
// source switch, the destination runs at once and pulls the rest over the
// tunnel (page requests flowing back), and ends with the guest's memory
// exactly right; the source QEMU is gone. The MMC is restarted while the
// destination pulls pages (committed, the source still needed): the
// restarted MMC finishes the migration.
func TestQEMUPostcopyWAN(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	srcPID := createFastDirtier(t, c, drv["east"])
	var mig struct {
		ID string `json:"id"`
	}
	// The dirtier rewrites one word of each page (the rest zeros): the
	// agents' compression would carry its pages at a hundredth of their
	// size and let pre-copy converge. Off, the guest outruns the link,
	// as this test needs.
	if err := c.ctl(&mig, "migrate", fastDirtier.Name, "--to", "west", "--postcopy", "--max-rounds", "3", "--stream-compression", "off"); err != nil {
		t.Fatal(err)
	}
	c.waitForUpTo(2*time.Minute, "the post-copy phase", func() bool {
		var list []migrationView
		if err := c.ctl(&list, "migrations", "list"); err != nil || len(list) != 1 {
			t.Fatalf("migrations: %+v, %v", list, err)
		}
		switch m := list[0]; m.State {
		case "postcopy", "switch-over":
			return true
		case "completed", "failed", "cancelled":
			t.Fatalf("the migration ended before the test saw its post-copy phase: %+v", m)
		}
		return false
	})
	var list []migrationView
	_ = c.ctl(&list, "migrations", "list")
	c.mmc.stop()
	t.Logf("MMC stopped in state %s", list[0].State)
	// Committed: the source switched and must never run again. (In state
	// postcopy it may not have switched yet.)
	if vms, err := drv["east"].List(context.Background()); list[0].State == "switch-over" && (err != nil || len(vms) != 1 || vms[0].State == hypervisor.StateRunning) {
		t.Fatalf("the source runs during post-copy: %+v %v", vms, err)
	}
	c.startMMC()
	m, err := c.watch(mig.ID)
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	if !m.Postcopy || m.Rounds <= 3 {
		t.Fatalf("the migration did not go through post-copy after 3 rounds: %+v", m)
	}
	c.checkCompleted(m, fastDirtier.Name, "east", "west")
	t.Logf("post-copy east→west: total %d ms, downtime %d ms, %d bytes on the wire, %d rounds before the switch; resumed %v after the switch, every page in %v after",
		m.TotalMS, m.DowntimeMS, m.BytesOnWire, m.Rounds, m.ResumedAt.Sub(m.PausedAt), m.VerifiedAt.Sub(m.ResumedAt))
	if syscall.Kill(srcPID, 0) == nil {
		t.Fatalf("the source QEMU (pid %d) still runs", srcPID)
	}
	west := drv["west"]
	checkGuestPattern(t, west, fastDirtier.Name, fastDirtier)
	if err := west.Pause(context.Background(), fastDirtier.Name); err != nil {
		t.Fatal(err)
	}
	l := qemu.Layout(fastDirtier)
	cnt := guestCounters(t, west, fastDirtier.Name)
	region, err := west.ReadMemory(context.Background(), fastDirtier.Name, l.DirtyAddr, l.DirtyLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CheckDirtied(region, cnt); err != nil {
		t.Fatal(err)
	}
	if err := west.Resume(context.Background(), fastDirtier.Name); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the guest runs on at the destination", func() bool {
		return guestCounters(t, west, fastDirtier.Name).Pages > cnt.Pages
	})
}

// The same guest without post-copy: after --max-rounds passes the
// migration is given up, and says why; the guest runs on at the source,
// its memory intact, and no copy is left at the destination.
func TestQEMUNoConvergenceWAN(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	srcPID := createFastDirtier(t, c, drv["east"])
	var mig struct {
		ID string `json:"id"`
	}
	// The dirtier rewrites one word of each page (the rest zeros): the
	// agents' compression would carry its pages at a hundredth of their
	// size and let pre-copy converge. Off, the guest outruns the link,
	// as this test needs.
	if err := c.ctl(&mig, "migrate", fastDirtier.Name, "--to", "west", "--max-rounds", "3", "--stream-compression", "off"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.watch(mig.ID); err == nil {
		t.Fatal("watch succeeded although the migration cannot converge")
	}
	var list []migrationView
	if err := c.ctl(&list, "migrations", "list"); err != nil || len(list) != 1 {
		t.Fatalf("migrations: %+v, %v", list, err)
	}
	m := list[0]
	if m.State != "failed" || !strings.Contains(m.Error, "did not converge") || m.Postcopy {
		t.Fatalf("migration %+v", m)
	}
	t.Logf("given up: %s", m.Error)
	c.waitFor("the guest on east only", func() bool {
		return c.vmState("east", fastDirtier.Name) == "running" && c.vmState("west", fastDirtier.Name) == ""
	})
	if syscall.Kill(srcPID, 0) != nil {
		t.Fatal("the source QEMU is gone")
	}
	east := drv["east"]
	c0 := guestCounters(t, east, fastDirtier.Name)
	c.waitFor("the guest runs on at the source", func() bool {
		return guestCounters(t, east, fastDirtier.Name).Pages > c0.Pages
	})
	checkGuestPattern(t, east, fastDirtier.Name, fastDirtier)
}

// The WAN link goes down for 35 s while a post-copy destination still
// pulls pages (the source stopped, the destination not yet whole): longer
// than a link's default idle timeout (30 s), but the agents raised theirs
// when the migration switched, so their SUDP link rides the outage out,
// QEMU sees a stall rather than a broken stream, and once the link is back
// the migration completes with the guest's memory exact.
func TestQEMUPostcopyLinkOutage(t *testing.T) {
	requireQEMUAndRoot(t)
	c, drv := qemuSites(t, "wan")
	spec := fastDirtier
	spec.Memory = 128 << 20 // a 32 MiB dirty region: ~2.7 s of pages to pull after the switch
	if err := c.ctl(nil, "vms", "create", spec.Name, "--host", "east", "--memory", "128MiB", "--workload", "fill=0.5,dirty=64MiB/s"); err != nil {
		t.Fatal(err)
	}
	east, west := drv["east"], drv["west"]
	c.waitFor("the guest wrote its pattern", func() bool { return guestCounters(t, east, spec.Name).Status == 1 })
	var mig struct {
		ID string `json:"id"`
	}
	// The dirtier rewrites one word of each page (the rest zeros): the
	// agents' compression would carry its pages at a hundredth of their
	// size and let pre-copy converge. Off, the guest outruns the link,
	// as this test needs.
	if err := c.ctl(&mig, "migrate", spec.Name, "--to", "west", "--postcopy", "--max-rounds", "3", "--stream-compression", "off"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := west.MigrationStatus(context.Background(), spec.Name)
		if err == nil && st.Postcopy == hypervisor.PostcopyActive {
			break
		}
		if time.Now().After(deadline) {
			// (Before its QEMU is up the destination reads as failed.)
			t.Fatalf("waiting for the destination to switch to post-copy: %+v %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cutSite(t, c.agentNetns["west"])
	// Asked of the source: the destination's monitor may not answer now
	// (its main thread can be waiting for a page the link no longer
	// brings — seen once under CI load), while the source knows whether
	// pages are still to be sent: in post-copy and active, they are.
	st, err := east.MigrationStatus(context.Background(), spec.Name)
	if err != nil || st.State != hypervisor.MigActive || st.Postcopy != hypervisor.PostcopyActive {
		t.Fatalf("the source is not sending post-copy pages as the link goes down: %+v %v", st, err)
	}
	time.Sleep(35 * time.Second)
	if st, err := east.MigrationStatus(context.Background(), spec.Name); err != nil || st.State != hypervisor.MigActive {
		t.Fatalf("the source during the outage: %+v %v", st, err)
	}
	healSite(t, c.agentNetns["west"])
	m, err := c.watch(mig.ID)
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	if !m.Postcopy {
		t.Fatalf("not a post-copy migration: %+v", m)
	}
	c.checkCompleted(m, spec.Name, "east", "west")
	t.Logf("post-copy across a 35 s outage: total %d ms, downtime %d ms", m.TotalMS, m.DowntimeMS)
	checkGuestMemory(t, west, spec.Name, spec)
}

// e2eLogLevel is the agents' log level: FERRY_E2E_LOG_LEVEL, or info.
// With FERRY_E2E_LOGS set as well, every process's log is printed at the
// end of its test (to see where a slow migration's time went), or, when
// FERRY_E2E_LOGS is an absolute directory, written to files there.
// FERRY_E2E_CPUPROFILE (a directory) has the QEMU sites' agents write CPU
// profiles.
func e2eLogLevel() string {
	if l := os.Getenv("FERRY_E2E_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}
