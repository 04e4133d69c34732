package wanlab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// isEmulator reports whether pid is alive and is the emulator of lab name:
// its command line ends in `run NAME` and its environment marks it.
func isEmulator(pid int, name string) bool {
	if pid <= 0 || pid == os.Getpid() || !alive(pid) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) < 3 || args[len(args)-2] != "run" || args[len(args)-1] != name {
		return false
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if errors.Is(err, os.ErrPermission) {
		return true // not root (status only): the command line must do
	}
	if err != nil {
		return false
	}
	return slices.ContainsFunc(bytes.Split(env, []byte{0}), func(b []byte) bool { return string(b) == ChildEnv+"="+name })
}

// emulatorPids scans /proc for emulators of lab name (there should be at
// most one; after a crash of `up` the pid file may be missing).
func emulatorPids(name string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if isEmulator(pid, name) {
			out = append(out, pid)
		}
	}
	return out
}

// procStat returns the fields of /proc/pid/stat after the command name
// (which is in parentheses and may contain spaces or parentheses itself):
// f[0] is the state, f[19] the start time.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	f := procStat(pid)
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// startTime is when pid started (clock ticks since boot), 0 if unknown; with
// the pid it identifies a process across pid reuse.
func startTime(pid int) uint64 {
	f := procStat(pid)
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// sameProcess reports whether pid is still the live process that started at
// start — also while it exits, when its command line already reads empty.
func sameProcess(pid int, start uint64) bool {
	return pid > 0 && start != 0 && pid != os.Getpid() && alive(pid) && startTime(pid) == start
}

// killAll sends SIGTERM, waits up to 2 s, then SIGKILLs what is left and
// waits for it to be gone. It never signals this process.
func killAll(pids []int) error {
	self := os.Getpid()
	pids = slices.DeleteFunc(slices.Clone(pids), func(p int) bool { return p == self || p <= 1 })
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	if waitGone(pids, 2*time.Second) {
		return nil
	}
	for _, p := range pids {
		if alive(p) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if waitGone(pids, 3*time.Second) {
		return nil
	}
	var left []int
	for _, p := range pids {
		if alive(p) {
			left = append(left, p)
		}
	}
	return fmt.Errorf("processes %v did not exit", left)
}

func waitGone(pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		gone := true
		for _, p := range pids {
			if alive(p) {
				gone = false
				break
			}
		}
		if gone {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func appendUnique(s []int, v int) []int {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}
