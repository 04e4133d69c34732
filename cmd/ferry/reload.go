package main

import (
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferry-vm/ferry/internal/mmc"
)

// reloadableMMC are the settings SIGHUP re-reads from the MMC's --config
// file: those that change what is logged and kept, never who may talk
// to whom (addresses, keys, TLS and timeouts need a restart).
var reloadableMMC = []string{"log-level", "audit-max-age", "audit-max-entries", "events-max-age", "records-max-age"}

// reloadMMC re-reads the reloadable settings from path and puts them in
// force; a setting given on the command line keeps its value, as at
// start, and one the file no longer names keeps the value in force. A
// file that does not parse, or a bad value, changes nothing.
func reloadMMC(cmd *cobra.Command, g *globalFlags, srv *mmc.Server, path string, log *slog.Logger) {
	onLine := strings.Split(cmd.Annotations[annotationCommandLine], ",")
	fs := pflag.NewFlagSet("reload", pflag.ContinueOnError)
	fs.String("log-level", g.logLevel, "")
	for _, name := range []string{"audit-max-age", "events-max-age", "records-max-age"} {
		d, _ := cmd.Flags().GetDuration(name)
		fs.Duration(name, d, "")
	}
	n, _ := cmd.Flags().GetInt("audit-max-entries")
	fs.Int("audit-max-entries", n, "")
	if err := applyConfig(fs, path, false); err != nil {
		log.Error("mmc: reload: configuration unchanged", "err", err)
		return
	}
	value := func(name string) string {
		if slices.Contains(onLine, name) {
			if name == "log-level" {
				return g.logLevel
			}
			return cmd.Flags().Lookup(name).Value.String()
		}
		return fs.Lookup(name).Value.String()
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(value("log-level"))); err != nil {
		log.Error("mmc: reload: configuration unchanged", "err", "log-level: "+err.Error())
		return
	}
	var r mmc.Retention
	var err error
	for name, d := range map[string]*time.Duration{"audit-max-age": &r.AuditMaxAge, "events-max-age": &r.EventsMaxAge, "records-max-age": &r.RecordsMaxAge} {
		if *d, err = time.ParseDuration(value(name)); err != nil {
			log.Error("mmc: reload: configuration unchanged", "err", name+": "+err.Error())
			return
		}
	}
	if r.AuditMaxEntries, err = strconv.Atoi(value("audit-max-entries")); err != nil {
		log.Error("mmc: reload: configuration unchanged", "err", "audit-max-entries: "+err.Error())
		return
	}
	for _, name := range reloadableMMC[1:] {
		_ = cmd.Flags().Set(name, value(name))
	}
	g.logLevel = value("log-level")
	g.level.Set(lvl)
	srv.SetRetention(r)
	log.Info("mmc: configuration reloaded", "file", path, "log_level", lvl.String())
}
