// Command ferry is Ferry's single binary: the management center, the host
// agents, the admin CLI and the operator tools are its subcommands.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-vm/ferry/internal/termsafe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		printError(os.Stderr, err)
		os.Exit(1)
	}
}

// printError prints a command's error. Errors can quote the MMC, which
// can quote an agent: escaped.
func printError(w io.Writer, err error) {
	fmt.Fprintln(w, "ferry:", termsafe.String(err.Error()))
}
