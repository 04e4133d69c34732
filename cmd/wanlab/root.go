package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/wanlab"
	"github.com/ferry-vm/ferry/internal/wanlab/link"
	"github.com/ferry-vm/ferry/internal/wanlab/nat"
)

var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "wanlab",
		Short: "Emulated WAN sites, links and NATs on one machine (needs root)",
		Long: `wanlab creates two sites (network namespaces NAME-a and NAME-b) joined by a WAN
link that a user-space emulator shapes between two TUN devices: one-way delay,
jitter, random or bursty loss, a bottleneck rate with a drop-tail queue,
reordering, duplication, corruption — each direction separately. Optional NAT
routers (NAME-ra, NAME-rb) sit in front of a site; an optional hub (NAME-hub)
is a public place in the middle of the WAN, half the link from each site.
Addresses come from 198.18.0.0/15 (RFC 2544), the hub's from 198.51.100.0/24;
nothing is created in the root namespace.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newUpCmd(), newDownCmd(), newStatusCmd(), newListCmd(), newExecCmd(), newProfilesCmd(), newRunCmd())
	return root
}

var optionHelp = map[string]string{
	"delay":     "one-way delay, e.g. 25ms",
	"jitter":    "extra random one-way delay, e.g. 2ms",
	"loss":      "random loss, e.g. 1%; bursty: ge:P,R[,K,H] (Gilbert-Elliott, e.g. ge:1%,30%)",
	"rate":      "bottleneck rate, e.g. 100mbit",
	"queue":     "drop-tail queue in bytes (256KiB) or time at the rate (50ms)",
	"reorder":   "reordering probability, e.g. 0.5%",
	"duplicate": "duplication probability, e.g. 0.1%",
	"corrupt":   "corruption probability, e.g. 0.01%",
	"seed":      "random seed (reproducible losses)",
}

func newUpCmd() *cobra.Command {
	var (
		profile    string
		natA, natB string
		hub        bool
		jsonOut    bool
	)
	cmd := &cobra.Command{
		Use:   "up NAME",
		Short: "Create a lab and start its WAN link emulator",
		Example: `  wanlab up lab1 --profile wan
  wanlab up lab1 --delay 25ms --loss 1% --rate 100mbit --queue 50ms
  wanlab up lab1 --profile wan --loss-ba 5% --nat-a eim --nat-b symmetric
  wanlab up lab1 --profile wan --nat-a eim --nat-b eim --hub`,
		Args: cobra.ExactArgs(1),
	}
	for _, k := range wanlab.LinkOptions {
		cmd.Flags().String(k, "", optionHelp[k]+" (both directions)")
		cmd.Flags().String(k+"-ab", "", k+" for a→b only")
		cmd.Flags().String(k+"-ba", "", k+" for b→a only")
	}
	cmd.Flags().StringVar(&profile, "profile", "", "start from a named profile (see wanlab profiles); flags override it")
	cmd.Flags().StringVar(&natA, "nat-a", "", "put site a behind a NAT router: eim (restricted cone), port-restricted or symmetric")
	cmd.Flags().StringVar(&natB, "nat-b", "", "put site b behind a NAT router: eim (restricted cone), port-restricted or symmetric")
	cmd.Flags().BoolVar(&hub, "hub", false, "add a hub (NAME-hub): a public address in the middle of the WAN, reachable from both sites")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the lab's status as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		spec, err := specFromFlags(cmd, profile, natA, natB)
		if err != nil {
			return err
		}
		spec.Hub = hub
		if err := wanlab.Up(cmd.Context(), args[0], spec); err != nil {
			return err
		}
		info, err := wanlab.Status(args[0])
		if err != nil {
			return err
		}
		if jsonOut {
			return printJSON(cmd.OutOrStdout(), info)
		}
		printStatus(cmd.OutOrStdout(), info)
		fmt.Fprintf(cmd.OutOrStdout(), "try: wanlab exec %s a -- ping -c 3 %s\n", info.Name, info.Sites[1].PublicAddr)
		return nil
	}
	return cmd
}

// specFromFlags builds a Spec from the flags the user set.
func specFromFlags(cmd *cobra.Command, profile, natA, natB string) (wanlab.Spec, error) {
	spec := wanlab.Spec{Profile: profile}
	set := func(m *map[string]string, k, v string) {
		if *m == nil {
			*m = map[string]string{}
		}
		(*m)[k] = v
	}
	for _, k := range wanlab.LinkOptions {
		for suffix, m := range map[string]*map[string]string{"": &spec.Both, "-ab": &spec.AB, "-ba": &spec.BA} {
			f := cmd.Flags().Lookup(k + suffix)
			if f != nil && f.Changed {
				set(m, k, f.Value.String())
			}
		}
	}
	var err error
	if spec.NATA, err = nat.ParseMode(natA); err != nil {
		return spec, fmt.Errorf("--nat-a: %w", err)
	}
	if spec.NATB, err = nat.ParseMode(natB); err != nil {
		return spec, fmt.Errorf("--nat-b: %w", err)
	}
	return spec, nil
}

func newDownCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "down NAME...",
		Short: "Remove a lab (idempotent; works after a crash)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			for _, n := range args {
				if err := wanlab.Down(n); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", n, err))
				}
			}
			return errors.Join(errs...)
		},
	}
}

func newStatusCmd() *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a lab's sites, addresses and live link counters",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := wanlab.Status(args[0])
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(cmd.OutOrStdout(), info)
			}
			printStatus(cmd.OutOrStdout(), info)
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newListCmd() *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the labs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			names, err := wanlab.List()
			if err != nil {
				return err
			}
			var infos []*wanlab.StatusInfo
			for _, n := range names {
				if info, err := wanlab.Status(n); err == nil {
					infos = append(infos, info)
				} else {
					infos = append(infos, &wanlab.StatusInfo{Name: n})
				}
			}
			if jsonOut {
				if infos == nil {
					infos = []*wanlab.StatusInfo{}
				}
				return printJSON(cmd.OutOrStdout(), infos)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tRUNNING\tPID\tSITE A\tSITE B")
			for _, i := range infos {
				a, b := "-", "-"
				if len(i.Sites) == 2 {
					a, b = i.Sites[0].Addr, i.Sites[1].Addr
				}
				fmt.Fprintf(w, "%s\t%v\t%d\t%s\t%s\n", i.Name, i.Running, i.PID, a, b)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newExecCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "exec NAME SITE -- COMMAND [ARG...]",
		Short: "Run a command inside a site's namespace (SITE: a, b, ra, rb, hub, 0 or 1)",
		Example: `  wanlab exec lab1 a -- ping -c 3 198.18.1.1
  wanlab exec lab1 b -- iperf3 -s`,
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := siteNetns(args[0], args[1])
			if err != nil {
				return err
			}
			ip, err := exec.LookPath("ip")
			if err != nil {
				return err
			}
			return syscall.Exec(ip, append([]string{"ip", "netns", "exec", ns}, args[2:]...), os.Environ())
		},
	}
}

// siteNetns maps a site selector to its namespace, from the lab's status.
func siteNetns(name, site string) (string, error) {
	info, err := wanlab.Status(name)
	if err != nil {
		return "", err
	}
	if site == "hub" {
		if info.Hub == nil {
			return "", fmt.Errorf("lab %s has no hub (wanlab up … --hub)", name)
		}
		return info.Hub.Netns, nil
	}
	for i, s := range info.Sites {
		switch site {
		case s.Name, fmt.Sprint(i):
			return s.Netns, nil
		case "r" + s.Name:
			if s.RouterNetns == "" {
				return "", fmt.Errorf("site %s of %s has no NAT router", s.Name, name)
			}
			return s.RouterNetns, nil
		}
	}
	return "", fmt.Errorf("no site %q in lab %s (use a, b, ra, rb, hub, 0 or 1)", site, name)
}

func newProfilesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "profiles",
		Short: "List the named link profiles (each applies to both directions)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PROFILE\tDESCRIPTION")
			for _, p := range link.Profiles() {
				fmt.Fprintf(w, "%s\t%s\n", p.Name, p.Description)
			}
			return w.Flush()
		},
	}
}

func newRunCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "run NAME",
		Short:  "Run a lab's link emulator (started by up)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return wanlab.Run(cmd.Context(), args[0])
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printStatus(w io.Writer, info *wanlab.StatusInfo) {
	state := "not running"
	if info.Running {
		state = fmt.Sprintf("running, pid %d", info.PID)
	}
	fmt.Fprintf(w, "lab %s (index %d), emulator %s\n", info.Name, info.Index, state)
	for _, s := range info.Sites {
		line := fmt.Sprintf("  site %s  netns %-14s addr %s", s.Name, s.Netns, s.Addr)
		if s.NAT != "" {
			line += fmt.Sprintf("  behind %s NAT %s (public %s)", s.NAT, s.RouterNetns, s.PublicAddr)
		}
		fmt.Fprintln(w, line)
	}
	if info.Hub != nil {
		fmt.Fprintf(w, "  hub     netns %-14s addr %s\n", info.Hub.Netns, info.Hub.Addr)
	}
	for _, d := range []struct {
		name string
		raw  json.RawMessage
	}{{"a→b", info.Link.AB}, {"b→a", info.Link.BA}, {"hub", info.Link.Hub}} {
		if len(d.raw) > 0 {
			fmt.Fprintf(w, "  %s  %s\n", d.name, strings.TrimSpace(string(d.raw)))
		}
	}
}
