// Package netns manages named network namespaces the way iproute2 does
// (bind mounts under /run/netns), and runs Go code inside one of them.
//
// Everything goes through `ip netns …` except Do, which moves the calling
// OS thread into a namespace with setns(2): sockets and TUN devices opened
// by fn belong to that namespace and stay there after Do returns, so one
// process can hold devices in several namespaces.
package netns

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is where iproute2 keeps the named namespaces.
const Dir = "/run/netns"

// Path returns the bind-mount path of the namespace name.
func Path(name string) string { return filepath.Join(Dir, name) }

// Exists reports whether the named namespace exists.
func Exists(name string) bool {
	_, err := os.Stat(Path(name))
	return err == nil
}

// List returns the names of all named namespaces.
func List() ([]string, error) {
	ents, err := os.ReadDir(Dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// Add creates the namespace and brings its loopback up.
func Add(name string) error {
	if err := IP("netns", "add", name); err != nil {
		return err
	}
	return IP("-n", name, "link", "set", "lo", "up")
}

// Delete removes the namespace; a namespace that does not exist is not an
// error.
func Delete(name string) error {
	if !Exists(name) {
		return nil
	}
	err := IP("netns", "delete", name)
	if err != nil && !Exists(name) {
		return nil
	}
	return err
}

// Pids returns the processes whose network namespace is name.
func Pids(name string) ([]int, error) {
	if !Exists(name) {
		return nil, nil
	}
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns pids %s: %w", name, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// IP runs the ip command with args and returns its stderr in the error.
func IP(args ...string) error {
	return Cmd("ip", args...)
}

// Cmd runs a command and returns its combined output in the error.
func Cmd(prog string, args ...string) error {
	return CmdInput(nil, prog, args...)
}

// CmdInput runs a command with stdin and returns its output in the error.
func CmdInput(stdin []byte, prog string, args ...string) error {
	cmd := exec.Command(prog, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Exec runs prog inside the namespace (ip netns exec) with stdin.
func Exec(name string, stdin []byte, prog string, args ...string) error {
	return CmdInput(stdin, "ip", append([]string{"netns", "exec", name, prog}, args...)...)
}

// Do runs fn with the calling goroutine locked to an OS thread that is in
// the named namespace. Sockets and devices fn opens live in that namespace.
// If the thread cannot be moved back, it is left locked so that the Go
// runtime discards it when the goroutine ends.
func Do(name string, fn func() error) error {
	target, err := os.Open(Path(name))
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	defer func() {
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}
