package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-vm/ferry/internal/api"
)

// `get` shows one agent, host, VM or migration: every field, in the API's
// order (-o json: the object itself).

func newCtlGetCmd(c *ctlFlags, what string, fetch func(ctx context.Context, cl *api.Client, name string) (any, error), complete completer) *cobra.Command {
	return &cobra.Command{
		Use: "get " + strings.ToUpper(what), Short: "Show one " + what + ", every field", Args: cobra.ExactArgs(1),
		ValidArgsFunction: complete.args(c, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			v, err := fetch(cmd.Context(), cl, args[0])
			if err != nil {
				return err
			}
			if c.json() {
				return printJSON(cmd.OutOrStdout(), v)
			}
			return printFields(cmd.OutOrStdout(), v)
		},
	}
}

// errNoSuch is a name a listing does not hold.
func errNoSuch(what, name string) error {
	return fmt.Errorf("no %s named %q (see `ferry ctl %ss list`)", what, name, what)
}

func getAgent(ctx context.Context, cl *api.Client, name string) (any, error) {
	a, err := cl.Agent(ctx, name)
	var se *api.StatusError
	if err == nil || !errors.As(err, &se) || se.Status != http.StatusNotFound {
		return a, err
	}
	// Not an id: a host name.
	all, err := cl.Agents(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, a := range all {
		if a.Name == name || (a.Name == "" && a.Hostname == name) {
			return a, nil
		}
	}
	return nil, errNoSuch("agent", name)
}

func getHost(ctx context.Context, cl *api.Client, name string) (any, error) {
	hosts, err := cl.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		if h.ID == name {
			return h, nil
		}
	}
	return nil, errNoSuch("host", name)
}

func getVM(ctx context.Context, cl *api.Client, name string) (any, error) {
	vms, err := cl.VMs(ctx)
	if err != nil {
		return nil, err
	}
	for _, v := range vms {
		if v.ID == name {
			return v, nil
		}
	}
	return nil, errNoSuch("vm", name)
}

func getMigration(ctx context.Context, cl *api.Client, id string) (any, error) {
	return cl.Migration(ctx, id)
}

// printFields prints v's JSON form as "field  value" lines, nested
// objects as dotted names, in the order the API sends them; strings from
// the network are escaped as in every table.
func printFields(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if err := walkFields(dec, "", tw); err != nil {
		return err
	}
	return tw.Flush()
}

// walkFields reads one JSON value from dec and prints its scalars under
// prefix.
func walkFields(dec *json.Decoder, prefix string, w io.Writer) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				name := fmt.Sprint(k)
				if prefix != "" {
					name = prefix + "." + name
				}
				if err := walkFields(dec, name, w); err != nil {
					return err
				}
			}
			_, err = dec.Token() // '}'
			return err
		case '[':
			var items []string
			for i := 0; dec.More(); i++ {
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					return err
				}
				var s any
				if json.Unmarshal(raw, &s) == nil {
					if _, nested := s.(map[string]any); nested {
						if err := walkFields(json.NewDecoder(bytes.NewReader(raw)), fmt.Sprintf("%s[%d]", prefix, i), w); err != nil {
							return err
						}
						continue
					}
				}
				items = append(items, scalarText(s))
			}
			if _, err := dec.Token(); err != nil { // ']'
				return err
			}
			if len(items) > 0 {
				fmt.Fprintf(w, "%s\t%s\n", q(prefix), q(strings.Join(items, ", ")))
			}
			return nil
		}
	case nil:
		return nil // absent, as far as a reader cares
	default:
		fmt.Fprintf(w, "%s\t%s\n", q(prefix), q(scalarText(t)))
	}
	return nil
}

func scalarText(v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		return x
	default:
		return fmt.Sprint(x)
	}
}

// completer lists the names an argument can take, asking the MMC (shell
// completion: `ferry completion bash|zsh|fish`).
type completer func(ctx context.Context, cl *api.Client) ([]string, error)

// completionTimeout bounds the MMC's answer: a shell waits on it.
const completionTimeout = 3 * time.Second

// args completes the first n positional arguments.
func (f completer) args(c *ctlFlags, n int) func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if f == nil || len(args) >= n {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return f.names(cmd.Context(), c, toComplete)
	}
}

// flag completes a flag's value.
func (f completer) flag(c *ctlFlags) func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return f.names(cmd.Context(), c, toComplete)
	}
}

func (f completer) names(ctx context.Context, c *ctlFlags, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	cl, err := c.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	names, err := f(ctx, cl)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	var out []cobra.Completion
	for _, n := range names {
		// Names come from agents: only those a shell can take as typed.
		if strings.HasPrefix(n, prefix) && q(n) == n && !strings.ContainsAny(n, " \t'\"\\$`") {
			out = append(out, n)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

var (
	completeAgents completer = func(ctx context.Context, cl *api.Client) ([]string, error) {
		as, err := cl.Agents(ctx, "")
		var out []string
		for _, a := range as {
			out = append(out, a.ID)
		}
		return out, err
	}
	completeHosts completer = func(ctx context.Context, cl *api.Client) ([]string, error) {
		hs, err := cl.Hosts(ctx)
		var out []string
		for _, h := range hs {
			out = append(out, h.ID)
		}
		return out, err
	}
	completeVMs completer = func(ctx context.Context, cl *api.Client) ([]string, error) {
		vs, err := cl.VMs(ctx)
		var out []string
		for _, v := range vs {
			out = append(out, v.ID)
		}
		return out, err
	}
	completeMigrations completer = func(ctx context.Context, cl *api.Client) ([]string, error) {
		ms, err := cl.Migrations(ctx)
		var out []string
		for i := len(ms) - 1; i >= 0; i-- { // newest first
			out = append(out, ms[i].ID)
		}
		return out, err
	}
)

// addGetAndCompletion gives the agents, hosts, vms and migrations groups
// their `get`, and every command that names one of those its shell
// completion (arguments, and --to/--host values).
func addGetAndCompletion(ctl *cobra.Command, c *ctlFlags) {
	gets := map[string]*cobra.Command{
		"agents":     newCtlGetCmd(c, "agent", getAgent, completeAgents),
		"hosts":      newCtlGetCmd(c, "host", getHost, completeHosts),
		"vms":        newCtlGetCmd(c, "vm", getVM, completeVMs),
		"migrations": newCtlGetCmd(c, "migration", getMigration, completeMigrations),
	}
	args := map[string]completer{
		"agents approve": completeAgents, "agents reject": completeAgents, "agents revoke": completeAgents,
		"hosts evacuate": completeHosts,
		"vms delete":     completeVMs, "vms workload": completeVMs,
		"migrate":           completeVMs,
		"migrations cancel": completeMigrations, "migrations set-bandwidth": completeMigrations, "migrations watch": completeMigrations,
	}
	for _, group := range ctl.Commands() {
		if g, ok := gets[group.Name()]; ok {
			group.AddCommand(g)
		}
	}
	var walk func(cmd *cobra.Command, path string)
	walk = func(cmd *cobra.Command, path string) {
		if f, ok := args[path]; ok && cmd.ValidArgsFunction == nil {
			cmd.ValidArgsFunction = f.args(c, 1)
		}
		for _, flag := range []string{"to", "host"} {
			if cmd.LocalFlags().Lookup(flag) != nil {
				_ = cmd.RegisterFlagCompletionFunc(flag, completeHosts.flag(c))
			}
		}
		for _, sub := range cmd.Commands() {
			walk(sub, strings.TrimSpace(path+" "+sub.Name()))
		}
	}
	for _, sub := range ctl.Commands() {
		walk(sub, sub.Name())
	}
}
