package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// BenchmarkNATPunch measures hole punching (issue #19) on the lab's `wan`
// profile (50 ms RTT, 1 % loss, 100 Mbit/s) with the MMC at the hub, for
// the NAT pairs that punch: per cell, FERRY_NAT_TRIALS (default 20)
// migrations of a small VM back and forth, each introducing the agents
// anew. It reports the share that found a direct path, the
// introduction's duration (the MMC's first order to the link up: the
// record's link_ms) and the time from that order to the migration
// stream's first byte at the destination (first_byte_ms) against the
// target of 3 RTT + 200 ms. Run it alone:
//
//	go test ./e2e -run '^$' -bench BenchmarkNATPunch -benchtime 1x -timeout 30m
func BenchmarkNATPunch(b *testing.B) {
	requireRoot(b)
	trials := 20
	if v := os.Getenv("FERRY_NAT_TRIALS"); v != "" {
		var err error
		if trials, err = strconv.Atoi(v); err != nil || trials < 1 {
			b.Fatalf("FERRY_NAT_TRIALS=%q: want a positive count", v)
		}
	}
	const rtt = 50 * time.Millisecond
	target := 3*rtt + 200*time.Millisecond
	for _, cell := range [][2]string{{"eim", "eim"}, {"eim", "symmetric"}, {"symmetric", "eim"}, {"", "symmetric"}} {
		b.Run(orNone(cell[0])+"-"+orNone(cell[1]), func(b *testing.B) {
			c := natWANCluster(b, cell[0], cell[1], "16MiB", "cpu=0.05,dirty=100KB/s")
			var links, firsts, starts []time.Duration
			direct := 0
			on := "h1"
			for i := range max(trials, b.N) {
				to := map[string]string{"h1": "h2", "h2": "h1"}[on]
				var created struct {
					ID string `json:"id"`
				}
				if err := c.ctl(&created, "migrate", "web", "--to", to); err != nil {
					b.Fatal(err)
				}
				m, err := c.watch(created.ID)
				if err == nil && m.Path == "direct" {
					direct++
					links = append(links, time.Duration(m.LinkMS)*time.Millisecond)
					firsts = append(firsts, time.Duration(m.FirstByteMS)*time.Millisecond)
					// Planned → transfer on record: the introduction,
					// the destination's preparation and the write; the
					// source's start order (half an RTT to it) follows.
					starts = append(starts, m.Started.Sub(m.Created))
					on = to
				} else {
					var ms []migrationView
					_ = c.ctl(&ms, "migrations", "list")
					for _, x := range ms {
						if x.ID == created.ID {
							b.Logf("trial %d: %s: %s", i, x.State, x.Error)
						}
					}
				}
				c.waitFor("web reported", func() bool { return c.vmState(on, "web") == "running" })
			}
			slices.Sort(links)
			slices.Sort(firsts)
			slices.Sort(starts)
			n := max(trials, b.N)
			p50, p99 := percentile(links, 0.50), percentile(links, 0.99)
			b.ReportMetric(100*float64(direct)/float64(n), "direct-%")
			b.ReportMetric(float64(p50.Milliseconds()), "p50-link-ms")
			b.ReportMetric(float64(p99.Milliseconds()), "p99-link-ms")
			if len(links) == 0 {
				b.Fatalf("%s: no direct path in %d trials", b.Name(), n)
			}
			f50, f99 := percentile(firsts, 0.50), percentile(firsts, 0.99)
			b.ReportMetric(float64(f50.Milliseconds()), "p50-first-byte-ms")
			b.ReportMetric(float64(f99.Milliseconds()), "p99-first-byte-ms")
			fmt.Printf("%s: %d/%d direct; introduction → link up: p50 %v, p99 %v, max %v; introduction → first migration byte: p50 %v, p99 %v, max %v (target %v); planned → transfer started: p50 %v, p99 %v\n",
				b.Name(), direct, n, p50, p99, links[len(links)-1], f50, f99, firsts[len(firsts)-1], target, percentile(starts, 0.5), percentile(starts, 0.99))
		})
	}
}

// BenchmarkRelayedVsDirect compares a migration whose link runs through
// the MMC's relay at the hub (both sites behind symmetric NATs) with one
// over a punched direct path (both behind eim NATs) on the `wan` profile:
// the same VM, the same path delay and loss (the hub sits halfway), so
// the difference is the relay's. FERRY_RELAY_TRIALS (default 3)
// migrations of FERRY_RELAY_VM (default 128MiB) each way per cell.
//
//	go test ./e2e -run '^$' -bench BenchmarkRelayedVsDirect -benchtime 1x -timeout 30m
func BenchmarkRelayedVsDirect(b *testing.B) {
	requireRoot(b)
	trials, mem := 3, "128MiB"
	if v := os.Getenv("FERRY_RELAY_TRIALS"); v != "" {
		var err error
		if trials, err = strconv.Atoi(v); err != nil || trials < 1 {
			b.Fatalf("FERRY_RELAY_TRIALS=%q: want a positive count", v)
		}
	}
	if v := os.Getenv("FERRY_RELAY_VM"); v != "" {
		mem = v
	}
	goodput := map[string]float64{}
	for _, cell := range []struct{ name, nat, path string }{{"direct", "eim", "direct"}, {"relayed", "symmetric", "relayed"}} {
		b.Run(cell.name, func(b *testing.B) {
			c := natWANCluster(b, cell.nat, cell.nat, mem, "fill=1,cpu=0.05,dirty=100KB/s")
			var rates []float64
			on := "h1"
			for range max(trials, b.N) {
				to := map[string]string{"h1": "h2", "h2": "h1"}[on]
				var created struct {
					ID string `json:"id"`
				}
				if err := c.ctl(&created, "migrate", "web", "--to", to); err != nil {
					b.Fatal(err)
				}
				m, err := c.watch(created.ID)
				if err != nil || m.Path != cell.path {
					b.Fatalf("migration over %q, want %s: %v (%s)", m.Path, cell.path, err, m.Error)
				}
				rates = append(rates, float64(m.BytesOnWire)*8/(float64(m.TotalMS)/1000)/1e6)
				on = to
				c.waitFor("web reported", func() bool { return c.vmState(on, "web") == "running" })
			}
			slices.Sort(rates)
			med := rates[len(rates)/2]
			goodput[cell.name] = med
			b.ReportMetric(med, "Mbit/s")
			fmt.Printf("%s: migration goodput (bytes on the wire / total time) median %.1f Mbit/s over %d migrations of %s (%v)\n", b.Name(), med, len(rates), mem, rates)
		})
	}
	if d, r := goodput["direct"], goodput["relayed"]; d > 0 && r > 0 {
		fmt.Printf("relayed / direct: %.2f× (target ≥ 0.9×)\n", r/d)
	}
}

// natWANCluster is a `wan`-profile NAT lab with a hub, the MMC (with its
// relay) at the hub, agents h1 and h2 in the sites and a VM "web" of mem
// with workload running on h1.
func natWANCluster(b *testing.B, natA, natB, mem, workload string) *cluster {
	l := upNATLab(b, natA, natB, "--profile", "wan")
	c := newClusterIn(b, l.hubNetns, l.hubAddr+":7946", "--relay-ports", "40000-40099")
	c.agentNetns["h1"], c.agentNetns["h2"] = l.netns[0], l.netns[1]
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		b.Fatal(err)
	}
	for _, h := range []string{"h1", "h2"} {
		c.startAgent(h, "--token", tok.Token, "--site", h, "--report-interval", "300ms")
	}
	c.waitFor("both hosts online", func() bool {
		var hosts []hostView
		_ = c.ctl(&hosts, "hosts", "list")
		return len(hosts) == 2 && hosts[0].Online && hosts[1].Online
	})
	if err := c.ctl(nil, "vms", "create", "web", "--host", "h1", "--memory", mem, "--workload", workload); err != nil {
		b.Fatal(err)
	}
	c.waitFor("web reported on h1", func() bool { return c.vmState("h1", "web") == "running" })
	return c
}
