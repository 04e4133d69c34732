// Package e2e runs Ferry's binaries as real processes talking over real
// sockets, as an operator would.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ferry-vm/ferry/internal/hypervisor/sim"
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
	// wanlab beside ferry: `ferry demo --wan` looks for it there.
	for _, b := range []string{"ferry", "wanlab"} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, b), "github.com/ferry-vm/ferry/cmd/"+b)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building %s: %v\n", b, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func simDriver(dir string) (*sim.Driver, error) { return sim.New(dir, ferryBin) }
