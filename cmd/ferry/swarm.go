package main

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/agent"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
)

// newSwarmCmd runs many agents in one process, to measure how many one MMC
// serves (docs/BENCHMARKS.md). Each has its own key, data directory, UDP
// socket (spread over 127.0.0.0/8 source addresses, so the MMC's
// per-source handshake limit sees many sources, as it would in a data
// centre) and session; host stats are synthetic so that the load generator
// does not measure its own machine thousands of times a second.
func newSwarmCmd(g *globalFlags) *cobra.Command {
	var (
		n                  int
		dir, bundle, token string
		interval           time.Duration
		rate               int
		standby            bool
	)
	cmd := &cobra.Command{
		Use:    "swarm",
		Short:  "Run many lightweight agents in one process (benchmarking)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := identity.ParseBundle(bundle)
			if err != nil {
				return err
			}
			ctx, stop := withSignals(cmd.Context())
			defer stop()
			log := g.logger()
			var online atomic.Int64
			var wg sync.WaitGroup
			tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
			defer tick.Stop()
			for i := 0; i < n; i++ {
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
				if ctx.Err() != nil {
					break
				}
				src := netip.AddrFrom4([4]byte{127, byte(1 + i/(250*250)%250), byte(1 + i/250%250), byte(1 + i%250)})
				name := fmt.Sprintf("swarm-%05d", i)
				a, err := agent.New(agent.Config{
					DataDir: filepath.Join(dir, name), Bundle: b, Token: token, Name: name, Site: "swarm",
					Listen:         netip.AddrPortFrom(src, 0).String(),
					Facts:          identity.Overrides{Hostname: name, DiskID: "disk-" + name, MachineID: name, MACs: []string{fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))}},
					ReportInterval: interval, TimeSyncInterval: time.Hour,
					HostStats: func() message.HostStats {
						return message.HostStats{CPU: rand.Float64(), Mem: rand.Float64(), Cores: 32, MemSize: 256 << 30}
					},
					Logger:       slog.New(slog.DiscardHandler),
					SmallBuffers: true, VolatileEvents: true, NoStandby: !standby,
				})
				if err != nil {
					return err
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					online.Add(1)
					if err := a.Run(ctx); err != nil {
						log.Warn("swarm: agent stopped", "agent", name, "err", err)
					}
					online.Add(-1)
				}()
				if (i+1)%1000 == 0 {
					fmt.Fprintf(os.Stderr, "swarm: %d agents started\n", i+1)
				}
			}
			fmt.Fprintf(os.Stderr, "swarm: all %d agents started\n", n)
			<-ctx.Done()
			wg.Wait()
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&n, "count", 1000, "agents")
	f.StringVar(&dir, "data-dir", "", "parent of the agents' data directories")
	f.StringVar(&bundle, "bundle", "", "bootstrap bundle")
	f.StringVar(&token, "token", "", "join token with enough uses")
	f.DurationVar(&interval, "report-interval", 5*time.Second, "report interval")
	f.IntVar(&rate, "rate", 200, "agents started per second")
	f.BoolVar(&standby, "standby", true, "keep a standby session at a second MMC member, as agents do")
	return cmd
}
