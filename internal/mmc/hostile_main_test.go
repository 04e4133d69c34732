//go:build linux

package mmc

import (
	"fmt"
	"os"
	"testing"
)

// TestMain runs the package's tests, or, re-executed by
// BenchmarkHostilePeer, the MMC it measures or the hostile peer.
func TestMain(m *testing.M) {
	if dir := os.Getenv(hostileChildEnv); dir != "" {
		if err := hostileChildMain(dir); err != nil {
			fmt.Fprintln(os.Stderr, "child MMC:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if bundle := os.Getenv(hostileFlooderEnv); bundle != "" {
		if err := hostileFlooderMain(bundle); err != nil {
			fmt.Fprintln(os.Stderr, "flooder:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
