package mmc

import (
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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
}

// Every series /metrics serves follows Prometheus's conventions: a
// ferry_ or a process/Go runtime prefix, counters ending in _total,
// histograms and summaries in base units (_seconds, _bytes), no other
// unit (milliseconds, kilobytes) in a name, and help text for each.
func TestMetricNames(t *testing.T) {
	s, _ := newTestServer(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(sudp.NewCollector(s.ep, prometheus.Labels{"role": "mmc"}))
	reg.MustRegister(s.Collectors()...)
	// Label values of vectors appear once used: use one of each.
	s.metrics.migStarted.WithLabelValues("admin")
	s.metrics.migEnded.WithLabelValues("completed")
	s.metrics.evacEnded.WithLabelValues("completed")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
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
		"ferry_mmc_evacuations_started_total", "ferry_mmc_evacuations_ended_total", "ferry_raft_leader_changes_total", "ferry_sudp_dropped_total"} {
		if !names[want] {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
