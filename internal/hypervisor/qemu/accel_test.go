package qemu

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func TestChooseAccel(t *testing.T) {
	broken := errors.New("KVM_CREATE_VM: no such device")
	for _, c := range []struct {
		want     string
		kvmErr   error
		accel    string
		fallback bool
		err      bool
	}{
		{"tcg", nil, "tcg", false, false},
		{"tcg", broken, "tcg", false, false},
		{"kvm", nil, "kvm", false, false},
		{"kvm", broken, "", false, true},
		{"auto", nil, "kvm", false, false},
		{"auto", broken, "tcg", true, false},
		{"", broken, "tcg", true, false},
		{"hvf", nil, "", false, true},
	} {
		accel, fb, err := ChooseAccel(c.want, c.kvmErr)
		if accel != c.accel || fb != c.fallback || (err != nil) != c.err {
			t.Errorf("ChooseAccel(%q, %v) = %q, %v, %v; want %q, %v, error %v", c.want, c.kvmErr, accel, fb, err, c.accel, c.fallback, c.err)
		}
	}
}

func TestCheckCPUModel(t *testing.T) {
	for _, ok := range []string{"", "qemu64", "Haswell-v4", "host", "max", "Skylake-Client,+avx2=on", "EPYC-Rome"} {
		if err := CheckCPUModel(ok); err != nil {
			t.Errorf("CheckCPUModel(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"-x", "qemu64 -hda /etc/passwd", "a\nb", "a;b", strings.Repeat("a", 201)} {
		if err := CheckCPUModel(bad); err == nil {
			t.Errorf("CheckCPUModel(%q) accepted", bad)
		}
	}
}

// The accelerator and CPU model reach QEMU's command line.
func TestArgsAccelAndCPU(t *testing.T) {
	s := hypervisor.Spec{Name: "vm", Memory: 64 << 20, VCPUs: 1}
	d := &Driver{Dir: t.TempDir(), Accel: AccelKVM, CPU: "Haswell-v4"}
	a, err := d.args(s, false)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.Index(a, "-machine"); i < 0 || a[i+1] != "pc,accel=kvm" {
		t.Errorf("-machine: %q", a)
	}
	if i := slices.Index(a, "-cpu"); i < 0 || a[i+1] != "Haswell-v4" {
		t.Errorf("-cpu: %q", a)
	}
	d.CPU = ""
	if a, _ := d.args(s, false); slices.Contains(a, "-cpu") {
		t.Errorf("no model, yet -cpu: %q", a)
	}
	d.CPU = "x -hda /etc/shadow"
	if _, err := d.args(s, false); err == nil {
		t.Error("a CPU model with spaces reached QEMU's arguments")
	}
}

// ProbeKVM agrees with the machine: without /dev/kvm it fails.
func TestProbeKVM(t *testing.T) {
	err := ProbeKVM()
	if _, serr := os.Stat("/dev/kvm"); serr != nil && err == nil {
		t.Fatal("ProbeKVM succeeded without /dev/kvm")
	}
	t.Logf("KVM here: %v", err)
}

// --accel auto boots the test guest with whatever it chose: KVM where it
// works (the KVM path exercised), TCG elsewhere; the guest writes its
// pattern and runs, and QEMU's own view of the accelerator agrees.
func TestAccelAutoBoots(t *testing.T) {
	d := newDriver(t)
	kvmErr := ProbeKVM()
	accel, fellBack, err := ChooseAccel(AccelAuto, kvmErr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("auto: %s (fell back: %v, KVM: %v)", accel, fellBack, kvmErr)
	d.Accel, d.CPU = accel, "qemu64"
	s := hypervisor.Spec{Name: "auto", Memory: 32 << 20, VCPUs: 1, Workload: hypervisor.Workload{Fill: 0.25, Dirty: 1 << 20}}
	if _, err := d.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	waitPattern(t, d, s)
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	if err := d.QMP(context.Background(), "auto", "query-kvm", nil, &kvm); err != nil {
		t.Fatal(err)
	}
	if kvm.Enabled != (accel == AccelKVM) {
		t.Fatalf("QEMU says KVM enabled=%v, the driver chose %s", kvm.Enabled, accel)
	}
	var cpus []struct {
		Props struct {
			Type string `json:"type"`
		} `json:"props"`
		Type string `json:"type"`
	}
	if err := d.QMP(context.Background(), "auto", "query-hotpluggable-cpus", nil, &cpus); err != nil {
		t.Fatal(err)
	}
	if len(cpus) == 0 || !strings.HasPrefix(cpus[0].Type, "qemu64") {
		t.Fatalf("CPU model: %+v, want qemu64", cpus)
	}
}
