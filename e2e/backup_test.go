package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// agentMetric reads one unlabelled metric from an agent's --metrics
// address (-1 when it cannot).
func agentMetric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

// TestSnapshotRestore is disaster recovery with real processes: a
// snapshot taken through `ferry ctl mmcs snapshot` at a follower of a
// three-member cluster; after it, a token is created and the leadership
// moves twice (the agent then obeys a fencing term two above the
// snapshot's, which the restored leader's term must pass); the
// whole cluster stops; `ferry mmc restore` fills a fresh directory and
// `ferry mmc` starts on it with an old member's key, address and admin
// token. The restored MMC has the snapshot's agents, tokens and VMs and
// not what came after; the agent, started again with the restored MMC's
// bundle, logs in without a new approval and obeys the restored leader's
// fencing term, above every term it obeyed before; a new member joins
// the restored cluster with a join token at an old member's address.
func TestSnapshotRestore(t *testing.T) {
	c := newHACluster(t)
	var tok struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	if err := c.ctl(1, &tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	c.startAgent("bk-h1", "--token", tok.Token, "--site", "a", "--metrics", metrics)
	t.Cleanup(c.destroyVMs) // the simulated VM outlives its agent
	c.waitFor(30*time.Second, "the agent online", func() bool { return c.online(2) == 1 })
	if err := c.ctl(0, nil, "vms", "create", "web", "--host", "bk-h1", "--memory", "16MiB"); err != nil {
		t.Fatal(err)
	}
	hasVM := func(i int) bool {
		var vms []struct {
			ID    string `json:"id"`
			Host  string `json:"host"`
			State string `json:"state"`
		}
		if err := c.ctl(i, &vms, "vms", "list"); err != nil {
			return false
		}
		for _, v := range vms {
			if v.ID == "web" {
				return true
			}
		}
		return false
	}
	c.waitFor(30*time.Second, "the VM listed", func() bool { return hasVM(0) })
	termBefore := agentMetric(metrics, "ferry_agent_mmc_term")

	leader := c.leader(0)
	follower := (leader + 1) % 3
	file := filepath.Join(t.TempDir(), "cluster.snap")
	var snap struct {
		File         string `json:"file"`
		ClusterID    string `json:"cluster_id"`
		AppliedIndex uint64 `json:"applied_index"`
		FenceTerm    uint64 `json:"fence_term"`
		Bytes        int64  `json:"bytes"`
		SHA256       string `json:"sha256"`
	}
	if err := c.ctl(follower, &snap, "mmcs", "snapshot", file); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 || st.Size() != snap.Bytes || snap.AppliedIndex == 0 {
		t.Fatalf("snapshot %+v: %v %v", snap, err, st)
	}
	if float64(snap.FenceTerm) != termBefore {
		t.Fatalf("the snapshot's fencing term %d, the agent obeys %v", snap.FenceTerm, termBefore)
	}
	t.Logf("snapshot at mmc%d (leader mmc%d): %d bytes, index %d, fencing term %d", follower+1, leader+1, snap.Bytes, snap.AppliedIndex, snap.FenceTerm)

	// After the snapshot: a token it does not hold, and a new leader
	// whose term the agent obeys.
	var later struct {
		ID string `json:"id"`
	}
	if err := c.ctl(0, &later, "tokens", "create"); err != nil {
		t.Fatal(err)
	}
	termAfter := termBefore
	for range 2 {
		// At the leader itself: forwarded, the request would lose its
		// answer with the leadership it moves.
		var l int
		c.waitFor(10*time.Second, "a leader", func() bool { l = c.leader(0); return l >= 0 })
		if err := c.ctl(l, nil, "mmcs", "transfer-leadership"); err != nil {
			t.Fatal(err)
		}
		c.waitFor(30*time.Second, "the agent obeying the next leader", func() bool {
			return agentMetric(metrics, "ferry_agent_mmc_term") > termAfter
		})
		termAfter = agentMetric(metrics, "ferry_agent_mmc_term")
	}

	// The disaster: everything stops.
	c.agents["bk-h1"].stop()
	for _, m := range c.members {
		m.p.stop()
	}

	old := c.members[0]
	dir := filepath.Join(t.TempDir(), "restored")
	key := filepath.Join(old.dir, "node.key")
	// Without an old member's key no agent could reach the restored MMC:
	// refused, and nothing written.
	stray := filepath.Join(t.TempDir(), "stray")
	if out, err := exec.Command(ferryBin, "mmc", "restore", "--data-dir", stray, "--from", file).CombinedOutput(); err == nil || !strings.Contains(string(out), "--new-key") {
		t.Fatalf("a restore without an old member's key: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(stray, "mmc.db")); err == nil {
		t.Fatal("a refused restore left a database")
	}
	out, err := exec.Command(ferryBin, "mmc", "restore", "--data-dir", dir, "--from", file, "--key-file", key).CombinedOutput()
	if err != nil {
		t.Fatalf("ferry mmc restore: %v\n%s", err, out)
	}
	t.Logf("ferry mmc restore:\n%s", out)
	if !strings.Contains(string(out), "is old member") {
		t.Fatalf("restore did not recognise the old member's key:\n%s", out)
	}
	// A second restore into the same directory is refused.
	if out, err := exec.Command(ferryBin, "mmc", "restore", "--data-dir", dir, "--from", file).CombinedOutput(); err == nil {
		t.Fatalf("a restore over a restored directory succeeded:\n%s", out)
	}
	// The operator keeps the old admin token.
	tokBytes, err := os.ReadFile(filepath.Join(old.dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), tokBytes, 0o600); err != nil {
		t.Fatal(err)
	}

	// The restored MMC: member 0's key, addresses and admin token.
	oldMembers := c.members
	c.members = []*haMember{{dir: dir, sudp: old.sudp, admin: old.admin}}
	c.start(0, "--key-file", key)
	c.waitFor(30*time.Second, "the restored MMC leading", func() bool { return c.leader(0) == 0 })

	var as []struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Online bool   `json:"online"`
	}
	if err := c.ctl(0, &as, "agents", "list"); err != nil || len(as) != 1 || as[0].State != "approved" {
		t.Fatalf("agents after the restore: %+v %v", as, err)
	}
	var toks []struct {
		ID string `json:"id"`
	}
	if err := c.ctl(0, &toks, "tokens", "list"); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, tk := range toks {
		ids[tk.ID] = true
	}
	if !ids[tok.ID] || ids[later.ID] {
		t.Fatalf("tokens after the restore: %+v (want %s, not %s)", toks, tok.ID, later.ID)
	}
	if !hasVM(0) {
		t.Fatal("the VM is not listed after the restore")
	}

	// The agent, started again with the restored MMC's bundle, logs in
	// as the approved agent it was and obeys the new leader's term.
	c.bundle = c.bundleOf(0)
	if bundleMembers(c.bundle) != 1 {
		t.Fatalf("the restored MMC's bundle lists %d MMCs", bundleMembers(c.bundle))
	}
	c.startAgent("bk-h1", "--site", "a", "--metrics", metrics)
	// Online on both sides: the MMC lists a session, and the agent took
	// the MMC's welcome (an agent that obeyed a higher term refuses it,
	// and the MMC shows the session only until the agent hangs up).
	c.waitFor(30*time.Second, "the agent online at the restored MMC", func() bool {
		return c.online(0) == 1 && agentMetric(metrics, "ferry_agent_online") == 1
	})
	termRestored := agentMetric(metrics, "ferry_agent_mmc_term")
	if termRestored <= termAfter {
		t.Fatalf("the agent obeys term %.0f after the restore, not above %.0f (before it)", termRestored, termAfter)
	}
	if err := c.ctl(0, &as, "agents", "list"); err != nil || len(as) != 1 || as[0].State != "approved" || !as[0].Online {
		t.Fatalf("agents with the agent back: %+v %v", as, err)
	}
	t.Logf("fencing terms obeyed by the agent: %.0f at the snapshot, %.0f after it, %.0f after the restore", termBefore, termAfter, termRestored)

	// A member joins the restored cluster at an old member's address,
	// with a new key, from an empty directory.
	var jt struct {
		Token string `json:"token"`
	}
	if err := c.ctl(0, &jt, "mmcs", "join-token"); err != nil {
		t.Fatal(err)
	}
	joiner := &haMember{dir: filepath.Join(t.TempDir(), "rejoined"), sudp: oldMembers[1].sudp, admin: oldMembers[1].admin}
	c.members = append(c.members, joiner)
	c.start(1, "--join", c.bundle, "--join-token", jt.Token)
	c.waitFor(30*time.Second, "two voters in the restored cluster", func() bool {
		ms, err := c.mmcs(0)
		if err != nil || len(ms) != 2 {
			return false
		}
		for _, m := range ms {
			if !m.Voter || m.State == "unreachable" {
				return false
			}
		}
		return true
	})
}
