package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkEvacuation evacuates a site of eight simulated VMs (16–112
// MiB, 512 MiB in all, every page written, dirty rates 0–1 MB/s) across
// the lab's `wan` profile (100 Mbit/s, 50 ms RTT, 1 % loss) to the
// other site, with the default pacing (two migrations at once on the
// link), evacuates them back with one at a time (per-link 1), then
// moves them again by hand, one `ferry ctl migrate` after the other: the
// same VMs, the same link. It reports each run's total time against the
// ideal — the memory over the link's rate — and the mean time a VM
// waited to be moved. FERRY_EVAC_TRIALS (default 1) repeats the pair;
// FERRY_EVAC_PER_LINK=N runs only the pacing N; FERRY_EVAC_NO_RESUME=1
// starts every migration link from its initial window.
//
//	go test ./e2e -run '^$' -bench BenchmarkEvacuation -benchtime 1x -timeout 30m
func BenchmarkEvacuation(b *testing.B) {
	requireRoot(b)
	trials := 1
	if v := os.Getenv("FERRY_EVAC_TRIALS"); v != "" {
		if _, err := fmt.Sscan(v, &trials); err != nil || trials < 1 {
			b.Fatalf("FERRY_EVAC_TRIALS=%q: want a positive count", v)
		}
	}
	l := upLab(b, "wan")
	c := newClusterIn(b, l.netns[0], l.addr[0]+":7946")
	for _, h := range []string{"a1", "a2"} {
		c.agentNetns[h] = l.netns[0]
	}
	for _, h := range []string{"b1", "b2"} {
		c.agentNetns[h] = l.netns[1]
	}
	if os.Getenv("FERRY_EVAC_NO_RESUME") != "" {
		// Every migration link from its initial window: what resuming
		// the path's rate gains.
		c.agentExtra = []string{"--no-rate-resume"}
	}
	c.startSitedHosts(b, "a1", "a2", "b1", "b2")
	vms := map[string][3]string{
		"v16":  {"a1", "16MiB", "fill=1,cpu=0.02"},
		"v32":  {"a2", "32MiB", "fill=1,cpu=0.02"},
		"v48":  {"a1", "48MiB", "fill=1,cpu=0.05,dirty=200KB/s"},
		"v64a": {"a2", "64MiB", "fill=1,cpu=0.02"},
		"v64b": {"a1", "64MiB", "fill=1,cpu=0.05,dirty=500KB/s"},
		"v80":  {"a2", "80MiB", "fill=1,cpu=0.05,dirty=100KB/s"},
		"v96":  {"a1", "96MiB", "fill=1,cpu=0.02"},
		"v112": {"a2", "112MiB", "fill=1,cpu=0.05,dirty=1MB/s"},
	}
	c.createVMs(b, vms)
	const linkRate = 100e6 / 8 // bytes/s: the profile's rate
	paces := []int{2, 1}
	if v := os.Getenv("FERRY_EVAC_PER_LINK"); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
			b.Fatalf("FERRY_EVAC_PER_LINK=%q: want a positive count", v)
		}
		paces = []int{n}
	}
	from, to := "a", "b"
	for trial := range max(trials, b.N) {
		for _, perLink := range paces {
			var created struct {
				ID string `json:"id"`
			}
			if err := c.ctl(&created, "sites", "evacuate", from, "--to", to, "--per-link", fmt.Sprint(perLink)); err != nil {
				b.Fatal(err)
			}
			var g evacuationView
			if err := c.ctl(&g, "evacuations", "watch", created.ID); err != nil {
				_ = c.ctl(&g, "evacuations", "get", created.ID)
				b.Fatalf("evacuation %s: %v; %+v", created.ID, err, g)
			}
			var mem, wire uint64
			var lines []string
			var waited time.Duration
			var downs []int64
			for _, it := range g.Items {
				if it.State != "completed" || !it.Verified {
					b.Fatalf("%s: %s, verified %v (%s)", it.VM, it.State, it.Verified, it.Why)
				}
				mem += it.Memory
				wire += it.BytesOnWire
				waited += it.Finished.Sub(g.Created)
				downs = append(downs, it.DowntimeMS)
				lines = append(lines, fmt.Sprintf("%s %d MiB %.1f–%.1fs (%.1fs, %.0f Mbit/s)", it.VM, it.Memory>>20,
					it.Started.Sub(g.Created).Seconds(), it.Finished.Sub(g.Created).Seconds(), float64(it.TotalMS)/1000, float64(it.Memory)*8/float64(it.TotalMS)/1e3))
			}
			total := time.Duration(g.TotalMS) * time.Millisecond
			ideal := time.Duration(float64(mem) / linkRate * float64(time.Second))
			ratio := total.Seconds() / ideal.Seconds()
			meanDone := waited / time.Duration(len(g.Items))
			slices.Sort(downs)
			fmt.Printf("trial %d, %s→%s, %d per link: %d VMs, %d MiB in %.1f s = %.3f× the ideal %.1f s (target ≤ 1.15×); "+
				"mean time to a VM moved %.1f s; %.1f Mbit/s of memory; %.1f MiB on the wire; downtime median %d ms, max %d ms; items (start–end from the group's start): %s\n",
				trial+1, from, to, perLink, len(g.Items), mem>>20, total.Seconds(), ratio, ideal.Seconds(),
				meanDone.Seconds(), float64(mem)*8/total.Seconds()/1e6, float64(wire)/(1<<20), downs[len(downs)/2], downs[len(downs)-1], strings.Join(lines, ", "))
			b.ReportMetric(ratio, fmt.Sprintf("x-ideal-per-link-%d", perLink))
			b.ReportMetric(meanDone.Seconds(), fmt.Sprintf("s-mean-done-per-link-%d", perLink))
			where := c.oneCopyEach(b, slices.Collect(mapKeys(vms)))
			for name, host := range where {
				if !strings.HasPrefix(host, to) {
					b.Fatalf("%s on %s after evacuating %s to %s", name, host, from, to)
				}
			}
			from, to = to, from
		}
		if os.Getenv("FERRY_EVAC_PER_LINK") == "" {
			c.migrateOneByOne(b, vms, from, to, linkRate)
			from, to = to, from
		}
	}
}

// migrateOneByOne moves the VMs from site from to site to by hand, one
// `ferry ctl migrate` after the other's end, smallest first, the
// destinations alternating between the site's two hosts: what an
// operator without evacuations would do.
func (c *cluster) migrateOneByOne(b *testing.B, vms map[string][3]string, from, to string, linkRate float64) {
	type vm struct {
		name string
		mem  uint64
	}
	var order []vm
	for _, hosts := range c.vmsOn() {
		for _, v := range hosts {
			if _, ok := vms[v.ID]; ok {
				order = append(order, vm{v.ID, v.Memory})
			}
		}
	}
	slices.SortFunc(order, func(x, y vm) int { return int(x.mem>>20) - int(y.mem>>20) })
	start := time.Now()
	var mem uint64
	var waited time.Duration
	for i, v := range order {
		var created struct {
			ID string `json:"id"`
		}
		if err := c.ctl(&created, "migrate", v.name, "--to", fmt.Sprintf("%s%d", to, 1+i%2)); err != nil {
			b.Fatal(err)
		}
		m, err := c.watch(created.ID)
		if err != nil || !m.Verified {
			b.Fatalf("%s: %v (%s)", v.name, err, m.Error)
		}
		mem += v.mem
		waited += time.Since(start)
	}
	total := time.Since(start)
	ideal := time.Duration(float64(mem) / linkRate * float64(time.Second))
	fmt.Printf("one by one, %s→%s (ferry ctl migrate, then watch): %d VMs, %d MiB in %.1f s = %.3f× the ideal %.1f s; mean time to a VM moved %.1f s\n",
		from, to, len(order), mem>>20, total.Seconds(), total.Seconds()/ideal.Seconds(), ideal.Seconds(), (waited / time.Duration(len(order))).Seconds())
	b.ReportMetric(total.Seconds()/ideal.Seconds(), "x-ideal-one-by-one")
}
