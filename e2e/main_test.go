// Package e2e runs Ferry's binaries as real processes talking over real
// sockets, as an operator would.
package e2e

import (
	"fmt"
	"github.com/ferry-vm/ferry/internal/hypervisor/sim"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// ferryBin is the binary under test, built once for the package.
var ferryBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ferryBin = filepath.Join(dir, "ferry")
	build := exec.Command("go", "build", "-o", ferryBin, "github.com/ferry-vm/ferry/cmd/ferry")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building ferry:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func simDriver(dir string) (*sim.Driver, error) { return sim.New(dir, ferryBin) }
