package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// usageError is a command line that names no command or flag Ferry has:
// the process exits with status 2 (as flag parsing does in Go's own
// tools) and the message says what to run instead, so that a script's
// typo fails loudly instead of printing help and succeeding.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// exitCode is the process status for a command's error.
func exitCode(err error) int {
	var u *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &u):
		return 2
	default:
		return 1
	}
}

// strictGroups makes wrong flags and arguments usage errors, and every
// command that only groups others (no Run of its own) refuse an unknown
// subcommand. Cobra prints such a group's help and
// succeeds whatever follows it ("ferry ctl agentz" exited 0).
func strictGroups(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{fmt.Sprintf("%v\nRun '%s --help' for usage.", err, c.CommandPath())}
	})
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if check := c.Args; check != nil {
			// Wrong arguments are a usage error too ("ferry ctl
			// migrate" without a VM).
			c.Args = func(c *cobra.Command, args []string) error {
				if err := check(c, args); err != nil {
					return &usageError{fmt.Sprintf("%v\nRun '%s --help' for usage.", err, c.CommandPath())}
				}
				return nil
			}
		}
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) == 0 {
					return c.Help()
				}
				return unknownCommand(c, args[0])
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

func unknownCommand(c *cobra.Command, name string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "unknown command %q for %q", name, c.CommandPath())
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2 // cobra's own default, applied only on its path
	}
	if s := c.SuggestionsFor(name); len(s) > 0 {
		fmt.Fprintf(&b, "\nDid you mean %s?", strings.Join(s, " or "))
	}
	fmt.Fprintf(&b, "\nRun '%s --help' for usage.", c.CommandPath())
	return &usageError{b.String()}
}
