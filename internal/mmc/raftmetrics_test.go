package mmc

import (
	"encoding/json"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/ferry-vm/ferry/internal/sudp"
)

// The admin API's /metrics exports the raft member's ferry_raft_*
// series with the MMC's own (registerRaft in New).
func TestMetricsExportRaft(t *testing.T) {
	_, hs := newTestServer(t)
	resp, err := hs.Client().Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`ferry_raft_state{state="leader"} 1`,
		`ferry_raft_state{state="follower"} 0`,
		`ferry_raft_members{suffrage="voter"} 1`,
		`ferry_raft_leader_changes_total 1`,
		`ferry_raft_last_contact_seconds 0`,
		// awaitLeader's barrier after the log's replay, and the one
		// taking up the leadership (establish).
		`ferry_raft_barrier_duration_seconds_count 2`,
		"ferry_mmc_agents_online 0",
	} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The probes, without a token: alive, and ready as the leader.
	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ready: leader\n"} {
		resp, err := hs.Client().Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("%s: %d %q, want 200 %q", path, resp.StatusCode, b, want)
		}
	}
}

// Every series /metrics serves follows Prometheus's conventions: a
// ferry_ or a process/Go runtime prefix, counters ending in _total,
// histograms and summaries in base units (_seconds, _bytes), no other
// unit (milliseconds, kilobytes) in a name, and help text for each.
func TestMetricNames(t *testing.T) {
	families := exportedFamilies(t)
	names := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		names[name] = true
		switch {
		case !strings.HasPrefix(name, "ferry_"):
			t.Errorf("%s: not under ferry_", name)
		case f.GetHelp() == "":
			t.Errorf("%s: no help", name)
		case regexp.MustCompile(`_(ms|millis|milliseconds|us|kb|kib|mb|mib|percent)(_|$)`).MatchString(name):
			t.Errorf("%s: not in base units", name)
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			if !strings.HasSuffix(name, "_total") {
				t.Errorf("counter %s: want the _total suffix", name)
			}
		case dto.MetricType_HISTOGRAM, dto.MetricType_SUMMARY:
			if !strings.HasSuffix(name, "_seconds") && !strings.HasSuffix(name, "_bytes") {
				t.Errorf("histogram %s: want _seconds or _bytes", name)
			}
		case dto.MetricType_GAUGE:
			if strings.HasSuffix(name, "_total") {
				t.Errorf("gauge %s: _total is for counters", name)
			}
		}
	}
	for _, want := range []string{"ferry_mmc_migrations_started_total", "ferry_mmc_migrations_ended_total", "ferry_mmc_migration_duration_seconds",
		"ferry_mmc_migration_downtime_seconds", "ferry_mmc_migration_wire_bytes_total", "ferry_mmc_migrations_in_flight",
		"ferry_mmc_evacuations_started_total", "ferry_mmc_evacuations_ended_total", "ferry_raft_leader_changes_total", "ferry_sudp_dropped_total",
		"ferry_mmc_policy_decisions_total", "ferry_mmc_policy_held_vms", "ferry_mmc_alarms_total", "ferry_mmc_host_cpu_ratio", "ferry_mmc_vm_dirty_bytes_per_second"} {
		if !names[want] {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// The Grafana dashboard and the Prometheus alert rules in monitoring/
// load, and every query in them names a metric the MMC exports (a
// histogram's _bucket, _count and _sum series included).
func TestMonitoringFiles(t *testing.T) {
	exported := map[string]bool{}
	for _, f := range exportedFamilies(t) {
		exported[f.GetName()] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				exported[f.GetName()+suffix] = true
			}
		}
	}
	var exprs []string
	b, err := os.ReadFile("../../monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: %v (%d panels)", err, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	b, err = os.ReadFile("../../monitoring/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(b, &rules); err != nil || len(rules.Groups) == 0 {
		t.Fatalf("alerts: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("rule %+v: want alert and expr", r)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	name := regexp.MustCompile(`\bferry_[a-z0-9_]+`)
	for _, e := range exprs {
		found := name.FindAllString(e, -1)
		if len(found) == 0 {
			t.Errorf("query %q names no Ferry metric", e)
		}
		for _, m := range found {
			if !exported[m] {
				t.Errorf("query %q: %s is not exported", e, m)
			}
		}
	}
}

// exportedFamilies gathers what a started MMC's /metrics serves (its
// collectors and its endpoint's), each vector with one label value used
// (a vector without one has no series yet).
func exportedFamilies(t *testing.T) []*dto.MetricFamily {
	s, _ := newTestServer(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(sudp.NewCollector(s.ep, prometheus.Labels{"role": "mmc"}))
	reg.MustRegister(s.Collectors()...)
	s.metrics.migStarted.WithLabelValues("admin")
	s.metrics.migEnded.WithLabelValues("completed")
	s.metrics.evacEnded.WithLabelValues("completed")
	s.metrics.links.WithLabelValues("direct")
	s.metrics.refused.WithLabelValues("auth")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return append(families, describedGauges(t, loadCollector{s})...)
}

// describedGauges are the families c describes, for a collector whose
// series exist only with hosts and VMs (none in a test server).
func describedGauges(t *testing.T, c prometheus.Collector) []*dto.MetricFamily {
	ch := make(chan *prometheus.Desc, 64)
	c.Describe(ch)
	close(ch)
	re := regexp.MustCompile(`fqName: "([^"]+)", help: "([^"]*)"`)
	var out []*dto.MetricFamily
	for d := range ch {
		m := re.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		out = append(out, &dto.MetricFamily{Name: &m[1], Help: &m[2], Type: dto.MetricType_GAUGE.Enum()})
	}
	return out
}
