package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildVersion is what `ferry version` reports: the main module's version
// (a tag, or "(devel)" for a plain build), the commit and whether the tree
// had changes, from the build information the Go toolchain records, and
// the Go version it was built with.
type buildVersion struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	// Built is the commit's time (the VCS stamp's): a build date that
	// the same source always reproduces.
	Built string `json:"built,omitempty"`
	Go    string `json:"go"`
}

func readBuildVersion() buildVersion {
	v := buildVersion{Version: version, Commit: commit, Built: built, Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if v.Version == "dev" && bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		case "vcs.time":
			v.Built = s.Value
		}
	}
	return v
}

func newVersionCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print Ferry's version, commit (and its time) and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := readBuildVersion()
			switch output {
			case "json":
				return printJSON(cmd.OutOrStdout(), v)
			case "table":
				commit := v.Commit
				if commit == "" {
					commit = "unknown"
				} else if v.Modified {
					commit += " (modified)"
				}
				if v.Built != "" {
					commit += ", " + v.Built
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "ferry %s\ncommit %s\n%s\n", v.Version, commit, v.Go)
				return err
			default:
				return &usageError{"-o must be table or json"}
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return cmd
}
