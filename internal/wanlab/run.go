package wanlab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// MaybeRunChild turns this process into a lab's emulator if Up started it
// (ChildEnv is set): it runs until SIGTERM and exits. Call it first thing
// in main, and in TestMain of any test binary that calls Up, because Up
// re-executes os.Executable().
func MaybeRunChild() {
	name := os.Getenv(ChildEnv)
	if name == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, name); err != nil {
		fmt.Fprintln(os.Stderr, "wanlab run:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Run is the emulator of lab name (`wanlab run NAME`): it opens wan0 in
// both WAN namespaces, forwards between them until ctx ends and rewrites
// stats.json every StatsInterval. If started by Up it reports readiness
// (or its error) on file descriptor 3.
func Run(ctx context.Context, name string) (err error) {
	var ready *os.File
	if os.Getenv(ChildEnv) == name {
		ready = os.NewFile(readyFD, "ready")
	}
	defer func() {
		if ready != nil {
			if err != nil {
				fmt.Fprintf(ready, "error: %v\n", err)
			}
			ready.Close()
		}
	}()
	st, err := readState(name)
	if err != nil {
		return fmt.Errorf("lab %s: %w", name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	em, err := newEmulator(ctx, st)
	if err != nil {
		return err
	}
	defer em.Close()
	statsPath := filepath.Join(labDir(name), statsFile)
	if err := writeStats(statsPath, em.Snapshot()); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%s wanlab %s: link up (pid %d)\n", time.Now().Format(time.RFC3339), name, os.Getpid())
	if ready != nil {
		fmt.Fprintln(ready, "ready")
		ready.Close()
		ready = nil
	}
	tick := time.NewTicker(StatsInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = writeStats(statsPath, em.Snapshot())
			return nil
		case err := <-em.Done():
			_ = writeStats(statsPath, em.Snapshot())
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("forwarder: %w", err)
			}
			return nil
		case <-tick.C:
			if err := writeStats(statsPath, em.Snapshot()); err != nil {
				fmt.Fprintln(os.Stderr, "wanlab: writing stats:", err)
			}
		}
	}
}

// statsSnapshot is the content of stats.json (see LinkStatus).
type statsSnapshot struct {
	AB      any       `json:"ab"`
	BA      any       `json:"ba"`
	Hub     any       `json:"hub,omitempty"`
	Config  any       `json:"config"`
	Forward any       `json:"forward,omitempty"`
	Updated time.Time `json:"updated"`
}

func writeStats(path string, s statsSnapshot) error {
	s.Updated = time.Now().UTC()
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}
