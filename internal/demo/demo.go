// Package demo runs the whole system on one machine with no configuration
// (`ferry demo`): an MMC, two sites of two hosts each (agents with the
// simulated hypervisor, real SUDP between them on loopback), a handful of
// VMs, an SLA violation, and the policy engine live-migrating a VM across
// sites, shown as a live view and summed up at the end.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/units"
)

// Options configure a demo run.
type Options struct {
	Dir     string        // working directory ("" = a fresh temporary one, removed at the end)
	Bin     string        // the ferry binary for agents and VMs ("" = this executable)
	Keep    bool          // leave the cluster running until ctx ends
	Timeout time.Duration // for the scripted part (default 3 min)
	// View receives the live view (nil: none); TTY redraws it in place.
	View io.Writer
	TTY  bool
	// Notice receives the few lines meant for the user either way (where
	// the cluster is, how to reach it with ferry ctl).
	Notice io.Writer
	// WAN, if set, names a WAN lab profile: the sites go on either side
	// of an emulated WAN link (root only).
	WAN string
	// HA runs three MMCs (child processes, one raft cluster) instead of
	// one, and kills the leader with SIGKILL while the migration is in
	// flight; the killed member is restarted at the end.
	HA bool
}

// Summary is the demo's final report (`ferry demo --json`).
type Summary struct {
	MigrationsCompleted int                `json:"migrations_completed"`
	MigrationsFailed    int                `json:"migrations_failed"`
	Migrations          []MigrationSummary `json:"migrations"`
	Admin               string             `json:"admin"`
	DataDir             string             `json:"data_dir,omitempty"`
	HA                  *HASummary         `json:"ha,omitempty"` // --ha: the takeover
}

// MigrationSummary is one migration in the summary.
type MigrationSummary struct {
	ID          string `json:"id"`
	VM          string `json:"vm"`
	From        string `json:"from"`
	To          string `json:"to"`
	Reason      string `json:"reason"`
	State       string `json:"state"`
	By          string `json:"by"`
	TotalMS     int64  `json:"total_ms"`
	DowntimeMS  int64  `json:"downtime_ms"`
	BytesOnWire uint64 `json:"bytes_on_wire"`
	Verified    bool   `json:"verified"`
	Error       string `json:"error,omitempty"`
}

// The demo's world: two sites of two hosts, and its VMs.
var (
	hosts = []host{{"east-1", "east"}, {"east-2", "east"}, {"west-1", "west"}, {"west-2", "west"}}
	vms   = []api.VMCreate{
		{Name: "web", Host: "east-1", Memory: 256 << 20, VCPUs: 1, Workload: "cpu=0.1,dirty=4MB/s,net=2MB/s"},
		{Name: "api", Host: "east-1", Memory: 128 << 20, VCPUs: 1, Workload: "cpu=0.05,dirty=1MB/s,net=1MB/s"},
		{Name: "db", Host: "east-2", Memory: 256 << 20, VCPUs: 1, Workload: "cpu=0.1,dirty=2MB/s"},
		{Name: "cache", Host: "east-2", Memory: 128 << 20, VCPUs: 1, Workload: "cpu=0.05,dirty=1MB/s"},
		{Name: "batch", Host: "west-1", Memory: 128 << 20, VCPUs: 1, Workload: "cpu=0.05"},
	}
	// The SLA violation: web's CPU jumps over the policy's 50% for longer
	// than its 3 s window. (The VMs' CPU is real: every demo host shares
	// this machine's cores, so the loads stay modest.)
	overloaded     = "web"
	overload       = "cpu=0.7,dirty=4MB/s,net=2MB/s"
	demoPolicy     = `{"mode":"auto","window":"3s","cooldown":"10m","max_concurrent":1,"sla":{"cpu":0.5},"host_cpu_max":0.9,"host_mem_max":0.9}`
	policyDescribe = "auto · SLA: VM CPU > 50% for 3 s"
)

// Run runs the demo and returns its summary.
func Run(ctx context.Context, o Options) (Summary, error) {
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Minute
	}
	if o.Notice == nil {
		o.Notice = io.Discard
	}
	if o.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return Summary{}, err
		}
		o.Bin = exe
	}
	if o.HA && o.WAN != "" {
		// The lab has two namespaces, one per site; a third MMC at a
		// witness location has no place in it yet.
		return Summary{}, errors.New("demo: --ha and --wan together are not supported")
	}
	temp := o.Dir == ""
	if temp {
		d, err := os.MkdirTemp("", "ferry-demo-")
		if err != nil {
			return Summary{}, err
		}
		o.Dir = d
	}
	var sites [2]site // east, west: this namespace on loopback
	var lab *wanLab
	if o.WAN != "" {
		var err error
		if lab, err = upWAN(ctx, o.Bin, o.WAN); err != nil {
			return Summary{}, err
		}
		sites = lab.sites
		fmt.Fprintf(o.Notice, "WAN lab %q up: site east in %s (%s), site west in %s (%s), profile %s\n",
			labName, sites[0].netns, sites[0].addr, sites[1].netns, sites[1].addr, o.WAN)
	}
	var c *cluster
	var err error
	if o.HA {
		c, err = startHA(ctx, o.Dir, o.Bin)
	} else {
		c, err = startMMC(ctx, o.Dir, sites[0])
	}
	if err != nil {
		if lab != nil {
			_ = lab.down()
		}
		return Summary{}, err
	}
	c.bin = o.Bin
	c.sites = map[string]site{"east": sites[0], "west": sites[1]}
	title := policyDescribe
	if o.WAN != "" {
		title += " · sites across the WAN lab (" + o.WAN + ")"
	}
	if o.HA {
		title += " · 3 MMCs, the leader killed mid-migration"
	}
	v := newView(o.View, o.TTY, c.admin, title)
	sum, runErr := script(ctx, c, v, o.Timeout)
	sum.Admin = c.admin
	if o.Keep && runErr == nil {
		sum.DataDir = o.Dir
		prefix := ""
		if lab != nil {
			prefix = "ip netns exec " + sites[0].netns + " " // the admin API is in the east site
		}
		more := ""
		if c.ha != nil {
			more = "; ferry ctl mmcs list (any member's admin API serves every command)"
		}
		notice := fmt.Sprintf("The cluster keeps running; try:\n  export FERRY_ADMIN=%s FERRY_TOKEN=$(cat %s)\n  %sferry ctl hosts list; %sferry ctl migrate db --to west-2%s\nCtrl-C stops it.",
			c.admin, c.tokenFile, prefix, prefix, more)
		if o.TTY {
			v.footer = notice
		} else {
			fmt.Fprintln(o.Notice, "\n"+notice)
		}
		v.keepDrawing(ctx, c.cl)
	}
	stopErr := c.stop()
	if lab != nil {
		stopErr = errors.Join(stopErr, lab.down())
	}
	if temp {
		os.RemoveAll(o.Dir)
	}
	return sum, errors.Join(runErr, stopErr)
}

// script is the demo's story.
func script(ctx context.Context, c *cluster, v *view, timeout time.Duration) (Summary, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var sum Summary
	tok, err := c.cl.CreateToken(ctx, 10*time.Minute, len(hosts))
	if err != nil {
		return sum, err
	}
	if c.ha != nil {
		v.cluster = c.ha.roles(ctx, c.ha.members[0])
		v.event("%d MMCs up as one raft cluster (%s); enrolling %d agents in 2 sites with a one-time join token, their bundle listing every MMC",
			haMembers, v.cluster, len(hosts))
	} else {
		v.event("MMC up; enrolling %d agents in 2 sites with a one-time join token", len(hosts))
	}
	for i, h := range hosts {
		if err := c.startAgent(h, tok.Token, i, c.sites[h.site]); err != nil {
			return sum, err
		}
	}
	if err := c.waitOnline(ctx, len(hosts), time.Minute); err != nil {
		return sum, err
	}
	v.event("all agents enrolled and online (mutually authenticated SUDP sessions)")
	if _, err := c.cl.SetPolicy(ctx, json.RawMessage(demoPolicy)); err != nil {
		return sum, err
	}
	v.event("policy v1 pushed to every agent: %s", policyDescribe)
	for _, vm := range vms {
		if _, err := c.cl.CreateVM(ctx, vm); err != nil {
			return sum, fmt.Errorf("demo: create %s: %w", vm.Name, err)
		}
		v.event("VM %s started on %s (%s, %s)", vm.Name, vm.Host, units.FormatBytes(vm.Memory), vm.Workload)
	}
	if err := v.drawFor(ctx, c.cl, 4*time.Second); err != nil {
		return sum, err
	}
	if err := c.cl.SetWorkload(ctx, overloaded, overload); err != nil {
		return sum, err
	}
	v.event("VM %s overloaded: workload now %s — an SLA violation once it lasts 3 s", overloaded, overload)
	// With --ha the leader is killed once the migration is under way (or
	// after it, if the view saw it only once it had ended).
	var inFlight func(api.Migration) bool
	if c.ha != nil {
		inFlight = func(m api.Migration) bool {
			return m.State == migration.Transferring || m.State == migration.Postcopy || m.State == migration.SwitchOver
		}
	}
	m, err := v.followMigration(ctx, c.cl, overloaded, inFlight)
	if err != nil {
		return sum, err
	}
	if c.ha != nil {
		during := ""
		if !ended(m) {
			during = m.ID + " " + string(m.State)
		}
		sum.HA, err = c.failover(ctx, v, during)
		if err != nil {
			return sum, err
		}
		if !ended(m) {
			if m, err = v.followMigration(ctx, c.cl, overloaded, nil); err != nil {
				return sum, err
			}
		}
	}
	// Let the destination report the VM before the last frame.
	_ = v.drawFor(ctx, c.cl, 2*time.Second)
	if c.ha != nil {
		if err := c.rejoin(ctx, v, sum.HA); err != nil {
			return sum, err
		}
	}
	ms, err := c.cl.Migrations(ctx)
	if err != nil {
		return sum, err
	}
	for _, x := range ms {
		sum.Migrations = append(sum.Migrations, MigrationSummary{ID: x.ID, VM: x.VM, From: x.From, To: x.To, Reason: x.Reason,
			State: string(x.State), By: x.By, TotalMS: x.TotalMS, DowntimeMS: x.DowntimeMS, BytesOnWire: x.BytesOnWire,
			Verified: x.Verified, Error: x.Error})
		switch x.State {
		case "completed":
			sum.MigrationsCompleted++
		case "failed":
			sum.MigrationsFailed++
		}
	}
	if m.State != "completed" {
		return sum, fmt.Errorf("demo: migration %s of %s %s: %s", m.ID, m.VM, m.State, m.Error)
	}
	return sum, nil
}

// PrintSummary writes the summary for people.
func PrintSummary(w io.Writer, s Summary) {
	fmt.Fprintf(w, "\nSummary: %d migration(s) completed, %d failed\n", s.MigrationsCompleted, s.MigrationsFailed)
	for _, m := range s.Migrations {
		fmt.Fprintf(w, "  %s  %s %s → %s  %s by %s\n      reason: %s\n", m.ID, m.VM, m.From, m.To, m.State, m.By, m.Reason)
		if m.State == "completed" {
			fmt.Fprintf(w, "      total %d ms · downtime %d ms · %s on the wire · memory verified: %v\n",
				m.TotalMS, m.DowntimeMS, units.FormatBytes(m.BytesOnWire), m.Verified)
		} else if m.Error != "" {
			fmt.Fprintf(w, "      %s\n", m.Error)
		}
	}
	if h := s.HA; h != nil {
		during := "between migrations"
		if h.KilledDuring != "" {
			during = "during " + h.KilledDuring
		}
		fmt.Fprintf(w, "  MMC failover: %s (leader) killed %s; %s elected after %d ms, first write after %d ms, all agents re-attached after %d ms",
			h.Killed, during, h.NewLeader, h.ElectedMS, h.FailoverMS, h.AgentsReattachedMS)
		if h.Rejoined {
			fmt.Fprintf(w, "; %s rejoined as a follower %d ms after its restart", h.Killed, h.RejoinedMS)
		}
		fmt.Fprintln(w)
	}
}
