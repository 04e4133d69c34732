package qemu

import (
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
