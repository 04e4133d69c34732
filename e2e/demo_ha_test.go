package e2e

import (
	"encoding/json"
	"testing"
)

// TestDemoHA runs `ferry demo --ha --json` as a user would: three MMCs,
// the leader killed with SIGKILL once the migration is under way. The
// summary must show every migration completed and verified, a leader
// other than the killed member afterwards, the takeover's times, and the
// killed member back as a follower after its restart.
//
// Not parallel, as TestDemoJSON: the SLA violation is a VM's real CPU use.
func TestDemoHA(t *testing.T) {
	out := runDemo(t, "--ha")
	var sum struct {
		Completed  int `json:"migrations_completed"`
		Migrations []struct {
			ID       string `json:"id"`
			State    string `json:"state"`
			Verified bool   `json:"verified"`
		} `json:"migrations"`
		HA *struct {
			Members []struct {
				Name, ID, Admin string
			} `json:"members"`
			Killed             string `json:"killed"`
			KilledID           string `json:"killed_id"`
			KilledDuring       string `json:"killed_during"`
			NewLeader          string `json:"new_leader"`
			NewLeaderID        string `json:"new_leader_id"`
			ElectedMS          int64  `json:"elected_ms"`
			FailoverMS         int64  `json:"failover_ms"`
			AgentsReattachedMS int64  `json:"agents_reattached_ms"`
			Rejoined           bool   `json:"rejoined"`
			RejoinedMS         int64  `json:"rejoined_ms"`
		} `json:"ha"`
	}
	if err := json.Unmarshal(out, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Completed != len(sum.Migrations) {
		t.Errorf("%d of %d migrations completed", sum.Completed, len(sum.Migrations))
	}
	for _, m := range sum.Migrations {
		if m.State != "completed" || !m.Verified {
			t.Errorf("migration %s %s, verified %v", m.ID, m.State, m.Verified)
		}
	}
	h := sum.HA
	if h == nil {
		t.Fatalf("no ha object in the summary: %s", out)
	}
	if len(h.Members) != 3 {
		t.Errorf("members %+v", h.Members)
	}
	if h.Killed == "" || h.KilledID == "" || h.NewLeader == "" || h.NewLeaderID == "" ||
		h.NewLeader == h.Killed || h.NewLeaderID == h.KilledID {
		t.Errorf("no failover to another leader: %+v", *h)
	}
	if h.ElectedMS <= 0 || h.FailoverMS <= 0 || h.AgentsReattachedMS <= 0 {
		t.Errorf("failover times missing: %+v", *h)
	}
	if !h.Rejoined || h.RejoinedMS <= 0 {
		t.Errorf("the killed member did not rejoin: %+v", *h)
	}
	during := h.KilledDuring
	if during == "" {
		during = "between migrations"
	}
	t.Logf("demo --ha: kill -9 of %s (%s); %s elected after %d ms, first write after %d ms, agents re-attached after %d ms; %s rejoined %d ms after its restart",
		h.Killed, during, h.NewLeader, h.ElectedMS, h.FailoverMS, h.AgentsReattachedMS, h.Killed, h.RejoinedMS)
}
