package main

import (
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/relay"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// defaultRelayControl is the standalone relay's SUDP control address.
const defaultRelayControl = "0.0.0.0:7950"

func newRelayCmd(g *globalFlags) *cobra.Command {
	var (
		cfg                        relay.Config
		listenIP, advertise, ports string
		control, keyFile, pskFile  string
		clusterID, metricsAddr     string
		controllers                []string
	)
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a relay for agents that cannot reach each other directly",
		Long: `Run a standalone relay (docs/OPERATIONS.md, "Relay").

It forwards the SUDP datagrams of agents whose NATs defeat hole punching,
through two ports of --ports per relayed link; the datagrams stay
encrypted end to end between the agents. Its controllers (MMCs, named by
their static public keys with --controller) allocate and release links
over SUDP on --control, authenticated with the psk in --psk-file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := g.logger()
			var err error
			if cfg.ListenIP, err = netip.ParseAddr(listenIP); err != nil {
				return &usageError{fmt.Sprintf("--listen-ip: %v", err)}
			}
			if advertise != "" {
				if cfg.Advertise, err = netip.ParseAddr(advertise); err != nil {
					return &usageError{fmt.Sprintf("--advertise: %v", err)}
				}
			}
			if cfg.PortLo, cfg.PortHi, err = parsePortRange(ports); err != nil {
				return &usageError{fmt.Sprintf("--ports: %v", err)}
			}
			if clusterID == "" || pskFile == "" || len(controllers) == 0 {
				return &usageError{"--cluster-id, --psk-file and at least one --controller are required\nRun 'ferry relay --help' for usage."}
			}
			allowed := make(map[[32]byte]bool, len(controllers))
			for _, c := range controllers {
				k, err := handshake.ParseKey(strings.TrimSpace(c))
				if err != nil {
					return &usageError{fmt.Sprintf("--controller %q: %v", c, err)}
				}
				allowed[k] = true
			}
			b, err := identity.ReadSecretFile(pskFile)
			if err != nil {
				return err
			}
			psk, err := handshake.ParseKey(strings.TrimSpace(string(b)))
			clear(b)
			if err != nil {
				return fmt.Errorf("--psk-file: %w", err)
			}
			key, err := identity.LoadOrCreateKeyFile(keyFile, rand.Reader)
			if err != nil {
				return err
			}
			cfg.Logger = log
			r, err := relay.New(cfg)
			if err != nil {
				return err
			}
			defer r.Close()
			ep, err := sudp.Listen(sudp.Config{
				Listen: control, Static: key, ClusterID: clusterID, Logger: log, SmallBuffers: true,
				Lookup: func(peer [32]byte) (handshake.Peer, error) {
					if !allowed[peer] {
						return handshake.Peer{}, fmt.Errorf("relay: %s is not a controller", handshake.EncodeKey(peer))
					}
					return handshake.Peer{ID: "controller-" + identity.NodeID(peer), PSK: psk, Allowed: true}, nil
				},
			})
			if err != nil {
				return err
			}
			defer ep.Close()
			ctx, stop := withSignals(cmd.Context())
			defer stop()
			if metricsAddr != "" {
				cs := []prometheus.Collector{relay.NewCollector(r, nil), sudp.NewCollector(ep, prometheus.Labels{"role": "relay-control"})}
				stopMetrics, err := serveMetrics(ctx, metricsAddr, cs, log)
				if err != nil {
					return err
				}
				defer stopMetrics()
			}
			fmt.Fprintf(os.Stderr, "ferry relay: ports %d-%d on %s, control on %s, key %s\n",
				cfg.PortLo, cfg.PortHi, cfg.ListenIP, ep.LocalAddr(), handshake.EncodeKey([32]byte(key.Public)))
			return relay.ServeControl(ctx, ep, r, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listenIP, "listen-ip", "0.0.0.0", "address the relayed links' ports are opened on")
	f.StringVar(&advertise, "advertise", "", "address agents send to (default --listen-ip, which then must not be 0.0.0.0)")
	f.StringVar(&ports, "ports", "", "UDP port range LO-HI for relayed links, two ports a link (required)")
	f.StringVar(&control, "control", defaultRelayControl, "SUDP address the controllers (MMCs) connect to")
	f.StringVar(&keyFile, "key-file", "/var/lib/ferry/relay/node.key", "the relay's static private key (created 0600 on first start)")
	f.StringVar(&pskFile, "psk-file", "", "file with the base64 psk shared with the controllers (mode 0600)")
	f.StringVar(&clusterID, "cluster-id", "", "the Ferry cluster id the controllers' handshakes are bound to")
	f.StringArrayVar(&controllers, "controller", nil, "a controller's static public key, base64 (repeat for several MMCs)")
	f.StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics on this TCP address")
	f.IntVar(&cfg.Limits.MaxAllocations, "max-links", relay.DefaultLimits.MaxAllocations, "relayed links held at once")
	f.DurationVar(&cfg.Limits.IdleTimeout, "idle-timeout", relay.DefaultLimits.IdleTimeout, "a link with nothing forwarded and no bind for this long is dropped")
	f.Float64Var(&cfg.Limits.AllocBytes, "link-rate", relay.DefaultLimits.AllocBytes, "bytes a second one link may forward (both directions)")
	f.Float64Var(&cfg.Limits.GlobalBytes, "total-rate", relay.DefaultLimits.GlobalBytes, "bytes a second the relay forwards in all")
	withConfigFile(cmd)
	return cmd
}

// parsePortRange reads "LO-HI", an inclusive range of at least two ports.
func parsePortRange(s string) (lo, hi uint16, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("%q is not LO-HI", s)
	}
	l, err1 := strconv.ParseUint(a, 10, 16)
	h, err2 := strconv.ParseUint(b, 10, 16)
	if err1 != nil || err2 != nil || l == 0 || h <= l {
		return 0, 0, fmt.Errorf("%q is not a range of two ports or more within 1-65535", s)
	}
	return uint16(l), uint16(h), nil
}
