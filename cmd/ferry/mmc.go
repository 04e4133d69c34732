package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/mmc"
)

// defaultMMCDir is where an MMC keeps its state when --data-dir is not given.
const defaultMMCDir = "/var/lib/ferry/mmc"

func newMMCCmd(g *globalFlags) *cobra.Command {
	var cfg mmc.Config
	var joinBundle, joinToken, relayPorts, relayIP string
	cmd := &cobra.Command{
		Use:   "mmc",
		Short: "Run the Migration Management Center",
		Long: `Run the Migration Management Center (MMC).

On first start it creates, in --data-dir: its static key (node.key, or
--key-file), the cluster id, the admin API token (admin.token, mode 0600)
and the bootstrap bundle agents are started with (also printed by 'ferry
mmc bundle'). Keep the key out of the data directory with --key-file, so
that backups of the directory (the database) hold no key that can
impersonate the MMC.

A fresh data directory without --join starts a one-member cluster. With
--join BUNDLE --join-token TOKEN (a token from 'ferry ctl mmcs
join-token' on any member) it joins the cluster of the MMCs in BUNDLE as
a voter: it receives the cluster's secret and admin token (DATA/admin.token
then works on every member) and catches up from the leader. Give every
member an --advertise address the others and the agents can reach.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = g.logger()
			cfg.Version = readBuildVersion().Version
			if (joinBundle == "") != (joinToken == "") {
				return &usageError{"--join and --join-token go together\nRun 'ferry mmc --help' for usage."}
			}
			if joinBundle != "" {
				b, err := identity.ParseBundle(strings.TrimSpace(joinBundle))
				if err != nil {
					return &usageError{fmt.Sprintf("--join: %v", err)}
				}
				cfg.Join = &mmc.JoinConfig{Bundle: b, Token: strings.TrimSpace(joinToken)}
			}
			if cfg.RaftTimeout < 100*time.Millisecond || cfg.RaftTimeout > time.Minute {
				return &usageError{"--raft-timeout must be between 100ms and 1m"}
			}
			if relayPorts != "" {
				rc := &mmc.RelayConfig{}
				var err error
				if rc.PortLo, rc.PortHi, err = parsePortRange(relayPorts); err != nil {
					return &usageError{fmt.Sprintf("--relay-ports: %v", err)}
				}
				if relayIP != "" {
					if rc.IP, err = netip.ParseAddr(relayIP); err != nil {
						return &usageError{fmt.Sprintf("--relay-ip: %v", err)}
					}
				}
				cfg.Relay = rc
			} else if relayIP != "" {
				return &usageError{"--relay-ip goes with --relay-ports"}
			}
			srv, err := mmc.New(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "ferry mmc: SUDP on %s, admin API on %s (token in %s)\nbundle: %s\n",
				srv.Addr(), srv.AdminURL(), filepath.Join(cfg.DataDir, mmc.AdminTokenFile), srv.Bundle().Encode())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if path, _ := cmd.Flags().GetString("config"); path != "" {
				hup := make(chan os.Signal, 1)
				signal.Notify(hup, syscall.SIGHUP)
				defer signal.Stop(hup)
				reloaded := make(chan struct{})
				defer func() { <-reloaded }()
				go func() {
					defer close(reloaded)
					for {
						select {
						case <-ctx.Done():
							return
						case <-hup:
							reloadMMC(cmd, g, srv, path, cfg.Logger)
						}
					}
				}()
			}
			return srv.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", defaultMMCDir, "state directory (keys, database, admin token)")
	f.StringVar(&cfg.KeyFile, "key-file", "", "the MMC's static private key (default DATA/node.key; created 0600 on first start)")
	f.StringVar(&cfg.Listen, "listen", mmc.DefaultListen, "SUDP address agents connect to")
	f.StringVar(&cfg.Admin, "admin", mmc.DefaultAdmin, "admin API address (HTTP); '-' disables it")
	f.StringVar(&cfg.AdminTLS, "admin-tls", mmc.TLSAuto, "admin API TLS: auto (on unless --admin is loopback), on, off (loopback only)")
	f.StringVar(&cfg.AdminCert, "admin-cert", "", "admin API TLS certificate (default: self-signed DATA/admin.crt, created on first use)")
	f.StringVar(&cfg.AdminKey, "admin-key", "", "admin API TLS private key (with --admin-cert)")
	f.StringVar(&cfg.Advertise, "advertise", "", "address agents are told to dial (default: --listen, with 0.0.0.0 as 127.0.0.1)")
	f.DurationVar(&cfg.ReauthMin, "reauth-min", 30*time.Second, "shortest interval between re-authentication challenges")
	f.DurationVar(&cfg.ReauthMax, "reauth-max", 90*time.Second, "longest interval between re-authentication challenges")
	f.DurationVar(&cfg.ReauthTimeout, "reauth-timeout", 10*time.Second, "time an agent has to answer a challenge")
	f.DurationVar(&cfg.PolicyInterval, "policy-interval", 5*time.Second, "how often the policy engine evaluates host and VM load")
	f.DurationVar(&cfg.AuditMaxAge, "audit-max-age", mmc.DefaultAuditMaxAge, "audit entries older than this are pruned (hourly; negative: kept forever)")
	f.IntVar(&cfg.AuditMaxEntries, "audit-max-entries", mmc.DefaultAuditMaxEntries, "the audit log keeps at most this many entries, the newest (negative: no limit)")
	f.DurationVar(&cfg.EventsMaxAge, "events-max-age", mmc.DefaultEventsMaxAge, "logs and alarms older than this are pruned (hourly; negative: kept, the newest 100 000)")
	f.DurationVar(&cfg.RecordsMaxAge, "records-max-age", mmc.DefaultRecordsMaxAge, "finished migrations and evacuations older than this are pruned (hourly; negative: kept forever)")
	f.DurationVar(&cfg.EnrolWait, "enrol-wait", time.Minute, "longest a pending agent's enrolment session waits for a decision (the agent then asks again)")
	f.DurationVar(&cfg.PendingTTL, "pending-ttl", 24*time.Hour, "pending enrolments not decided within this expire (the host may enrol again)")
	f.DurationVar(&cfg.RaftTimeout, "raft-timeout", mmc.DefaultRaftTimeout, "raft's heartbeat and election timeout between MMCs (leader lease: half); shorter fails over sooner, but must stay well above the members' round-trip time")
	f.StringVar(&relayPorts, "relay-ports", "", "run a relay for agents that cannot punch a direct path to each other: UDP ports LO-HI, two per relayed link (open them inbound)")
	f.DurationVar(&cfg.LinkUpgradeEvery, "link-upgrade-every", mmc.DefaultLinkUpgradeEvery, "how often a relayed link is tried for a direct path while it lives")
	f.StringVar(&relayIP, "relay-ip", "", "address the relay listens on and agents reach (default: the --listen address)")
	f.StringVar(&joinBundle, "join", "", "join the cluster of the MMCs in this bundle (first start only; with --join-token)")
	f.StringVar(&joinToken, "join-token", "", "one-use token from 'ferry ctl mmcs join-token' (with --join)")
	f.BoolVar(&cfg.AllowChangedFacts, "allow-changed-facts", false, "let agents whose MAC or disk id changed log in (the alarm is still raised)")
	withConfigFile(cmd)
	cmd.AddCommand(newMMCBundleCmd())
	cmd.AddCommand(newMMCRestoreCmd())
	return cmd
}

func newMMCBundleCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Print the bootstrap bundle agents are started with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := identity.ReadSecretFile(filepath.Join(dir, mmc.BundleFile))
			if err != nil {
				return fmt.Errorf("no bundle in %s (start 'ferry mmc --data-dir %s' once first): %w", dir, dir, err)
			}
			if _, err := identity.ParseBundle(string(b)); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(b)))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", defaultMMCDir, "the MMC's state directory")
	return cmd
}

// withSignals returns a context cancelled by SIGINT/SIGTERM.
func withSignals(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}
