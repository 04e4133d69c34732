package e2e

import (
	"testing"
	"time"
)

// kill ends a process as a crash would (SIGKILL: no goodbye to anyone).
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// TestMigrationCrashes: real processes crash in the middle of a transfer
// (64 MiB of incompressible memory through a 40 Mbit/s cap: about 13 s).
// When the source's agent is killed, the stream breaks, the source VM
// resumes itself, the migration is rolled back once the agent is back,
// and no copy is left at the destination. When the destination's agent
// is killed, likewise. When the MMC is killed and restarted, the agents'
// transfer goes on and the restarted MMC completes it. Each case ends
// with exactly one running copy.
func TestMigrationCrashes(t *testing.T) {
	for _, tc := range []struct {
		name, kill, want string
	}{
		{"source agent", "h1", "failed"},
		{"destination agent", "h2", "failed"},
		{"mmc", "mmc", "completed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t)
			start, procs := c.startSites(t)
			if err := c.ctl(nil, "vms", "create", "vm", "--host", "h1", "--memory", "64MiB", "--workload", "fill=1,dirty=1MB/s"); err != nil {
				t.Fatal(err)
			}
			c.waitFor("vm running on h1", func() bool { return c.vmState("h1", "vm") == "running" })
			var created struct {
				ID string `json:"id"`
			}
			if err := c.ctl(&created, "migrate", "vm", "--to", "h2", "--max-bandwidth", "40mbit"); err != nil {
				t.Fatal(err)
			}
			var m migrationView
			c.waitFor("a fifth transferred", func() bool {
				var ms []migrationView
				c.ctl(&ms, "migrations", "list")
				return len(ms) == 1 && ms[0].State == "transferring" && ms[0].Progress > 0.2
			})
			switch tc.kill {
			case "mmc":
				c.mmc.kill()
				time.Sleep(time.Second)
				c.startMMC()
			default:
				procs[tc.kill].kill()
				time.Sleep(2 * time.Second)
				start(tc.kill)
			}
			// Up to 90 s: agents notice a crashed MMC only by their
			// connection's idle timeout (30 s; SUDP has no stateless
			// reset yet), then reconnect with backoff.
			for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				var ms []migrationView
				if c.ctl(&ms, "migrations", "list") == nil && len(ms) == 1 {
					m = ms[0]
					if m.State == "completed" || m.State == "failed" || m.State == "cancelled" {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no outcome after 90 s: %+v", m)
				}
			}
			if m.State != tc.want {
				t.Fatalf("outcome %s (%s), want %s", m.State, m.Error, tc.want)
			}
			home, other := "h1", "h2"
			if m.State == "completed" {
				home, other = "h2", "h1"
				if !m.Verified || m.BytesOnWire < 64<<20 {
					t.Fatalf("completed: %+v", m)
				}
			}
			c.waitFor("vm running on "+home+" only", func() bool {
				return c.vmState(home, "vm") == "running" && c.vmState(other, "vm") == ""
			})
		})
	}
}
