package mmc

import (
	"io"
	"strings"
	"testing"
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
