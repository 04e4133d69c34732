//go:build !linux

package forward

import "time"

func tuneThread() {}

func preciseSleep(d time.Duration) { time.Sleep(d) }
