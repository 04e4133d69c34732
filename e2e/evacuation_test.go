package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// evacuationView is `ferry ctl evacuations watch|get -o json`.
type evacuationView struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	PerLink   int       `json:"per_link"`
	Completed int       `json:"completed"`
	Failed    int       `json:"failed"`
	Cancelled int       `json:"cancelled"`
	Running   int       `json:"running"`
	Queued    int       `json:"queued"`
	TotalMS   int64     `json:"total_ms"`
	Created   time.Time `json:"created"`
	Items     []struct {
		VM          string    `json:"vm"`
		From        string    `json:"from"`
		To          string    `json:"to"`
		State       string    `json:"state"`
		Migration   string    `json:"migration"`
		Why         string    `json:"why"`
		Memory      uint64    `json:"memory"`
		Verified    bool      `json:"verified"`
		TotalMS     int64     `json:"total_ms"`
		DowntimeMS  int64     `json:"downtime_ms"`
		BytesOnWire uint64    `json:"bytes_on_wire"`
		Started     time.Time `json:"started"`
		Finished    time.Time `json:"finished"`
	} `json:"items"`
}

// startSitedHosts is startHosts with each host in the site its name
// starts with ("a1" in site a).
func (c *cluster) startSitedHosts(t testing.TB, names ...string) {
	t.Helper()
	c.startHostsIn(t, func(h string) string { return h[:1] }, names...)
}

// createVMs creates each VM (name → host, memory, workload) and waits
// until every one is reported running where it was created.
func (c *cluster) createVMs(t testing.TB, vms map[string][3]string) {
	for name, v := range vms {
		if err := c.ctl(nil, "vms", "create", name, "--host", v[0], "--memory", v[1], "--workload", v[2]); err != nil {
			t.Fatal(err)
		}
	}
	c.waitFor("every VM running", func() bool {
		for name, v := range vms {
			if c.vmState(v[0], name) != "running" {
				return false
			}
		}
		return true
	})
}

// oneCopyEach checks that every VM named is reported by exactly one
// host, running, and returns where.
func (c *cluster) oneCopyEach(t testing.TB, names []string) map[string]string {
	t.Helper()
	where := map[string]string{}
	var extra []string
	for host, vms := range c.vmsOn() {
		for _, v := range vms {
			if _, dup := where[v.ID]; dup {
				extra = append(extra, v.ID+" also on "+host)
			}
			where[v.ID] = host
			if v.State != "running" {
				extra = append(extra, fmt.Sprintf("%s on %s is %s", v.ID, host, v.State))
			}
		}
	}
	for _, n := range names {
		if where[n] == "" {
			extra = append(extra, n+" runs nowhere")
		}
	}
	if len(extra) > 0 {
		t.Fatalf("not one running copy each: %v", extra)
	}
	return where
}

// TestEvacuateSite: a site's five VMs (sizes and dirty rates mixed) move
// to the other site as one group, two at a time on the a→b link, the
// smallest and calmest first; every one verified, one running copy each,
// the group's report complete.
func TestEvacuateSite(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startSitedHosts(t, "a1", "a2", "b1", "b2")
	vms := map[string][3]string{
		"tiny":  {"a1", "16MiB", "fill=1,cpu=0.02"},
		"calm":  {"a1", "32MiB", "fill=1,cpu=0.02"},
		"busy":  {"a2", "32MiB", "fill=1,cpu=0.05,dirty=2MB/s"},
		"big":   {"a2", "64MiB", "fill=1,cpu=0.02"},
		"dirty": {"a1", "48MiB", "fill=1,cpu=0.05,dirty=4MB/s"},
	}
	c.createVMs(t, vms)
	// A VM elsewhere stays where it is.
	c.createVMs(t, map[string][3]string{"stay": {"b1", "16MiB", "cpu=0.01"}})
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&created, "sites", "evacuate", "a", "--to", "b", "--per-link", "2"); err != nil {
		t.Fatal(err)
	}
	var g evacuationView
	if err := c.ctl(&g, "evacuations", "watch", created.ID); err != nil {
		_ = c.ctl(&g, "evacuations", "get", created.ID)
		t.Fatalf("watch: %v; %+v", err, g)
	}
	if g.State != "completed" || g.Completed != len(vms) || g.Failed != 0 || g.TotalMS <= 0 || len(g.Items) != len(vms) {
		t.Fatalf("evacuation: %+v", g)
	}
	for _, it := range g.Items {
		if it.State != "completed" || !it.Verified || !strings.HasPrefix(it.To, "b") || it.Migration == "" || it.BytesOnWire < it.Memory {
			t.Errorf("item %+v: want completed, verified, on a b host, every page on the wire", it)
		}
	}
	// The MMC's metrics count the group and its migrations.
	for family, want := range map[string]float64{
		"ferry_mmc_evacuations_started_total": 1, "ferry_mmc_evacuations_ended_total": 1,
		"ferry_mmc_migrations_started_total": float64(len(vms)), "ferry_mmc_migrations_ended_total": float64(len(vms)),
		"ferry_mmc_migration_duration_seconds_count": float64(len(vms)), "ferry_mmc_migrations_in_flight": 0,
	} {
		if got := c.metricSum(family); got != want {
			t.Errorf("%s = %v, want %v", family, got, want)
		}
	}
	if got := c.metricSum("ferry_mmc_migration_wire_bytes_total"); got < float64(192<<20) {
		t.Errorf("ferry_mmc_migration_wire_bytes_total = %v, want at least the VMs' 192 MiB", got)
	}
	where := c.oneCopyEach(t, append(slices.Collect(mapKeys(vms)), "stay"))
	for name := range vms {
		if !strings.HasPrefix(where[name], "b") {
			t.Errorf("%s runs on %s after the evacuation", name, where[name])
		}
	}
	if where["stay"] != "b1" {
		t.Errorf("stay moved to %s", where["stay"])
	}

	// Pacing, from the migration records: two at the start, the two
	// smallest and calmest first, never all at once.
	var ms []migrationView
	if err := c.ctl(&ms, "migrations", "list"); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ms, func(a, b migrationView) int { return a.Created.Compare(b.Created) })
	if len(ms) != len(vms) {
		t.Fatalf("%d migrations, want %d", len(ms), len(vms))
	}
	// Two per link, and a third may start in the last second of one's
	// transfer (evacuation.Handover: planned then, its data held until
	// the other's expected end).
	if most := mostAtOnce(ms, true); most < 2 || most > 3 {
		t.Errorf("at most %d migrations at once, want 2 (per link) or 3 (one handing over)", most)
	}
	if first := []string{ms[0].VM, ms[1].VM}; !slices.Contains(first, "tiny") || !slices.Contains(first, "calm") {
		t.Errorf("started first: %v, want tiny and calm (smallest expected time)", first)
	}
	if ms[len(ms)-1].VM != "big" && ms[len(ms)-1].VM != "dirty" {
		t.Errorf("started last: %s, want big or dirty", ms[len(ms)-1].VM)
	}
	for _, m := range ms {
		if m.By != "evacuation" || !strings.Contains(m.Reason, created.ID) {
			t.Errorf("migration %s by %q (%q), want the evacuation's", m.ID, m.By, m.Reason)
		}
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// mostAtOnce is the largest number of the migrations open at one
// moment — or, with sending, using their link: from the transfer's start
// (a migration planned in another's handover is held until then,
// migration.Record.StartAt) — until the source sent its last byte
// (armed) or, if it never was, until finished.
func mostAtOnce(ms []migrationView, sending bool) int {
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	for _, m := range ms {
		end := m.Finished
		if !m.ArmedAt.IsZero() {
			end = m.ArmedAt
		}
		start := m.Created
		if sending && !m.Started.IsZero() {
			start = m.Started
		}
		edges = append(edges, edge{start, 1}, edge{end, -1})
	}
	// Ends before starts at the same instant.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d
	})
	most, n := 0, 0
	for _, e := range edges {
		n += e.d
		most = max(most, n)
	}
	return most
}

// TestEvacuationCancel: a host's evacuation, one migration at a time and
// slowed by a cap, is cancelled while its first migration copies: that
// migration rolls back, the queued VMs never move, and every VM has one
// running copy, on the host it started on.
func TestEvacuationCancel(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startSitedHosts(t, "a1", "b1")
	vms := map[string][3]string{
		"v1": {"a1", "64MiB", "fill=1,cpu=0.02"},
		"v2": {"a1", "64MiB", "fill=1,cpu=0.02"},
		"v3": {"a1", "64MiB", "fill=1,cpu=0.02"},
	}
	c.createVMs(t, vms)
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&created, "hosts", "evacuate", "a1", "--per-link", "1", "--max-bandwidth", "20mbit"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the first migration copying", func() bool {
		var ms []migrationView
		_ = c.ctl(&ms, "migrations", "list")
		return len(ms) == 1 && ms[0].State == "transferring" && ms[0].Progress > 0.05
	})
	var g evacuationView
	if err := c.ctl(&g, "evacuations", "cancel", created.ID); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the evacuation ended", func() bool {
		_ = c.ctl(&g, "evacuations", "get", created.ID)
		return g.State != "running"
	})
	if g.State != "cancelled" || g.Cancelled != 3 || g.Completed != 0 {
		t.Fatalf("after cancel: %+v", g)
	}
	for _, it := range g.Items {
		if it.State != "cancelled" || it.Why == "" {
			t.Errorf("item %+v, want cancelled with the reason", it)
		}
	}
	where := c.oneCopyEach(t, []string{"v1", "v2", "v3"})
	for name, host := range where {
		if host != "a1" {
			t.Errorf("%s on %s after the cancel, want a1", name, host)
		}
	}
	var ms []migrationView
	if err := c.ctl(&ms, "migrations", "list"); err != nil || len(ms) != 1 || ms[0].State != "cancelled" {
		t.Fatalf("migrations %+v (%v), want the one started, cancelled", ms, err)
	}
	// The group's end is final: a second cancel is refused.
	if err := c.ctl(nil, "evacuations", "cancel", created.ID); err == nil {
		t.Error("second cancel of a finished evacuation accepted")
	}
}

// TestEvacuateHostAllAtOnce: three migrations between the same two hosts
// at once (the listening agent holds one introduction per peer: the MMC
// introduces the pair one link after the other, and all three complete).
func TestEvacuateHostAllAtOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startSitedHosts(t, "a1", "b1")
	vms := map[string][3]string{
		"x1": {"a1", "32MiB", "fill=1,cpu=0.02"},
		"x2": {"a1", "32MiB", "fill=1,cpu=0.02"},
		"x3": {"a1", "32MiB", "fill=1,cpu=0.02"},
	}
	c.createVMs(t, vms)
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&created, "hosts", "evacuate", "a1", "--to", "b1", "--per-link", "3"); err != nil {
		t.Fatal(err)
	}
	var g evacuationView
	if err := c.ctl(&g, "evacuations", "watch", created.ID); err != nil {
		_ = c.ctl(&g, "evacuations", "get", created.ID)
		t.Fatalf("watch: %v; %+v", err, g)
	}
	if g.State != "completed" || g.Completed != 3 {
		t.Fatalf("evacuation: %+v", g)
	}
	var ms []migrationView
	if err := c.ctl(&ms, "migrations", "list"); err != nil {
		t.Fatal(err)
	}
	if most := mostAtOnce(ms, false); most != 3 {
		t.Errorf("at most %d at once, want 3", most)
	}
	for name, host := range c.oneCopyEach(t, []string{"x1", "x2", "x3"}) {
		if host != "b1" {
			t.Errorf("%s on %s, want b1", name, host)
		}
	}
}
