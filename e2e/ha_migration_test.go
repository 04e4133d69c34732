package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// runningCopies counts the processes of VM id running on the hosts,
// asking each host's simulated hypervisor directly (not the MMC): the
// ground truth of "one running copy".
func (c *haCluster) runningCopies(id string) (n int, on []string) {
	for host, dir := range c.agentDirs {
		d, err := simDriver(filepath.Join(dir, "vms"))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		vms, _ := d.List(ctx)
		cancel()
		for _, v := range vms {
			if v.ID == id && v.State == hypervisor.StateRunning {
				n++
				on = append(on, host)
			}
		}
	}
	return n, on
}

// ctlAny runs ctl at the first member that answers.
func (c *haCluster) ctlAny(out any, args ...string) error {
	var err error
	for i := range c.members {
		if c.members[i].p.exited(0) {
			continue
		}
		if err = c.ctl(i, out, args...); err == nil {
			return nil
		}
	}
	return err
}

// TestMigrationLeaderLoss is the migration failure matrix with the MMC
// leader lost mid-migration: killed (SIGKILL) or cut off (SIGSTOP for
// longer than an election, then SIGCONT: it wakes up deposed, as a leader
// behind a healed partition does), at the start of the migration, while
// memory streams and near its end. The agents own the job; the new
// leader picks the migration up from the replicated record. Whatever the
// outcome, exactly one copy of the VM runs — checked against the hosts'
// hypervisors every 100 ms throughout, not only at the end.
func TestMigrationLeaderLoss(t *testing.T) {
	for _, tc := range []struct {
		name  string
		when  func(m migrationView) bool
		pause bool // SIGSTOP instead of SIGKILL
	}{
		{"killed at the start", func(m migrationView) bool { return true }, false},
		{"killed while transferring", func(m migrationView) bool { return m.State == "transferring" && m.Progress > 0.3 }, false},
		{"killed near the switch-over", func(m migrationView) bool { return m.Progress > 0.85 || m.State == "switch-over" }, false},
		{"partitioned while transferring", func(m migrationView) bool { return m.State == "transferring" && m.Progress > 0.3 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newHACluster(t)
			c.startTwoHosts(t)
			if err := c.ctl(0, nil, "vms", "create", "vm", "--host", "h1", "--memory", "48MiB", "--workload", "fill=1,dirty=1MB/s"); err != nil {
				t.Fatal(err)
			}
			c.waitFor(30*time.Second, "vm running on h1", func() bool { n, on := c.runningCopies("vm"); return n == 1 && on[0] == "h1" })

			// One running copy, always: a sampler asks both hypervisors
			// throughout.
			ctx, stopSampling := context.WithCancel(context.Background())
			var sampler sync.WaitGroup
			var violation string
			sampler.Add(1)
			go func() {
				defer sampler.Done()
				for ctx.Err() == nil {
					if n, on := c.runningCopies("vm"); n > 1 {
						violation = fmt.Sprintf("%d running copies at %s on %v", n, time.Now().Format("15:04:05.000"), on)
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			}()

			var created struct {
				ID string `json:"id"`
			}
			if err := c.ctl(0, &created, "migrate", "vm", "--to", "h2", "--max-bandwidth", "40mbit"); err != nil {
				t.Fatal(err)
			}
			c.waitFor(60*time.Second, "the moment to lose the leader", func() bool {
				var ms []migrationView
				return c.ctlAny(&ms, "migrations", "list") == nil && len(ms) == 1 && tc.when(ms[0])
			})
			lost := c.leader(0)
			if lost < 0 {
				lost = c.leader(1)
			}
			if lost < 0 {
				t.Fatal("no leader")
			}
			p := c.members[lost].p
			if tc.pause {
				_ = p.cmd.Process.Signal(syscall.SIGSTOP)
				time.Sleep(5 * time.Second) // several election timeouts
				_ = p.cmd.Process.Signal(syscall.SIGCONT)
			} else {
				c.kill(lost)
			}
			var m migrationView
			c.waitFor(120*time.Second, "an outcome", func() bool {
				var ms []migrationView
				if c.ctlAny(&ms, "migrations", "list") != nil || len(ms) != 1 {
					return false
				}
				m = ms[0]
				return m.State == "completed" || m.State == "failed" || m.State == "cancelled"
			})
			t.Logf("leader mmc%d %s: migration %s (%s)", lost+1, map[bool]string{true: "partitioned", false: "killed"}[tc.pause], m.State, m.Error)
			home := "h1"
			if m.State == "completed" {
				home = "h2"
				if !m.Verified {
					t.Fatalf("completed but not verified: %+v", m)
				}
			}
			c.waitFor(30*time.Second, "the VM running on "+home+" only", func() bool {
				n, on := c.runningCopies("vm")
				return n == 1 && on[0] == home
			})
			stopSampling()
			sampler.Wait()
			if violation != "" {
				t.Fatal(violation)
			}
		})
	}
}

// destroyVMs removes every simulated VM the agents left.
func (c *haCluster) destroyVMs() {
	for _, dir := range c.agentDirs {
		d, err := simDriver(filepath.Join(dir, "vms"))
		if err != nil {
			continue
		}
		vms, _ := d.List(context.Background())
		for _, vm := range vms {
			d.Destroy(context.Background(), vm.ID)
		}
	}
}

// startTwoHosts enrols h1 (site east) and h2 (site west) by a join token,
// removes their VMs when the test ends, and waits until both are online.
func (c *haCluster) startTwoHosts(t *testing.T) {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(0, &tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	c.startAgent("h1", "--token", tok.Token, "--site", "east", "--report-interval", "300ms")
	c.startAgent("h2", "--token", tok.Token, "--site", "west", "--report-interval", "300ms")
	t.Cleanup(func() { c.destroyVMs() })
	c.waitFor(30*time.Second, "both hosts online", func() bool { return c.online(0) == 2 })
}
