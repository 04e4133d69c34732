// Command ferry is Ferry's single binary: the management center, the host
// agents, the admin CLI and the operator tools are its subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ferry-vm/ferry/internal/termsafe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		printError(os.Stderr, err)
		stop()
		os.Exit(exitCode(err))
	}
}

// printError prints a command's error. Errors can quote the MMC, which
// can quote an agent: escaped. A usage error is Ferry's own text in
// lines (the message, a suggestion, where to find help), each escaped.
func printError(w io.Writer, err error) {
	var u *usageError
	if errors.As(err, &u) {
		for i, line := range strings.Split(u.msg, "\n") {
			if i == 0 {
				line = "ferry: " + line
			}
			fmt.Fprintln(w, termsafe.String(line))
		}
		return
	}
	fmt.Fprintln(w, "ferry:", termsafe.String(err.Error()))
}
