//go:build !linux

package core

import "time"

var cpuEpoch = time.Now()

// threadCPU falls back to wall time where no per-thread clock is used; the
// CPU bound is then only checked loosely (threadCPUExact).
func threadCPU() time.Duration { return time.Since(cpuEpoch) }

const threadCPUExact = false
