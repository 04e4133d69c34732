package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/termsafe"
)

// version is set at build time with -ldflags "-X main.version=...";
// commit and built too where the toolchain's VCS stamp is missing (a
// build outside a git clone, or with -buildvcs=false): scripts/package.sh
// sets all three.
var version, commit, built = "dev", "", ""

type globalFlags struct {
	// level is the loggers' level: --log-level, changed by a reload.
	level      slog.LevelVar
	logLevel   string
	logFormat  string
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
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text (key=value) or json (one object per line, for log collectors)")
	root.PersistentFlags().StringVar(&g.cpuProfile, "cpuprofile", "", "write a CPU profile to this file (for performance work)")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	var profFile *os.File
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if g.logFormat != "text" && g.logFormat != "json" {
			return fmt.Errorf("--log-format %q: want text or json", g.logFormat)
		}
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
// (TestLogLinesEscapeNetworkStrings). The JSON handler escapes C0
// controls (\u001b) but writes C1 controls and bidi overrides raw:
// jsonSafe escapes those too.
func (g *globalFlags) loggerTo(w io.Writer) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	g.level.Set(lvl)
	opts := &slog.HandlerOptions{Level: &g.level}
	if g.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(jsonSafe{w}, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// jsonSafe writes JSON log records with every unprintable rune escaped
// (termsafe.JSON); slog writes one record per Write.
type jsonSafe struct{ w io.Writer }

func (j jsonSafe) Write(p []byte) (int, error) {
	if _, err := j.w.Write(termsafe.JSON(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
