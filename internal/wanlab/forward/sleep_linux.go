package forward

import (
	"time"

	"golang.org/x/sys/unix"
)

// tuneThread sets the calling (locked) thread's timer slack to 1 ns, so that
// nanosleep is not rounded up by the default 50 µs slack.
func tuneThread() { _ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0) }

// preciseSleep blocks the thread in clock_nanosleep (no 1 ms Go timer
// rounding).
func preciseSleep(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_ = unix.Nanosleep(&ts, nil) // EINTR: the caller re-checks the time
}
