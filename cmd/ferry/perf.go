package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-vm/ferry/internal/perf"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/units"
)

func newPerfCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "perf",
		Short: "Measure a SUDP path between two hosts (iperf3-like)",
		Long: `perf measures what SUDP achieves between two endpoints: run "ferry perf server"
on one host and "ferry perf client" with the server's address and key on the other.`,
	}
	cmd.AddCommand(newPerfServerCmd(g), newPerfClientCmd(g))
	return cmd
}

func newPerfServerCmd(g *globalFlags) *cobra.Command {
	var listen, psk, metrics string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Serve perf clients",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			static, err := handshake.GenerateKeypair(rand.Reader)
			if err != nil {
				return err
			}
			var key [32]byte
			if psk != "" {
				if key, err = handshake.ParseKey(psk); err != nil {
					return fmt.Errorf("--psk: %w", err)
				}
			}
			srv, err := perf.NewServer(perf.ServerConfig{Listen: listen, Static: static, PSK: key, Logger: g.logger()})
			if err != nil {
				return err
			}
			if metrics != "" {
				stop, err := serveMetrics(cmd.Context(), metrics, []prometheus.Collector{sudp.NewCollector(srv.Endpoint(), prometheus.Labels{"role": "perf-server"})}, g.logger())
				if err != nil {
					return err
				}
				defer stop()
			}
			var pub [32]byte
			copy(pub[:], static.Public)
			addr := srv.Endpoint().LocalAddr().String()
			out := cmd.OutOrStdout()
			if asJSON {
				if err := json.NewEncoder(out).Encode(map[string]string{"addr": addr, "key": handshake.EncodeKey(pub)}); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "listening on %s\nserver key  %s\nrun: ferry perf client --server-key %s %s --bytes 1GiB\n",
					addr, handshake.EncodeKey(pub), handshake.EncodeKey(pub), addr)
			}
			if f, ok := out.(*os.File); ok {
				_ = f.Sync()
			}
			return srv.Serve(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "0.0.0.0:7950", "UDP address to listen on")
	cmd.Flags().StringVar(&psk, "psk", "", "optional shared secret (base64, 32 bytes) clients must know")
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"addr","key"} as the first stdout line`)
	cmd.Flags().StringVar(&metrics, "metrics", "", "serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9150)")
	return cmd
}

func newPerfClientCmd(g *globalFlags) *cobra.Command {
	var serverKey, psk, size, rate string
	var asJSON, longHeaders bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "client ADDR",
		Short: "Send bytes to a perf server and report goodput, RTT and overhead",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if serverKey == "" {
				return perf.ErrNoKey
			}
			key, err := handshake.ParseKey(serverKey)
			if err != nil {
				return fmt.Errorf("--server-key: %w", err)
			}
			var pskKey [32]byte
			if psk != "" {
				if pskKey, err = handshake.ParseKey(psk); err != nil {
					return fmt.Errorf("--psk: %w", err)
				}
			}
			n, err := units.ParseBytes(size)
			if err != nil {
				return fmt.Errorf("--bytes: %w", err)
			}
			var maxRate float64
			if rate != "" {
				bps, err := units.ParseRate(rate)
				if err != nil {
					return fmt.Errorf("--max-bandwidth: %w", err)
				}
				maxRate = bps / 8
			}
			res, err := perf.Run(cmd.Context(), perf.ClientConfig{
				Server: args[0], ServerKey: key, PSK: pskKey, Bytes: n, MaxRate: maxRate,
				LongHeaders: longHeaders, Timeout: timeout, Logger: g.logger(),
			})
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			}
			return printResult(cmd.OutOrStdout(), res)
		},
	}
	cmd.Flags().StringVar(&serverKey, "server-key", "", "the server's public key (printed by perf server)")
	cmd.Flags().StringVar(&psk, "psk", "", "shared secret, if the server requires one")
	cmd.Flags().StringVar(&size, "bytes", "256MiB", "bytes to transfer (e.g. 1GiB, 500MB, 1048576)")
	// One name for a bandwidth cap everywhere (migrate, evacuate, perf);
	// --max-rate, its old name here, still works.
	cmd.Flags().StringVar(&rate, "max-bandwidth", "", "cap the send rate (e.g. 100mbit)")
	cmd.Flags().StringVar(&rate, "max-rate", "", "old name of --max-bandwidth")
	_ = cmd.Flags().MarkDeprecated("max-rate", "use --max-bandwidth")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	cmd.Flags().BoolVar(&longHeaders, "long-headers", false, "send with SUDP's 18-byte long data header (to measure the short one's gain)")
	_ = cmd.Flags().MarkHidden("long-headers")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	return cmd
}

func printResult(w io.Writer, r *perf.Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "BYTES\tSECONDS\tGOODPUT\tWIRE BYTES\tOVERHEAD\tRETRANSMIT\tRTT\n")
	overhead := 0.0
	if r.Bytes > 0 {
		overhead = float64(r.WireBytes)/float64(r.Bytes) - 1
	}
	fmt.Fprintf(tw, "%s\t%.3f\t%s\t%s\t%.1f%%\t%.2f%%\t%.2f ms\n",
		units.FormatBytes(r.Bytes), r.Seconds, units.FormatRate(r.GoodputBps), units.FormatBytes(r.WireBytes),
		100*overhead, 100*r.RetransmitRatio, r.RTTms)
	return tw.Flush()
}
