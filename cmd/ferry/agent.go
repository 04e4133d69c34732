package main

import (
	"errors"
	"fmt"
	"github.com/shirou/gopsutil/v4/mem"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/agent"
	"github.com/ferry-vm/ferry/internal/hypervisor/libvirt"
	"github.com/ferry-vm/ferry/internal/hypervisor/qemu"
	"github.com/ferry-vm/ferry/internal/hypervisor/sim"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/units"
)

const defaultAgentDir = "/var/lib/ferry/agent"

func newAgentCmd(g *globalFlags) *cobra.Command {
	var (
		cfg                       agent.Config
		bundle, bundleFile, token string
		tokenFile, metricsAddr    string
		driver, qemuBin           string
		accel, cpuModel           string
		libvirtURI                string
		libvirtShared             bool
		macs, simHost             string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a host's monitor and migration agent",
		Long: `Run the agent of one hypervisor host.

It enrols with the MMC named in the bootstrap bundle (pending until an
administrator approves it with 'ferry ctl agents approve ID', or approved at
once with a valid --token), then keeps an authenticated session open.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := g.logger()
			switch driver {
			case "sim":
				d, err := sim.New(filepath.Join(cfg.DataDir, "vms"), "")
				if err != nil {
					return err
				}
				cfg.Driver = d
			case "qemu":
				d, err := qemu.New(filepath.Join(cfg.DataDir, "qemu"), qemuBin)
				if err != nil {
					return err
				}
				var kvmErr error
				if accel != qemu.AccelTCG {
					kvmErr = qemu.ProbeKVM()
				}
				a, fellBack, err := qemu.ChooseAccel(accel, kvmErr)
				if err != nil {
					return err
				}
				if fellBack {
					log.Warn("qemu: KVM does not work here; guests run under TCG (emulation)", "err", kvmErr)
				}
				if err := qemu.CheckCPUModel(cpuModel); err != nil {
					return err
				}
				d.Accel, d.CPU = a, cpuModel
				log.Info("qemu: accelerator", "accel", a, "cpu", cpuModel)
				cfg.Driver = d
			case "libvirt":
				d, err := libvirt.New(cmd.Context(), libvirt.Config{URI: libvirtURI, SharedStorage: libvirtShared, Logger: log})
				if err != nil {
					return err
				}
				defer d.Close()
				cfg.Driver = d
			default:
				return fmt.Errorf("--driver must be sim, qemu or libvirt")
			}
			if bundleFile != "" {
				b, err := os.ReadFile(bundleFile)
				if err != nil {
					return err
				}
				bundle = string(b)
			}
			if bundle == "" {
				bundle = os.Getenv("FERRY_BUNDLE")
			}
			if bundle == "" {
				return errors.New("no bundle: pass --bundle (the line 'ferry mmc bundle' prints) or --bundle-file")
			}
			b, err := identity.ParseBundle(bundle)
			if err != nil {
				return err
			}
			if tokenFile != "" {
				t, err := identity.ReadSecretFile(tokenFile)
				if err != nil {
					return err
				}
				token = strings.TrimSpace(string(t))
			}
			if token == "" {
				token = os.Getenv("FERRY_JOIN_TOKEN")
			}
			// --name names the host: it is the hostname the MMC records.
			cfg.Facts.Hostname = cfg.Name
			if macs != "" {
				cfg.Facts.MACs = strings.Split(macs, ",")
			}
			switch {
			case simHost == "real":
			case simHost != "":
				m, err := parseHostModel(simHost)
				if err != nil {
					return err
				}
				cfg.HostModel = m
			case driver == "sim":
				// Simulated hosts often share one machine: each reports
				// the load of its own VMs on a host the machine's size,
				// not the machine's (which every one of them would
				// report alike, hiding which has room).
				cfg.HostModel = machineSizedModel()
			}
			cfg.Bundle, cfg.Token, cfg.Logger, cfg.Version = b, token, log, readBuildVersion().Version
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := withSignals(cmd.Context())
			defer stop()
			if metricsAddr != "" {
				cs := append([]prometheus.Collector{}, a.Collectors()...)
				stopMetrics, err := serveMetrics(ctx, metricsAddr, cs, cfg.Logger, a.Ready)
				if err != nil {
					return err
				}
				defer stopMetrics()
			}
			addrs := make([]string, len(b.MMCs))
			for i, m := range b.MMCs {
				addrs[i] = m.Addr
			}
			fmt.Fprintf(os.Stderr, "ferry agent %s: connecting to %s\n", a.ID(), strings.Join(addrs, ", "))
			return a.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", defaultAgentDir, "state directory (key, registration code)")
	f.StringVar(&bundle, "bundle", "", "bootstrap bundle from 'ferry mmc bundle' (or $FERRY_BUNDLE)")
	f.StringVar(&bundleFile, "bundle-file", "", "read the bundle from this file")
	f.StringVar(&token, "token", "", "join token from 'ferry ctl tokens create' (or $FERRY_JOIN_TOKEN): approve at once")
	f.StringVar(&tokenFile, "token-file", "", "read the join token from this file (mode 0600)")
	f.StringVar(&driver, "driver", "sim", "hypervisor driver: sim, qemu or libvirt")
	f.StringVar(&qemuBin, "qemu", "qemu-system-x86_64", "the QEMU binary (--driver qemu)")
	f.StringVar(&accel, "accel", qemu.AccelTCG, "QEMU accelerator (--driver qemu): kvm, tcg or auto (KVM where it works, else TCG)")
	f.StringVar(&cpuModel, "cpu", "", "QEMU CPU model (--driver qemu), e.g. qemu64 or Haswell-v4; the same on every host a VM migrates between (default: QEMU's)")
	f.StringVar(&libvirtURI, "libvirt-uri", "qemu:///system", "the local libvirtd (--driver libvirt): qemu:///system or qemu+unix:///system?socket=PATH")
	f.BoolVar(&libvirtShared, "libvirt-shared-storage", false, "domains' disks are on storage every host sees at the same paths: migrate memory only (--driver libvirt)")
	f.StringVar(&cfg.Name, "name", "", "host name shown at the MMC (default: hostname)")
	f.StringVar(&cfg.Site, "site", "default", "site (data centre) label")
	f.StringVar(&cfg.Listen, "listen", ":0", "local UDP address")
	f.StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics on this TCP address")
	f.DurationVar(&cfg.ClockAlarm, "clock-alarm", time.Second, "alarm when the clock offset to the MMC exceeds this")
	f.DurationVar(&cfg.TimeSyncInterval, "time-sync-interval", time.Minute, "how often to measure the clock offset")
	f.DurationVar(&cfg.ReportInterval, "report-interval", 5*time.Second, "how often the monitor reports host and VM load")
	// Simulated hosts share one machine: let them present distinct facts.
	f.StringVar(&cfg.Facts.DiskID, "disk-id", "", "override the disk id (simulated hosts)")
	f.StringVar(&cfg.Facts.MachineID, "machine-id", "", "override the machine id (simulated hosts)")
	f.StringVar(&macs, "macs", "", "override the MAC addresses, comma-separated (simulated hosts)")
	f.StringVar(&simHost, "sim-host", "", "the host's load as reported: a simulated machine loaded by its VMs only, e.g. cores=4,memory=8GiB (default with --driver sim: this machine's size), or real (this machine's measured load)")
	f.BoolVar(&cfg.NoRateResume, "no-rate-resume", false, "start every migration link from its initial window, not from the last link's rate over the same path (to measure what resuming gains)")
	for _, h := range []string{"disk-id", "machine-id", "macs", "no-rate-resume"} {
		_ = f.MarkHidden(h)
	}
	withConfigFile(cmd)
	return cmd
}

// machineSizedModel is a simulated host the size of this machine.
func machineSizedModel() *agent.HostModel {
	m := &agent.HostModel{Cores: runtime.NumCPU()}
	if vm, err := mem.VirtualMemory(); err == nil {
		m.Memory = vm.Total
	}
	return m
}

// parseHostModel reads --sim-host "cores=N,memory=SIZE".
func parseHostModel(s string) (*agent.HostModel, error) {
	m := &agent.HostModel{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		switch k {
		case "cores":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("--sim-host cores=%q: want a positive number", v)
			}
			m.Cores = n
		case "memory":
			n, err := units.ParseBytes(v)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("--sim-host memory=%q: want a size such as 8GiB", v)
			}
			m.Memory = n
		default:
			return nil, fmt.Errorf("--sim-host: unknown key %q (want cores and memory)", k)
		}
	}
	if m.Cores == 0 || m.Memory == 0 {
		return nil, errors.New("--sim-host needs cores and memory, e.g. cores=4,memory=8GiB")
	}
	return m, nil
}
