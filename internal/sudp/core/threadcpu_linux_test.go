//go:build linux

package core

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU returns the CPU time the calling OS thread has used; the caller
// holds runtime.LockOSThread, so it is the calling goroutine's CPU time
// (plus any GC assist charged to it, which is part of what its work costs).
// Unlike wall time it does not grow when other processes share the cores.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// threadCPUExact says threadCPU measures this thread only.
const threadCPUExact = true
