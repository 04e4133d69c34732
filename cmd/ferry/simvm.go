package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/simvm"
)

// newSimVMCmd is the simulated VM process the sim driver starts (one per
// VM, as QEMU is one process per VM). Not meant to be run by hand.
func newSimVMCmd(g *globalFlags) *cobra.Command {
	var cfg simvm.Config
	var workload string
	cmd := &cobra.Command{
		Use:    "simvm",
		Short:  "Run one simulated VM (started by the sim driver)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Socket == "" || cfg.ID == "" {
				return fmt.Errorf("simvm: --id and --socket are required")
			}
			if workload != "" {
				if err := json.Unmarshal([]byte(workload), &cfg.Workload); err != nil {
					return fmt.Errorf("simvm: --workload-json: %w", err)
				}
			}
			if cfg.Workload.CPU < 0 || cfg.Workload.CPU > 1 || cfg.Workload.Dirty < 0 || cfg.Workload.Net < 0 {
				return fmt.Errorf("simvm: invalid workload %+v", cfg.Workload)
			}
			cfg.Logger = g.logger()
			ctx, stop := withSignals(cmd.Context())
			defer stop()
			return simvm.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ID, "id", "", "VM id")
	f.StringVar(&cfg.Name, "name", "", "VM name")
	f.Uint64Var(&cfg.Memory, "memory", 256<<20, "guest memory in bytes")
	f.IntVar(&cfg.VCPUs, "vcpus", 1, "virtual CPUs")
	f.StringVar(&cfg.Socket, "socket", "", "control socket path")
	f.StringVar(&workload, "workload-json", "", "initial workload as JSON")
	f.BoolVar(&cfg.Incoming, "incoming", false, "start paused with no memory, waiting for an incoming migration (migrate-incoming)")
	return cmd
}
