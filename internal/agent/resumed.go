package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A destination agent records, durably and before it resumes an incoming
// copy, that it is about to: once a migration is armed the MMC may no
// longer roll back on its own judgement, and an agent that restarted (its
// jobs gone) can then still say whether its copy may have run. Without the
// record a failed copy has certainly never run, and the MMC may resume the
// source.

// resumedKeep is how long the records are kept: far longer than any
// migration's switch-over.
const resumedKeep = 7 * 24 * time.Hour

func (a *Agent) resumedPath(id string) string {
	return filepath.Join(a.cfg.DataDir, "migrations", id+".resumed")
}

// markResuming records that the copy of migration id may run from now on.
func (a *Agent) markResuming(id string) error {
	if a.cfg.DataDir == "" {
		return nil // mayHaveResumed answers yes for every copy then
	}
	p := a.resumedPath(id)
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("agent: recording a resume: %w", err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("agent: recording a resume: %w", err)
	}
	_, werr := f.WriteString(time.Now().UTC().Format(time.RFC3339Nano) + "\n")
	serr := f.Sync()
	if err := errors.Join(werr, serr, f.Close()); err != nil {
		return fmt.Errorf("agent: recording a resume: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("agent: recording a resume: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("agent: recording a resume: %w", err)
	}
	return nil
}

// mayHaveResumed reports whether this agent may have resumed the copy of
// migration id (it cannot tell without a data directory).
func (a *Agent) mayHaveResumed(id string) bool {
	if a.cfg.DataDir == "" {
		return true
	}
	_, err := os.Stat(a.resumedPath(id))
	return !errors.Is(err, fs.ErrNotExist)
}

// pruneResumed drops the records older than resumedKeep.
func (a *Agent) pruneResumed(now time.Time) {
	if a.cfg.DataDir == "" {
		return
	}
	dir := filepath.Join(a.cfg.DataDir, "migrations")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".resumed") {
			continue
		}
		if info, err := e.Info(); err == nil && now.Sub(info.ModTime()) > resumedKeep {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
