// Package hypervisor is the interface between an agent and the hypervisor
// on its host: what VMs exist, what they use, and the operations the
// monitor and migration roles need. Drivers implement it: the built-in
// simulated one (package hypervisor/sim, each VM a `ferry simvm` process),
// QEMU (hypervisor/qemu, QMP) and libvirt (hypervisor/libvirt).
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/ferry-vm/ferry/internal/units"
)

// State is a VM's run state, as the CLI reports it.
type State string

// VM states.
const (
	StateRunning   State = "running"
	StatePaused    State = "paused"
	StateMigrating State = "migrating"
	StateStopped   State = "stopped"
)

// Workload is what a simulated VM's guest does: CPU use as a fraction of
// its vCPUs, memory pages dirtied per second, and network bytes per second.
// Real drivers ignore it.
type Workload struct {
	CPU   float64 `json:"cpu"`   // 0–1 of all vCPUs
	Dirty float64 `json:"dirty"` // bytes/s of memory written
	Net   float64 `json:"net"`   // bytes/s sent (and received)
	// Fill is the share of memory (0–1) the guest has written with
	// incompressible data when it boots: a guest that has used its
	// memory, as a long-running one has (migration benchmarks).
	Fill float64 `json:"fill,omitempty"`
	// Text is the share (0–1) of each filled page written as text (the
	// QEMU test guest: letters of three bits' entropy) instead of random
	// bytes, for memory that compresses as a real guest's does
	// (text=0.75: about 2× with zstd). The simulated VM ignores it.
	Text float64 `json:"text,omitempty"`
}

// Spec describes a VM to create: the VM definition the MMC stores and
// sends with every order about the VM (a migration's destination starts
// its copy from it).
type Spec struct {
	Name     string   `json:"name"`
	Memory   uint64   `json:"memory"` // bytes
	VCPUs    int      `json:"vcpus"`
	Workload Workload `json:"workload"`

	// What a real (QEMU) VM is made of; the simulated driver ignores it.
	// Machine is QEMU's machine type ("pc" if empty, or "q35").
	Machine string `json:"machine,omitempty"`
	Disks   []Disk `json:"disks,omitempty"`
	NICs    []NIC  `json:"nics,omitempty"`
	// Kernel is a kernel image to boot (-kernel). With no kernel and no
	// disk marked Boot, the VM boots Ferry's test guest, which writes a
	// known pattern and dirties memory at Workload's rates.
	Kernel string `json:"kernel,omitempty"`
}

// Disk is one virtual disk.
type Disk struct {
	// Path is the image on the host; a migration's destination uses the
	// same path.
	Path   string `json:"path"`
	Format string `json:"format,omitempty"` // "qcow2" (default) or "raw"
	// Shared: the image is on storage both hosts see, so a migration
	// moves only memory; otherwise the disk is mirrored to the
	// destination through the migration tunnel.
	Shared bool `json:"shared,omitempty"`
	Boot   bool `json:"boot,omitempty"`
	// Size is the disk's virtual size in bytes, as the driver found it
	// (a destination creates a local disk of this size).
	Size uint64 `json:"size,omitempty"`
}

// NIC is one virtual network interface.
type NIC struct {
	Model string `json:"model,omitempty"` // "virtio-net-pci" (default)
	MAC   string `json:"mac,omitempty"`
	// Tap is a host tap device to attach; empty: no host connection
	// (QEMU's user-mode network, which carries nothing across hosts).
	Tap string `json:"tap,omitempty"`
}

// VM is a VM as its driver sees it.
type VM struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	State  State  `json:"state"`
	VCPUs  int    `json:"vcpus"`
	Memory uint64 `json:"memory"`
	PID    int    `json:"pid,omitempty"`
	// Disks as the driver sees them (with sizes), for the MMC's record
	// of the VM's definition.
	Disks []Disk `json:"disks,omitempty"`
}

// Stats are a VM's current resource use (rates over the last second or so).
type Stats struct {
	CPU      float64 `json:"cpu"`       // 0–1 of its vCPUs
	MemUsed  uint64  `json:"mem_used"`  // bytes the guest touched
	MemTotal uint64  `json:"mem_total"` // bytes configured
	NetTx    float64 `json:"net_tx"`    // bytes/s
	NetRx    float64 `json:"net_rx"`    // bytes/s
	Dirty    float64 `json:"dirty"`     // bytes/s of memory written
}

// Driver is one host's hypervisor.
type Driver interface {
	Name() string
	List(ctx context.Context) ([]VM, error)
	Create(ctx context.Context, s Spec) (VM, error)
	Stats(ctx context.Context, id string) (Stats, error)
	SetWorkload(ctx context.Context, id string, w Workload) error
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	Destroy(ctx context.Context, id string) error
}

// ErrNotFound is returned for an unknown VM id.
var ErrNotFound = errors.New("hypervisor: no such VM")

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// CheckName accepts VM names usable as ids and file names.
func CheckName(n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("hypervisor: VM name %q: use 1–63 letters, digits, '.', '_' or '-', starting with a letter or digit", n)
	}
	return nil
}

// ParseWorkload reads the CLI form "cpu=0.8,dirty=20MB/s,net=5MB/s"
// (any subset; sizes as units.ParseBytes reads them, "/s" optional).
func ParseWorkload(s string) (Workload, error) {
	var w Workload
	if strings.TrimSpace(s) == "" {
		return w, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return w, fmt.Errorf("hypervisor: workload %q: want key=value", kv)
		}
		switch k {
		case "cpu":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 1 {
				return w, fmt.Errorf("hypervisor: workload cpu=%q: want a fraction 0–1", v)
			}
			w.CPU = f
		case "fill", "text":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 1 {
				return w, fmt.Errorf("hypervisor: workload %s=%q: want a fraction 0–1", k, v)
			}
			if k == "fill" {
				w.Fill = f
			} else {
				w.Text = f
			}
		case "dirty", "net":
			n, err := units.ParseBytes(strings.TrimSuffix(v, "/s"))
			if err != nil {
				return w, fmt.Errorf("hypervisor: workload %s=%q: %v", k, v, err)
			}
			if k == "dirty" {
				w.Dirty = float64(n)
			} else {
				w.Net = float64(n)
			}
		default:
			return w, fmt.Errorf("hypervisor: workload key %q: want cpu, dirty, net, fill or text", k)
		}
	}
	return w, nil
}
