package qemu

import (
	"errors"
	"fmt"
	"os"
	"regexp"

	"golang.org/x/sys/unix"
)

// Accelerators (--accel).
const (
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
	AccelAuto = "auto"
)

// KVM ioctls (linux/kvm.h): _IO(0xAE, n).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmCreateVCPU    = 0xAE41
	kvmAPIVersion    = 12
)

// ProbeKVM checks that KVM works on this host, not only that /dev/kvm
// opens: some hosts (nested flavours) let it open and then fail to
// create a VM or a vCPU.
func ProbeKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/kvm: %w", err)
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("KVM API version %d, want %d", v, kvmAPIVersion)
	}
	vm, err := unix.IoctlRetInt(int(f.Fd()), kvmCreateVM)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	defer unix.Close(vm)
	vcpu, err := unix.IoctlRetInt(vm, kvmCreateVCPU)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	unix.Close(vcpu)
	return nil
}

// ChooseAccel resolves --accel: want is kvm, tcg or auto; kvmErr is
// ProbeKVM's answer (only consulted for kvm and auto). fallback is set
// when auto fell back to TCG (the caller logs it).
func ChooseAccel(want string, kvmErr error) (accel string, fallback bool, err error) {
	switch want {
	case AccelTCG:
		return AccelTCG, false, nil
	case AccelKVM:
		if kvmErr != nil {
			return "", false, fmt.Errorf("qemu: --accel kvm: KVM does not work here: %w", kvmErr)
		}
		return AccelKVM, false, nil
	case AccelAuto, "":
		if kvmErr != nil {
			return AccelTCG, true, nil
		}
		return AccelKVM, false, nil
	}
	return "", false, fmt.Errorf("qemu: --accel %q: want kvm, tcg or auto", want)
}

var cpuModelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+=,-]{0,199}$`)

// CheckCPUModel accepts a QEMU -cpu value: a model name with optional
// ",feature=on" flags ("" is QEMU's default model).
func CheckCPUModel(m string) error {
	if m == "" {
		return nil
	}
	if !cpuModelRE.MatchString(m) {
		return errors.New("qemu: --cpu: a QEMU CPU model, e.g. qemu64, Haswell-v4, host or max (letters, digits, . _ + = , -)")
	}
	return nil
}
