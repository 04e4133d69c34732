// Command wanlab builds emulated WANs on this machine: two sites (network
// namespaces) joined by a user-space emulated link, optionally behind NAT
// routers. See `wanlab --help` and ../../shared/CLI.md ("WAN lab").
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-vm/ferry/internal/wanlab"
)

func main() {
	// `wanlab up` re-executes this binary as the lab's emulator.
	wanlab.MaybeRunChild()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "wanlab:", err)
		os.Exit(1)
	}
}
