package main

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/evacuation"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/mmc"
	"github.com/ferry-vm/ferry/internal/termsafe"
	"github.com/ferry-vm/ferry/internal/units"
)

// q makes a string that came from the MMC — and so, often, from an agent
// or an enrolling host — safe to print in human output (JSON output is
// escaped by the encoder).
func q(s string) string { return termsafe.String(s) }

type ctlFlags struct {
	admin, tokenFile, output, caFile string
	insecureHTTP                     bool
	// retryFor is how long a request answered "no MMC leads right now"
	// (an election) is retried; 0 fails at once, which a script that
	// must tell a partitioned member from a slow election wants.
	retryFor time.Duration
}

// adminURL decides where ctl sends the admin token: raw is --admin (or
// $FERRY_ADMIN; "" is the default, loopback). A bare host:port means
// http://host:port. Plain HTTP is refused unless the host is loopback —
// the token would cross the network in clear text, readable and reusable
// by anyone on the path — or insecure is set (--insecure-http). The MMC
// serves its admin API over TLS whenever it is not bound to loopback, so
// https://HOST:PORT with --ca-file is the way to reach a remote one.
func adminURL(raw string, insecure bool) (string, error) {
	if raw == "" {
		raw = "http://" + mmc.DefaultAdmin
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("--admin %q: %w", raw, err)
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", fmt.Errorf("--admin %q: no host", raw)
	}
	if u.User != nil {
		return "", fmt.Errorf("--admin %q: no user info in the URL; the token comes from --token-file or $FERRY_TOKEN", raw)
	}
	switch u.Scheme {
	case "https":
		return raw, nil
	case "http":
		if insecure || isLoopbackHost(u.Hostname()) {
			return raw, nil
		}
		return "", fmt.Errorf("--admin %s: plain HTTP to a host that is not loopback would send the admin token in clear text; "+
			"use https://%s with --ca-file (the MMC serves TLS on any non-loopback address), or --insecure-http if the path is protected otherwise", raw, u.Host)
	default:
		return "", fmt.Errorf("--admin %q: scheme must be https (or http to loopback)", raw)
	}
}

// isLoopbackHost: "localhost" or a loopback address. A name that merely
// resolves to loopback is not trusted to keep doing so.
func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.Unmap().IsLoopback()
}

func (c *ctlFlags) client() (*api.Client, error) {
	admin := c.admin
	if admin == "" {
		admin = os.Getenv("FERRY_ADMIN")
	}
	admin, err := adminURL(admin, c.insecureHTTP)
	if err != nil {
		return nil, err
	}
	tok := os.Getenv("FERRY_TOKEN")
	if c.tokenFile != "" || tok == "" {
		path := c.tokenFile
		if path == "" {
			path = filepath.Join(defaultMMCDir, mmc.AdminTokenFile)
		}
		b, err := identity.ReadSecretFile(path)
		if err != nil {
			return nil, fmt.Errorf("admin token: %w (use --token-file or $FERRY_TOKEN)", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	cl := &api.Client{Base: admin, Token: tok, RetryFor: c.retryFor}
	if c.retryFor <= 0 {
		cl.RetryFor = -1 // api.Client: negative never retries, 0 is its default
	}
	ca := c.caFile
	if ca == "" {
		ca = os.Getenv("FERRY_CA")
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("admin CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("admin CA: no PEM certificate in %s", ca)
		}
		cl.HTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	}
	return cl, nil
}

func (c *ctlFlags) json() bool { return c.output == "json" }

func newCtlCmd() *cobra.Command {
	c := &ctlFlags{}
	cmd := &cobra.Command{
		Use:   "ctl",
		Short: "Administer the MMC through its admin API",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.admin, "admin", "", "admin API URL (default $FERRY_ADMIN or http://"+mmc.DefaultAdmin+")")
	pf.StringVar(&c.tokenFile, "token-file", "", "admin token file (default $FERRY_TOKEN, or "+filepath.Join(defaultMMCDir, mmc.AdminTokenFile)+")")
	pf.StringVar(&c.caFile, "ca-file", "", "certificate the admin API's TLS certificate must chain to (default $FERRY_CA; the MMC's self-signed one is DATA/"+mmc.AdminCertFile+")")
	pf.BoolVar(&c.insecureHTTP, "insecure-http", false, "allow plain http:// to a host that is not loopback (sends the admin token in clear text)")
	pf.StringVarP(&c.output, "output", "o", "table", "output: table or json")
	pf.DurationVar(&c.retryFor, "retry-for", api.DefaultRetryFor, "retry a request the MMC cluster answers \"no leader right now\" (an election) for this long; 0: fail at once")
	cmd.PersistentPreRunE = func(*cobra.Command, []string) error {
		if c.output != "table" && c.output != "json" {
			return errors.New("-o must be table or json")
		}
		return nil
	}
	cmd.AddCommand(newCtlAgentsCmd(c), newCtlTokensCmd(c), newCtlAuditCmd(c), newCtlHostsCmd(c), newCtlVMsCmd(c), newCtlPolicyCmd(c), newCtlEventsCmd(c, "logs"), newCtlEventsCmd(c, "alarms"), newCtlMigrateCmd(c), newCtlMigrationsCmd(c), newCtlEvacuationsCmd(c), newCtlSitesCmd(c), newCtlBoardCmd(c), newCtlMMCsCmd(c))
	addGetAndCompletion(cmd, c)
	return cmd
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newCtlAgentsCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "agents", Short: "List, approve, reject and revoke agents"}
	list := func(state string) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			agents, err := cl.Agents(cmd.Context(), state)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), agents)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tHOSTNAME\tNAME\tSITE\tSTATE\tONLINE\tVERSION\tADDRESS\tDISK ID\tMACS\tREFUSED")
			for _, a := range agents {
				addr := a.LastAddr
				if addr == "" {
					addr = a.EnrolAddr
				}
				ver := cmp.Or(a.Version, "-")
				if a.VersionSkew {
					// Another release than the MMC's: compatible (it logged
					// in), but worth an upgrade.
					ver += " (≠ MMC)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\t%s\n", q(a.ID), q(a.Hostname), q(a.Name), q(a.Site), q(a.State), a.Online, q(ver), q(addr),
					q(a.Facts.DiskID), termsafe.Strings(a.Facts.MACs, ","), q(a.Refusal))
			}
			return tw.Flush()
		}
	}
	cmd.AddCommand(
		&cobra.Command{Use: "list", Short: "List all agents", Args: cobra.NoArgs, RunE: list("")},
		&cobra.Command{Use: "pending", Short: "List agents waiting for approval", Args: cobra.NoArgs, RunE: list("pending")},
	)
	for _, action := range []string{"approve", "reject", "revoke"} {
		cmd.AddCommand(&cobra.Command{
			Use:   action + " ID",
			Short: strings.ToUpper(action[:1]) + action[1:] + " an agent",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, err := c.client()
				if err != nil {
					return err
				}
				a, err := cl.AgentAction(cmd.Context(), args[0], action)
				if err != nil {
					return err
				}
				if c.json() {
					return printJSON(cmd.OutOrStdout(), a)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "agent %s (%s): %s\n", q(a.ID), q(a.Hostname), q(a.State))
				return nil
			},
		})
	}
	return cmd
}

func newCtlTokensCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Join tokens for pre-approved enrolment"}
	var ttl time.Duration
	var uses int
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token (printed once; the MMC keeps only its hash)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			t, err := cl.CreateToken(cmd.Context(), ttl, uses)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), t)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n(expires %s, %d use(s))\n", t.Token, t.Expires.Format(time.RFC3339), t.Uses)
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "validity")
	create.Flags().IntVar(&uses, "uses", 1, "number of enrolments it approves")
	cmd.AddCommand(create, &cobra.Command{
		Use: "list", Short: "List join tokens (ids, expiry, uses; never the secrets)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			toks, err := cl.Tokens(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), toks)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tFOR\tSTATE\tCREATED\tEXPIRES\tUSES LEFT\tUSED\tBY")
			for _, t := range toks {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", q(t.ID), q(t.Purpose), q(t.State), t.Created.Format(time.RFC3339), t.Expires.Format(time.RFC3339),
					t.UsesLeft, t.Used, q(t.CreatedBy))
			}
			return tw.Flush()
		},
	}, &cobra.Command{
		Use: "revoke ID", Short: "Revoke a join token: it approves no more enrolments", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			t, err := cl.RevokeToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), t)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked (%d use(s) were left)\n", q(t.ID), t.UsesLeft)
			return nil
		},
	})
	return cmd
}

func newCtlHostsCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "hosts", Short: "Hypervisor hosts and their load"}
	cmd.AddCommand(newCtlEvacuateCmd(c, evacuation.ScopeHost))
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List hosts with their latest report", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			hosts, err := cl.Hosts(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), hosts)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSITE\tONLINE\tCPU\tMEM\tNET\tVMS")
			for _, h := range hosts {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%.0f%%\t%.0f%%\t%s\t%d\n", q(h.ID), q(h.Site), h.Online, 100*h.CPU, 100*h.Mem, units.FormatRate(8*h.Net), h.VMs)
			}
			return tw.Flush()
		},
	})
	return cmd
}

func newCtlVMsCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "vms", Short: "Virtual machines"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List VMs on online hosts", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			vms, err := cl.VMs(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), vms)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tHOST\tSTATE\tCPU\tMEM\tNET\tDIRTY\tVCPUS\tMEMORY")
			for _, v := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f%%\t%.0f%%\t%s\t%s\t%d\t%s\n", q(v.ID), q(v.Host), q(v.State), 100*v.CPU, 100*v.Mem,
					units.FormatRate(8*v.Net), units.FormatRate(8*v.Dirty), v.VCPUs, units.FormatBytes(v.Memory))
			}
			return tw.Flush()
		},
	})
	var req api.VMCreate
	var memory string
	var disks, nics []string
	create := &cobra.Command{
		Use: "create NAME --host HOST", Short: "Start a VM on a host", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			req.Name = args[0]
			for _, d := range disks {
				disk, err := parseDisk(d)
				if err != nil {
					return err
				}
				req.Disks = append(req.Disks, disk)
			}
			for _, n := range nics {
				nic, err := parseNIC(n)
				if err != nil {
					return err
				}
				req.NICs = append(req.NICs, nic)
			}
			if req.Memory, err = units.ParseBytes(memory); err != nil {
				return fmt.Errorf("--memory: %w", err)
			}
			out, err := cl.CreateVM(cmd.Context(), req)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "VM %s started on %s\n", q(out.ID), q(req.Host))
			return nil
		},
	}
	create.Flags().StringVar(&req.Host, "host", "", "host (its id in 'hosts list')")
	create.Flags().StringVar(&memory, "memory", "256MiB", "guest memory")
	create.Flags().IntVar(&req.VCPUs, "vcpus", 1, "virtual CPUs")
	create.Flags().StringVar(&req.Workload, "workload", "", "simulated load, e.g. cpu=0.8,dirty=20MB/s,net=5MB/s (QEMU test guest: fill=0.5,dirty=4MB/s; text=0.9 makes 90 % of the filled memory compressible text)")
	create.Flags().StringVar(&req.Machine, "machine", "", "QEMU machine type (default pc)")
	create.Flags().StringVar(&req.Kernel, "kernel", "", "QEMU: a kernel to boot (default: Ferry's test guest unless a disk boots)")
	create.Flags().StringArrayVar(&disks, "disk", nil, "QEMU: a disk, PATH[,format=qcow2|raw][,shared][,boot] (repeatable)")
	create.Flags().StringArrayVar(&nics, "nic", nil, "QEMU: a NIC, tap=DEV[,mac=MAC][,model=M] or user[,mac=MAC] (repeatable)")
	_ = create.MarkFlagRequired("host")
	cmd.AddCommand(create, &cobra.Command{
		Use: "workload ID SPEC", Short: "Change a simulated VM's load, e.g. cpu=0.9,dirty=20MB/s", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			if err := cl.SetWorkload(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), api.Created{ID: args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "VM %s: workload %s\n", q(args[0]), q(args[1]))
			return nil
		},
	}, &cobra.Command{
		Use: "delete ID", Short: "Destroy a VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteVM(cmd.Context(), args[0]); err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), api.Created{ID: args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "VM %s destroyed\n", q(args[0]))
			return nil
		},
	})
	return cmd
}

func newCtlPolicyCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "The migration policy (versioned) and its decisions"}
	cmd.AddCommand(&cobra.Command{
		Use: "get", Short: "Show the policy in force (JSON)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			p, err := cl.Policy(cmd.Context())
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), p)
		},
	}, &cobra.Command{
		Use: "set FILE", Short: "Replace the policy with FILE (JSON; - for stdin); the MMC assigns the next version", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			var doc []byte
			if args[0] == "-" {
				doc, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			} else {
				doc, err = os.ReadFile(args[0])
			}
			if err != nil {
				return err
			}
			if !json.Valid(doc) {
				return fmt.Errorf("%s is not JSON", args[0])
			}
			p, err := cl.SetPolicy(cmd.Context(), doc)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), p)
		},
	}, &cobra.Command{
		Use: "decisions", Short: "Recent decisions of the policy engine, with their reasons", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			ds, err := cl.Decisions(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), ds)
			}
			st, err := cl.PolicyStatus(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(ds) > 0 {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TIME\tVM\tFROM\tTO\tMODE\tACTION\tREASON")
				for _, d := range ds {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Time.Format(time.RFC3339), q(d.VM), q(d.From), q(d.To), q(string(d.Mode)), q(string(d.Action)), q(d.Reason))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				fmt.Fprintln(out)
			}
			printPolicyStatus(out, st, len(ds))
			return nil
		},
	}, &cobra.Command{
		Use: "status", Short: "The policy engine's latest evaluation: what it held back, and why", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			st, err := cl.PolicyStatus(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printPolicyStatus(cmd.OutOrStdout(), st, -1)
			return nil
		},
	})
	return cmd
}

// printPolicyStatus says what the latest evaluation held back and why,
// or why there is nothing to show: a silent empty list told operators
// nothing (decisions < 0: not printed beside a decision list).
func printPolicyStatus(w io.Writer, st api.PolicyStatus, decisions int) {
	switch {
	case st.EvaluatedAt.IsZero():
		fmt.Fprintf(w, "The policy engine (mode %s) has not evaluated since this MMC took the lead.\n", q(st.Mode))
	case st.Mode == "off":
		fmt.Fprintln(w, "The policy is off (mode off): nothing is evaluated. `ferry ctl policy set` turns it on.")
	case len(st.Held) == 0 && st.Decided == 0:
		fmt.Fprintf(w, "At %s no VM violated its SLA (mode %s)", st.EvaluatedAt.Format(time.RFC3339), q(st.Mode))
		if decisions == 0 {
			fmt.Fprint(w, "; no decision on record")
		}
		fmt.Fprintln(w, ".")
	case len(st.Held) == 0:
		fmt.Fprintf(w, "At %s: %d decision(s), nothing held back (mode %s).\n", st.EvaluatedAt.Format(time.RFC3339), st.Decided, q(st.Mode))
	default:
		fmt.Fprintf(w, "Held back at %s (mode %s): violating its SLA, not moved:\n", st.EvaluatedAt.Format(time.RFC3339), q(st.Mode))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VM\tHOST\tWHY")
		for _, h := range st.Held {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", q(h.VM), q(h.Host), q(h.Reason))
		}
		_ = tw.Flush()
	}
}

// newCtlEventsCmd is `ferry ctl logs` or `ferry ctl alarms`.
func newCtlEventsCmd(c *ctlFlags, which string) *cobra.Command {
	var f logFlags
	short := "Logs and alarms sent by agents (and raised by the MMC)"
	if which == "alarms" {
		short = "Alarms only"
	}
	view := eventsView(which == "alarms")
	cmd := &cobra.Command{
		Use: which, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return view.run(cmd, c, &f) },
	}
	f.register(cmd)
	if which == "alarms" {
		cmd.AddCommand(&cobra.Command{
			Use: "ack SEQ", Short: "Acknowledge an alarm (it stays in the log, marked handled)", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				seq, err := strconv.ParseUint(args[0], 10, 64)
				if err != nil {
					return &usageError{fmt.Sprintf("SEQ: want an alarm's number (the SEQ column), not %q", args[0])}
				}
				cl, err := c.client()
				if err != nil {
					return err
				}
				e, err := cl.AckAlarm(cmd.Context(), seq)
				if err != nil {
					return err
				}
				if c.json() {
					return printJSON(cmd.OutOrStdout(), e)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "alarm %d (%s) acknowledged by %s at %s\n", e.Seq, q(e.Kind), q(e.AckedBy), e.AckedAt.Format(time.RFC3339))
				return nil
			},
		})
	}
	return cmd
}

func newCtlMigrateCmd(c *ctlFlags) *cobra.Command {
	var to, rate, streamCompression string
	var postcopy, compress bool
	var maxRounds, channels int
	var downtime time.Duration
	cmd := &cobra.Command{
		Use: "migrate VM --to HOST", Short: "Plan a live migration of a VM to another host", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			req := api.MigrateRequest{VM: args[0], To: to, Options: migration.Options{AllowPostcopy: postcopy, MaxRounds: maxRounds,
				DowntimeLimitMS: downtime.Milliseconds(), Compress: compress, StreamCompression: streamCompression, Channels: channels}}
			if rate != "" {
				bps, err := units.ParseRate(rate)
				if err != nil {
					return fmt.Errorf("--max-bandwidth: %w", err)
				}
				req.MaxRate = bps / 8
			}
			out, err := cl.Migrate(cmd.Context(), req)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "migration %s of %s to %s planned\n", q(out.ID), q(args[0]), q(to))
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination host")
	cmd.Flags().StringVar(&rate, "max-bandwidth", "", "cap the migration stream, e.g. 100mbit")
	cmd.Flags().BoolVar(&postcopy, "postcopy", false, "switch to post-copy if pre-copy has not converged after --max-rounds (QEMU; without it such a migration is given up, the VM running on)")
	cmd.Flags().DurationVar(&downtime, "downtime-limit", 0, "downtime to aim at, from the source's pause to the destination running (default 300ms)")
	cmd.Flags().IntVar(&maxRounds, "max-rounds", 0, "passes over memory before post-copy or giving up (0: the hypervisor's default, 30)")
	cmd.Flags().BoolVar(&compress, "compress", false, "send pages that were sent before as deltas (QEMU XBZRLE; the simulated VM compresses with zstd): for guests that rewrite the same pages in small ways, over a slow link")
	cmd.Flags().StringVar(&streamCompression, "stream-compression", "auto", "how the agents compress the stream on the link: auto (zstd while the link, not the CPU, is the bottleneck and the data compresses), zstd (whatever compresses) or off")
	cmd.Flags().IntVar(&channels, "channels", 0, "QEMU: move memory over this many parallel (multifd) channels, each its own stream of the link (0: one stream; not with --postcopy or --compress)")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func newCtlMigrationsCmd(c *ctlFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "migrations", Short: "Migration records"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List migrations", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			ms, err := cl.Migrations(cmd.Context())
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), ms)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tVM\tFROM\tTO\tSTATE\tPROGRESS\tPATH\tBY\tREASON")
			for _, m := range ms {
				path := m.Path
				if path == "" {
					path = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.0f%%\t%s\t%s\t%s\n", q(m.ID), q(m.VM), q(m.From), q(m.To), q(string(m.State)), 100*m.Progress, q(path), q(m.By), q(m.Reason))
			}
			return tw.Flush()
		},
	}, &cobra.Command{
		Use: "cancel ID", Short: "Cancel an open migration", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			m, err := cl.CancelMigration(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), m)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "migration %s: %s\n", q(m.ID), q(string(m.State)))
			return nil
		},
	}, &cobra.Command{
		Use: "set-bandwidth ID RATE", Short: "Change an open migration's bandwidth cap (e.g. 200mbit; none removes it) until its transfer ends",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var bytesPerSec float64
			if r := strings.ToLower(args[1]); r != "none" && r != "0" {
				bps, err := units.ParseRate(args[1])
				if err != nil || bps <= 0 {
					return &usageError{fmt.Sprintf("RATE: want a rate such as 200mbit or 25MB/s, or none; not %q", args[1])}
				}
				bytesPerSec = bps / 8
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			m, err := cl.SetMigrationBandwidth(cmd.Context(), args[0], bytesPerSec)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), m)
			}
			capText := "no cap"
			if m.MaxRate > 0 {
				capText = units.FormatRate(8 * m.MaxRate)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "migration %s (%s): bandwidth cap %s\n", q(m.ID), q(string(m.State)), capText)
			return nil
		},
	}, newCtlWatchCmd(c))
	return cmd
}

func newCtlBoardCmd(c *ctlFlags) *cobra.Command {
	var after uint64
	cmd := &cobra.Command{
		Use:   "board [TOPIC]",
		Short: "Show the blackboard: its topics, or one topic's entries",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			if len(args) == 0 {
				topics, err := cl.BoardTopics(cmd.Context())
				if err != nil {
					return err
				}
				if c.json() {
					return printJSON(cmd.OutOrStdout(), topics)
				}
				for _, t := range topics {
					fmt.Fprintln(cmd.OutOrStdout(), q(t))
				}
				return nil
			}
			entries, err := cl.Board(cmd.Context(), args[0], after)
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), entries)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tFROM\tKIND\tBODY")
			for _, e := range entries {
				b, _ := json.Marshal(e.Body)
				// JSON escapes controls but not bidi overrides.
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339Nano), q(e.From), q(e.Kind), q(string(b)))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().Uint64Var(&after, "after", 0, "only entries after this sequence number")
	return cmd
}

// parseDisk reads --disk PATH[,format=F][,shared][,boot].
func parseDisk(v string) (hypervisor.Disk, error) {
	parts := strings.Split(v, ",")
	d := hypervisor.Disk{Path: parts[0]}
	if d.Path == "" {
		return d, fmt.Errorf("--disk %q: the path comes first", v)
	}
	for _, p := range parts[1:] {
		switch k, val, _ := strings.Cut(p, "="); k {
		case "format":
			d.Format = val
		case "shared":
			d.Shared = true
		case "boot":
			d.Boot = true
		default:
			return d, fmt.Errorf("--disk %q: unknown option %q (format=, shared, boot)", v, p)
		}
	}
	return d, nil
}

// parseNIC reads --nic tap=DEV[,mac=MAC][,model=M] or user[,…].
func parseNIC(v string) (hypervisor.NIC, error) {
	var n hypervisor.NIC
	for i, p := range strings.Split(v, ",") {
		switch k, val, _ := strings.Cut(p, "="); {
		case i == 0 && p == "user":
		case k == "tap" && val != "":
			n.Tap = val
		case k == "mac" && val != "":
			n.MAC = val
		case k == "model" && val != "":
			n.Model = val
		default:
			return n, fmt.Errorf("--nic %q: unknown option %q (tap=, mac=, model=, or user)", v, p)
		}
	}
	return n, nil
}
