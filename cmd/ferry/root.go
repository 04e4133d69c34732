package main

import (
	"io"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type globalFlags struct {
	logLevel   string
	cpuProfile string
}

func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Secure off-site live migration of virtual machines",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.cpuProfile, "cpuprofile", "", "write a CPU profile to this file (for performance work)")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	var profFile *os.File
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if g.cpuProfile == "" {
			return nil
		}
		f, err := os.Create(g.cpuProfile)
		if err != nil {
			return err
		}
		profFile = f
		return pprof.StartCPUProfile(f)
	}
	root.PersistentPostRun = func(*cobra.Command, []string) {
		if profFile != nil {
			pprof.StopCPUProfile()
			profFile.Close()
		}
	}
	root.AddCommand(newPerfCmd(g), newMMCCmd(g), newAgentCmd(g), newCtlCmd(), newSimVMCmd(g), newRelayCmd(g), newSwarmCmd(g), newDemoCmd(), newVersionCmd())
	strictGroups(root)
	return root
}

// logger writes structured logs to stderr, so stdout stays for results.
func (g *globalFlags) logger() *slog.Logger { return g.loggerTo(os.Stderr) }

// loggerTo is logger writing to w. slog's text handler quotes any value
// (and message) holding a space, '"', '=' or a rune that is not printable
// — controls, ESC, C1, bidi overrides — with strconv.Quote, so strings an
// agent sent cannot drive the terminal a log is watched on
// (TestLogLinesEscapeNetworkStrings).
func (g *globalFlags) loggerTo(w io.Writer) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}
