package e2e

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// TestHAPartition (issue #18): the leader MMC alone in site b, the two
// other members in site a, agents in both sites, raft's default 1 s
// timeouts over the lab's `wan` profile (50 ms RTT, 1 % loss). Site b is
// cut off from the WAN (nftables drops everything but its loopback):
//   - the cut-off leader stops accepting writes within its election
//     timeout: no write through `ferry ctl` at it succeeds after the cut,
//     the first one fails within 3 s, and from then on it says that no
//     member leads; its reads fail too rather than answer from a store
//     that the majority has moved past;
//   - the majority (site a) elects a leader that accepts writes, and
//     site a's agents move to it; site b's agent reaches no member that
//     leads (its only reachable member is the deposed one) and is shown
//     offline;
//   - after healing, the old leader rejoins as a follower, site b's agent
//     is back, and nothing diverged: with everything stopped, the three
//     members' stores hold the same tokens and agents — every
//     acknowledged write and none of the minority's attempts.
func TestHAPartition(t *testing.T) {
	requireRoot(t)
	l := upLab(t, "wan")
	c := newHAClusterInLab(t, l, []int{0, 0, 1})
	startHAAgents(c, []struct{ name, site string }{{"pa-a1", "a"}, {"pa-a2", "a"}, {"pa-b1", "b"}},
		map[string]string{"a": l.netns[0], "b": l.netns[1]})
	const minority = 2 // mmc3, alone in site b
	c.leadFrom(minority)
	c.steady(90*time.Second, 3)

	var mu sync.Mutex
	acked := map[string]bool{} // token ids whose creation was acknowledged
	createToken := func(at int, args ...string) error {
		var tok struct {
			ID string `json:"id"`
		}
		err := c.ctl(at, &tok, append([]string{"--retry-for", "0", "tokens", "create"}, args...)...)
		if err == nil {
			mu.Lock()
			acked[tok.ID] = true
			mu.Unlock()
		}
		return err
	}
	if err := createToken(minority, "--ttl", "1h"); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	cutSite(t, l.netns[1]) // upLab's cleanup removes the namespace, and the cut with it

	// The majority (site a) elects a leader that accepts writes: tried at
	// mmc1 from the cut on, beside the minority's attempts.
	majorityWrite := make(chan time.Duration, 1)
	go func() {
		for time.Since(cut) < 60*time.Second {
			if createToken(0, "--ttl", "1h") == nil {
				majorityWrite <- time.Since(cut)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		majorityWrite <- 0
	}()

	// The minority: every write fails (it cannot reach a majority). The
	// minority's attempts ask for 7 uses, which no other token has, so
	// that the stores can be searched for them at the end.
	var firstFail time.Duration
	var lastErr error
	for time.Since(cut) < 4*time.Second {
		err := createToken(minority, "--ttl", "1h", "--uses", "7")
		if err == nil {
			t.Fatalf("mmc3, cut off in the minority, acknowledged a write %v after the cut", time.Since(cut))
		}
		if firstFail == 0 {
			firstFail = time.Since(cut)
			t.Logf("first write at the cut-off leader failed %v after the cut: %v", firstFail, err)
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	if firstFail > 3*time.Second {
		t.Errorf("the first write at the cut-off leader failed only %v after the cut, want within 3 s (raft's 1 s timeouts)", firstFail)
	}
	if !strings.Contains(lastErr.Error(), "no MMC leads the cluster") {
		t.Errorf("a write at the cut-off member %v after the cut: %v; want it to say that no member leads", time.Since(cut), lastErr)
	}
	if err := c.ctl(minority, nil, "--retry-for", "0", "tokens", "list"); err == nil {
		t.Errorf("mmc3, cut off in the minority, answered a read %v after the cut", time.Since(cut))
	} else {
		t.Logf("a read at the cut-off member: %v", err)
	}

	firstMajorityWrite := <-majorityWrite
	if firstMajorityWrite == 0 {
		t.Fatal("no write at mmc1, in the majority, within 60 s of the cut")
	}
	lead := c.leader(0)
	if lead != 0 && lead != 1 {
		t.Fatalf("the majority's leader is mmc%d, want mmc1 or mmc2", lead+1)
	}
	// /readyz says so to a load balancer: the majority's members ready,
	// the cut-off one not (it knows no leader).
	for i, want := range []int{200, 200, 503} {
		if got := c.readyz(i); got != want {
			t.Errorf("mmc%d /readyz: %d, want %d", i+1, got, want)
		}
	}
	// The cut-off member still answers nothing, now that the majority
	// holds a token it has never seen.
	if err := c.ctl(minority, nil, "--retry-for", "0", "tokens", "list"); err == nil {
		t.Errorf("mmc3, cut off in the minority, answered a read after the majority wrote")
	}

	// Site a's agents move to the majority's leader; site b's agent has
	// no way to it.
	onlineNames := func(at int) []string {
		var as []struct {
			Name   string `json:"name"`
			Online bool   `json:"online"`
		}
		if err := c.ctl(at, &as, "--retry-for", "0", "agents", "list"); err != nil {
			return nil
		}
		var on []string
		for _, a := range as {
			if a.Online {
				on = append(on, a.Name)
			}
		}
		slices.Sort(on)
		return on
	}
	var agentsMoved time.Duration
	c.waitFor(60*time.Second, "site a's agents online at the majority's leader", func() bool {
		if on := onlineNames(0); slices.Contains(on, "pa-a1") && slices.Contains(on, "pa-a2") {
			agentsMoved = time.Since(cut)
			return true
		}
		return false
	})
	time.Sleep(2 * time.Second)
	if on := onlineNames(0); slices.Contains(on, "pa-b1") {
		t.Errorf("agents online at the majority while site b is cut off: %v; pa-b1 cannot reach it", on)
	}
	t.Logf("cut at %s: first failed write at the minority after %v, first write at the majority (leader mmc%d) after %v, site a's agents seen online at it (polled after the minority checks; their logs have the moment) after %v",
		cut.UTC().Format("15:04:05.000"), firstFail, lead+1, firstMajorityWrite, agentsMoved)

	// Healing: the old leader rejoins as a follower, site b's agent comes
	// back, and writes through it reach the leader.
	healSite(t, l.netns[1])
	heal := time.Now()
	before := lead
	lead = c.steady(90*time.Second, 3)
	if lead == minority {
		t.Errorf("mmc3 leads after healing, though its log is behind the majority's")
	}
	t.Logf("healed: all three members, every agent online with its standby session after %v; leader mmc%d (mmc%d before healing)",
		time.Since(heal), lead+1, before+1)
	if err := createToken(minority, "--ttl", "1h"); err != nil {
		t.Fatalf("a write through mmc3 after healing: %v", err)
	}

	// Nothing diverged. The agents stop first (their logins are writes),
	// then the members wait until each has applied the last write, then
	// the followers stop before the leader (a leader stopped first would
	// leave the two to elect another, whose first entry only they get).
	for _, p := range c.agents {
		p.stop()
	}
	if err := createToken(0, "--ttl", "1h"); err != nil {
		t.Fatal(err)
	}
	applied := func() (float64, bool) {
		var idx []float64
		for i := range c.members {
			v, err := c.metric(i, "ferry_raft_applied_index")
			if err != nil {
				return 0, false
			}
			idx = append(idx, v)
		}
		return idx[0], idx[0] > 0 && idx[0] == idx[1] && idx[1] == idx[2]
	}
	// The same index twice, 1.5 s apart: no write in flight (an agent's
	// logout is audited through the log) when the members stop.
	c.waitFor(60*time.Second, "every member at the same applied index, and staying there", func() bool {
		first, ok := applied()
		if !ok {
			return false
		}
		time.Sleep(1500 * time.Millisecond)
		second, ok := applied()
		return ok && second == first
	})
	for i := range c.members {
		if i != lead {
			c.members[i].p.stop()
		}
	}
	c.members[lead].p.stop()

	var want []byte
	for i, m := range c.members {
		st, err := store.Open(filepath.Join(m.dir, "mmc.db"))
		if err != nil {
			t.Fatalf("mmc%d's store: %v", i+1, err)
		}
		toks, err := st.Tokens()
		if err != nil {
			t.Fatal(err)
		}
		agents, err := st.Agents()
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		ids := map[string]bool{}
		for _, tk := range toks {
			ids[tk.ID] = true
			if tk.UsesLeft+tk.Used == 7 {
				t.Errorf("mmc%d's store holds token %s, one of the writes the cut-off minority refused", i+1, tk.ID)
			}
		}
		for id := range acked {
			if !ids[id] {
				t.Errorf("mmc%d's store lacks token %s, whose creation was acknowledged", i+1, id)
			}
		}
		if len(agents) != 3 {
			t.Errorf("mmc%d's store holds %d agents, want 3", i+1, len(agents))
		}
		got, err := json.Marshal(struct {
			Tokens []store.Token
			Agents []store.Agent
		}{toks, agents})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			want = got
		} else if string(got) != string(want) {
			t.Errorf("mmc%d's store differs from mmc1's:\n%s\n%s", i+1, got, want)
		}
	}
	t.Logf("%d acknowledged tokens, the same tokens and agents in every member's store", len(acked))
}
