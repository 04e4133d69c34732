package qemu

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// cpuSample is one reading of a VM's counters, kept to turn the next
// reading into rates.
type cpuSample struct {
	at     time.Time
	cpu    float64 // seconds of CPU the QEMU process used
	tx, rx uint64  // bytes through its tap devices
}

// clockTicks is USER_HZ, which Linux fixes at 100 for /proc.
const clockTicks = 100

// Stats implements hypervisor.Driver: CPU from the QEMU process's
// accounting (the vCPU threads and QEMU's own), memory the process has
// resident, network from the VM's tap devices, and the guest's dirty
// rate from QEMU's sampling estimate (calc-dirty-rate, one second).
func (d *Driver) Stats(ctx context.Context, id string) (hypervisor.Stats, error) {
	s, err := d.spec(id)
	if err != nil {
		return hypervisor.Stats{}, err
	}
	pid := d.pid(id)
	if pid == 0 {
		return hypervisor.Stats{}, fmt.Errorf("qemu: VM %s is not running", id)
	}
	now := time.Now()
	cur := cpuSample{at: now}
	if cur.cpu, err = processCPU(pid); err != nil {
		return hypervisor.Stats{}, err
	}
	for _, n := range s.NICs {
		if n.Tap != "" {
			cur.tx += readUint(fmt.Sprintf("/sys/class/net/%s/statistics/rx_bytes", n.Tap)) // the tap's rx is the guest's tx
			cur.rx += readUint(fmt.Sprintf("/sys/class/net/%s/statistics/tx_bytes", n.Tap))
		}
	}
	st := hypervisor.Stats{MemTotal: s.Memory, MemUsed: min(processRSS(pid), s.Memory)}
	d.mu.Lock()
	prev, ok := d.cpu[id]
	d.cpu[id] = cur
	d.mu.Unlock()
	if ok {
		if dt := now.Sub(prev.at).Seconds(); dt > 0 {
			st.CPU = min(max((cur.cpu-prev.cpu)/dt/float64(max(s.VCPUs, 1)), 0), 1)
			st.NetTx = float64(cur.tx-min(prev.tx, cur.tx)) / dt
			st.NetRx = float64(cur.rx-min(prev.rx, cur.rx)) / dt
		}
	}
	st.Dirty = d.dirtyRate(ctx, id)
	return st, nil
}

// dirtyRate reads QEMU's last dirty-rate measurement and starts the next
// (they take a second; one runs per Stats call at most). 0 if unknown.
func (d *Driver) dirtyRate(ctx context.Context, id string) float64 {
	var r struct {
		Status    string `json:"status"`
		DirtyRate int64  `json:"dirty-rate"` // MiB/s
	}
	var rate float64
	_ = d.qmp(ctx, id, func(q *qmpConn) error {
		if err := q.run("query-dirty-rate", nil, &r, nil); err != nil {
			return err
		}
		if r.Status == "measured" {
			rate = float64(r.DirtyRate) * (1 << 20)
		}
		if r.Status != "measuring" {
			return q.run("calc-dirty-rate", map[string]any{"calc-time": 1}, nil, nil)
		}
		return nil
	})
	return rate
}

// processCPU is the CPU time (s) process pid used, from /proc/pid/stat.
func processCPU(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("qemu: %w", err)
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("qemu: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("qemu: malformed /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("qemu: malformed /proc/%d/stat", pid)
	}
	return float64(utime+stime) / clockTicks, nil
}

// processRSS is process pid's resident memory in bytes.
func processRSS(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func readUint(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}
