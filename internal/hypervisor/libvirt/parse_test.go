package libvirt

import (
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		in, socket, open string
		err              bool
	}{
		{"", systemSocket, "qemu:///system", false},
		{"qemu:///system", systemSocket, "qemu:///system", false},
		{"qemu+unix:///system?socket=/tmp/b/libvirt-sock", "/tmp/b/libvirt-sock", "qemu:///system", false},
		{"qemu+unix:///session?socket=/run/user/1000/libvirt/libvirt-sock", "/run/user/1000/libvirt/libvirt-sock", "qemu:///session", false},
		{"qemu:///session", "", "", true},
		{"qemu+ssh://host/system", "", "", true},
		{"qemu+tcp://host/system", "", "", true},
		{"qemu://host/system", "", "", true},
		{"xen:///system", "", "", true},
		{"qemu:///embed?root=/x", "", "", true},
		{"qemu+unix:///system?socket=relative", "", "", true},
		{"qemu+unix:///system?socket=/x&mode=direct", "", "", true},
		{"%zz", "", "", true},
		{"qemu:///system?" + strings.Repeat("a", 2000), "", "", true},
	} {
		got, err := parseURI(c.in)
		if (err != nil) != c.err {
			t.Errorf("parseURI(%q): %v, want error %v", c.in, err, c.err)
			continue
		}
		if err == nil && (got.Socket != c.socket || string(got.Open) != c.open) {
			t.Errorf("parseURI(%q) = %+v, want socket %q, open %q", c.in, got, c.socket, c.open)
		}
	}
}

const testDomain = `<domain type='qemu' id='3'>
  <name>web1</name>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg0/web1-data'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/debian.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='file' device='disk'><source file='/shared/scratch.img'/><target dev='vdc'/><shareable/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdd'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/ro.img'/><target dev='vde'/><readonly/></disk>
  </devices>
</domain>`

func TestParseDisks(t *testing.T) {
	got, err := parseDisks(testDomain, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []hypervisor.Disk{
		{Path: "/var/lib/libvirt/images/web1.qcow2", Format: "qcow2"},
		{Path: "/dev/vg0/web1-data", Format: "raw"},
	}
	if len(got) != len(want) {
		t.Fatalf("parseDisks = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("disk %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	shared, _ := parseDisks(testDomain, true)
	if len(shared) != 2 || !shared[0].Shared {
		t.Errorf("shared storage: %+v", shared)
	}
	none, err := parseDisks(`<domain><name>x</name></domain>`, false)
	if err != nil || len(none) != 0 {
		t.Errorf("no disks: %v, %v", none, err)
	}
	for _, bad := range []string{"", "<domain>", "not xml", strings.Repeat("<a>", maxXML)} {
		if _, err := parseDisks(bad, false); err == nil {
			t.Errorf("parseDisks(%.20q) accepted", bad)
		}
	}
}

func TestQEMUIDs(t *testing.T) {
	caps := `<capabilities><host><uuid>x</uuid>
  <secmodel><model>none</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+64055</baselabel><baselabel type='qemu'>+64055:+108</baselabel></secmodel>
</host></capabilities>`
	uid, gid, ok, err := qemuIDs(caps)
	if err != nil || !ok || uid != 64055 || gid != 64055 {
		t.Errorf("qemuIDs = %d, %d, %v, %v", uid, gid, ok, err)
	}
	if _, _, ok, err := qemuIDs(`<capabilities><host><secmodel><model>none</model></secmodel></host></capabilities>`); ok || err != nil {
		t.Errorf("no DAC driver: %v, %v", ok, err)
	}
	for _, bad := range []string{
		`<capabilities><host><secmodel><model>dac</model><baselabel type='kvm'>64055</baselabel></secmodel></host></capabilities>`,
		`<capabilities><host><secmodel><model>dac</model><baselabel type='kvm'>+a:+b</baselabel></secmodel></host></capabilities>`,
		`<capabilities><host><secmodel><model>dac</model><baselabel type='kvm'>+99999999999:+1</baselabel></secmodel></host></capabilities>`,
		`<capabilities`,
	} {
		if _, _, _, err := qemuIDs(bad); err == nil {
			t.Errorf("qemuIDs(%q) accepted", bad)
		}
	}
}

func u(v uint64) golibvirt.TypedParamValue { return *golibvirt.NewTypedParamValueUllong(v) }

func TestJobStatus(t *testing.T) {
	ps := []golibvirt.TypedParam{
		{Field: "memory_total", Value: u(100 << 20)},
		{Field: "memory_remaining", Value: u(10 << 20)},
		{Field: "memory_processed", Value: u(95 << 20)},
		{Field: "data_processed", Value: u(120 << 20)},
		{Field: "memory_iteration", Value: u(3)},
		{Field: "memory_dirty_rate", Value: u(256)}, // pages/s
		{Field: "memory_page_size", Value: u(4096)},
		{Field: "memory_bps", Value: u(10 << 20)},
		{Field: "memory_constant", Value: u(7)},
		{Field: "disk_remaining", Value: u(0)},
		{Field: "auto_converge_throttle", Value: *golibvirt.NewTypedParamValueInt(40)},
	}
	st := jobStatus(paramsOf(ps))
	if st.Total != 100<<20 || st.Remaining != 10<<20 || st.Transferred != 95<<20 || st.StreamBytes != 120<<20 ||
		st.Round != 3 || st.DirtyRate != 1<<20 || st.Rate != 10<<20 || st.ZeroPages != 7 || st.Throttle != 0.4 {
		t.Errorf("jobStatus = %+v", st)
	}
	if st.ExpectedDowntime != time.Second {
		t.Errorf("expected downtime %v, want 1s (10 MiB at 10 MiB/s)", st.ExpectedDowntime)
	}
	// Disks still being copied count as remaining.
	ps = append(ps, golibvirt.TypedParam{Field: "disk_remaining", Value: u(30 << 20)})
	if st := jobStatus(paramsOf(ps)); st.Remaining != 40<<20 {
		t.Errorf("with disks remaining: %d", st.Remaining)
	}
	// Nothing known: zeros, no division by zero.
	if st := jobStatus(paramsOf(nil)); st != (hypervisor.MigrationStatus{}) {
		t.Errorf("empty job: %+v", st)
	}
	// A value of an unexpected type reads as zero.
	if v := paramsOf([]golibvirt.TypedParam{{Field: "memory_total", Value: *golibvirt.NewTypedParamValueString("x")}}).u64("memory_total"); v != 0 {
		t.Errorf("a string read as %d", v)
	}
}

func TestRates(t *testing.T) {
	p1 := paramsOf([]golibvirt.TypedParam{
		{Field: "cpu.time", Value: u(1e9)}, {Field: "vcpu.current", Value: *golibvirt.NewTypedParamValueUint(2)},
		{Field: "balloon.rss", Value: u(40 << 10)}, {Field: "balloon.maximum", Value: u(64 << 10)},
		{Field: "net.count", Value: *golibvirt.NewTypedParamValueUint(2)},
		{Field: "net.0.rx.bytes", Value: u(1000)}, {Field: "net.0.tx.bytes", Value: u(500)},
		{Field: "net.1.rx.bytes", Value: u(1000)}, {Field: "net.1.tx.bytes", Value: u(500)},
	})
	p2 := paramsOf([]golibvirt.TypedParam{
		{Field: "cpu.time", Value: u(2e9)}, {Field: "vcpu.current", Value: *golibvirt.NewTypedParamValueUint(2)},
		{Field: "balloon.rss", Value: u(50 << 10)}, {Field: "balloon.maximum", Value: u(64 << 10)},
		{Field: "net.count", Value: *golibvirt.NewTypedParamValueUint(2)},
		{Field: "net.0.rx.bytes", Value: u(3000)}, {Field: "net.0.tx.bytes", Value: u(1500)},
		{Field: "net.1.rx.bytes", Value: u(1000)}, {Field: "net.1.tx.bytes", Value: u(500)},
	})
	s1, s2 := sampleOf(p1), sampleOf(p2)
	first := rates(nil, s1, 0)
	if first.CPU != 0 || first.MemUsed != 40<<20 || first.MemTotal != 64<<20 {
		t.Errorf("first reading: %+v", first)
	}
	st := rates(&s1, s2, 1)
	// 1 s of CPU time over 1 s on 2 vCPUs: half.
	if st.CPU != 0.5 || st.NetRx != 2000 || st.NetTx != 1000 || st.MemUsed != 50<<20 {
		t.Errorf("rates = %+v", st)
	}
	// Counters that went backwards (a restarted domain): no negative rates.
	if st := rates(&s2, s1, 1); st.CPU != 0 || st.NetRx != 0 || st.NetTx != 0 {
		t.Errorf("backwards: %+v", st)
	}
	// A huge interface count is bounded.
	big := paramsOf([]golibvirt.TypedParam{{Field: "net.count", Value: u(1 << 40)}})
	if s := sampleOf(big); s.NetRx != 0 {
		t.Errorf("net.count 2^40: %+v", s)
	}
}

func TestStateOf(t *testing.T) {
	for _, c := range []struct {
		state, reason int32
		want          hypervisor.State
	}{
		{int32(golibvirt.DomainRunning), 1, hypervisor.StateRunning},
		{int32(golibvirt.DomainBlocked), 0, hypervisor.StateRunning},
		{int32(golibvirt.DomainPaused), int32(golibvirt.DomainPausedUser), hypervisor.StatePaused},
		{int32(golibvirt.DomainPaused), int32(golibvirt.DomainPausedMigration), hypervisor.StateMigrating},
		{int32(golibvirt.DomainPaused), int32(golibvirt.DomainPausedPostcopy), hypervisor.StateMigrating},
		{int32(golibvirt.DomainPmsuspended), 0, hypervisor.StatePaused},
		{int32(golibvirt.DomainShutoff), 0, hypervisor.StateStopped},
		{int32(golibvirt.DomainCrashed), 0, hypervisor.StateStopped},
		{99, 0, hypervisor.StateStopped},
	} {
		if got := stateOf(c.state, c.reason); got != c.want {
			t.Errorf("stateOf(%d, %d) = %q, want %q", c.state, c.reason, got, c.want)
		}
	}
}

func TestMigrationFlagsAndParams(t *testing.T) {
	f := migrationFlags(hypervisor.MigrationParams{AutoConverge: true}, true, true)
	for _, want := range []golibvirt.DomainMigrateFlags{golibvirt.MigrateLive, golibvirt.MigratePaused, golibvirt.MigrateChangeProtection,
		golibvirt.MigratePersistDest, golibvirt.MigrateNonSharedDisk, golibvirt.MigrateAutoConverge} {
		if f&want == 0 {
			t.Errorf("flags %#x lack %#x", f, want)
		}
	}
	// Never peer-to-peer (the driver drives the protocol) nor tunnelled
	// through libvirtd; the destination is not told source-only flags.
	if f&(golibvirt.MigratePeer2peer|golibvirt.MigrateTunnelled) != 0 {
		t.Errorf("flags %#x", f)
	}
	if df := golibvirt.DomainMigrateFlags(destFlags(f)); df&(golibvirt.MigrateAutoConverge|golibvirt.MigrateAbortOnError) != 0 || df&golibvirt.MigratePaused == 0 {
		t.Errorf("destination flags %#x", df)
	}
	if f := migrationFlags(hypervisor.MigrationParams{}, false, false); f&(golibvirt.MigratePersistDest|golibvirt.MigrateNonSharedDisk|golibvirt.MigrateAutoConverge) != 0 {
		t.Errorf("transient, shared storage, no auto-converge: %#x", f)
	}
	ps := paramsOf(migrationParams(hypervisor.MigrationParams{MaxBandwidth: 1.5 * (1 << 20)}, "/run/ferry/libvirt/web1", true))
	if ps["migrate_uri"] != "unix:///run/ferry/libvirt/web1/qemu.sock" || ps["disks_uri"] != "unix:///run/ferry/libvirt/web1/nbd.sock" || ps.u64("bandwidth") != 2 {
		t.Errorf("params %v", ps)
	}
	if ps := paramsOf(migrationParams(hypervisor.MigrationParams{}, "/d", false)); ps.has("disks_uri") || ps.has("bandwidth") {
		t.Errorf("params %v", ps)
	}
}
