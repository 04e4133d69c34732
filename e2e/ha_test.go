package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
)

// haCluster is three MMC processes on loopback forming one raft cluster
// (CLI.md "MMC cluster"), and the agents started against it.
type haCluster struct {
	t         testing.TB
	members   []*haMember
	bundle    string
	agentDirs map[string]string
	agents    map[string]*proc
}

type haMember struct {
	dir, sudp, admin string
	p                *proc
}

// mmcMember is one row of `ferry ctl mmcs list -o json`.
type mmcMember struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Admin   string `json:"admin"`
	State   string `json:"state"`
	Voter   bool   `json:"voter"`
}

// newHACluster starts one MMC, then joins two more with tokens from
// `ferry ctl mmcs join-token`, then reads the bundle listing all three.
func newHACluster(t testing.TB) *haCluster {
	c := &haCluster{t: t, agentDirs: map[string]string{}, agents: map[string]*proc{}}
	for i := range 3 {
		m := &haMember{dir: filepath.Join(t.TempDir(), fmt.Sprintf("mmc%d", i+1)),
			sudp: fmt.Sprintf("127.0.0.1:%d", freePort(t, "udp")), admin: fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))}
		c.members = append(c.members, m)
		var join []string
		if i > 0 {
			var tok struct {
				Token string `json:"token"`
			}
			if err := c.ctl(0, &tok, "mmcs", "join-token"); err != nil {
				t.Fatal(err)
			}
			join = []string{"--join", c.bundleOf(0), "--join-token", tok.Token}
		}
		c.start(i, join...)
	}
	c.waitFor(30*time.Second, "three voters, one leader", func() bool {
		ms, err := c.mmcs(0)
		if err != nil || len(ms) != 3 {
			return false
		}
		leaders := 0
		for _, m := range ms {
			if !m.Voter || m.State == "unreachable" {
				return false
			}
			if m.State == "leader" {
				leaders++
			}
		}
		return leaders == 1
	})
	c.waitFor(10*time.Second, "a bundle listing three MMCs", func() bool {
		return bundleMembers(c.bundleOf(0)) == 3
	})
	c.bundle = c.bundleOf(0)
	return c
}

// bundleMembers counts the MMCs in an encoded bundle.
func bundleMembers(b string) int {
	bb, err := identity.ParseBundle(b)
	if err != nil {
		return -1
	}
	return len(bb.MMCs)
}

func (c *haCluster) start(i int, extra ...string) {
	m := c.members[i]
	args := append([]string{"--log-level", "debug", "mmc", "--data-dir", m.dir, "--listen", m.sudp, "--admin", m.admin,
		"--reauth-min", "5s", "--reauth-max", "10s"}, extra...)
	m.p = startCmd(c.t, fmt.Sprintf("mmc%d", i+1), exec.Command(ferryBin, args...))
	c.waitFor(30*time.Second, fmt.Sprintf("mmc%d's admin API", i+1), func() bool {
		_, err := http.Get("http://" + m.admin + "/metrics")
		return err == nil
	})
}

// kill stops member i with SIGKILL: no goodbye to anyone.
func (c *haCluster) kill(i int) {
	p := c.members[i].p
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (c *haCluster) bundleOf(i int) string {
	out, err := exec.Command(ferryBin, "mmc", "bundle", "--data-dir", c.members[i].dir).Output()
	if err != nil {
		c.t.Fatalf("mmc bundle: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// ctl runs `ferry ctl ARGS -o json` against member i's admin API.
func (c *haCluster) ctl(i int, out any, args ...string) error {
	m := c.members[i]
	full := append([]string{"ctl", "--admin", "http://" + m.admin, "--token-file", filepath.Join(m.dir, "admin.token")}, args...)
	full = append(full, "-o", "json")
	cmd := exec.Command(ferryBin, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("ferry ctl %s at mmc%d: %v: %s", strings.Join(args, " "), i+1, err, stderr.String())
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (c *haCluster) mmcs(i int) ([]mmcMember, error) {
	var ms []mmcMember
	return ms, c.ctl(i, &ms, "mmcs", "list")
}

// leader is the index of the member that leads, as member at asks.
func (c *haCluster) leader(at int) int {
	ms, err := c.mmcs(at)
	if err != nil {
		return -1
	}
	for _, m := range ms {
		if m.State != "leader" {
			continue
		}
		for i, mm := range c.members {
			if "http://"+mm.admin == m.Admin {
				return i
			}
		}
	}
	return -1
}

func (c *haCluster) startAgent(name string, extra ...string) {
	dir, ok := c.agentDirs[name]
	if !ok {
		dir = filepath.Join(c.t.TempDir(), name)
		c.agentDirs[name] = dir
	}
	args := append([]string{"agent", "--data-dir", dir, "--bundle", c.bundle, "--name", name,
		"--disk-id", "disk-" + name, "--macs", "02:00:00:00:01:" + fmt.Sprintf("%02x", len(name))}, extra...)
	c.agents[name] = startCmd(c.t, "agent "+name, exec.Command(ferryBin, args...))
}

// online counts the agents member i's cluster shows online.
func (c *haCluster) online(i int) int {
	var as []struct {
		Online bool `json:"online"`
	}
	if err := c.ctl(i, &as, "agents", "list"); err != nil {
		return -1
	}
	n := 0
	for _, a := range as {
		if a.Online {
			n++
		}
	}
	return n
}

func (c *haCluster) waitFor(limit time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failover kills the leader and measures, from the kill, the first
// successful write through `ferry ctl` at a surviving member and the
// moment every agent is online again (as the survivors' cluster shows
// it). It returns the killed member.
func (c *haCluster) failover(agents int) (killed int, write, attach time.Duration) {
	killed = c.leader(0)
	if killed < 0 {
		killed = c.leader(1)
	}
	if killed < 0 {
		c.t.Fatal("no leader to kill")
	}
	survivor := (killed + 1) % len(c.members)
	start := time.Now()
	c.kill(killed)
	c.waitFor(30*time.Second, "a write at a survivor", func() bool {
		return c.ctl(survivor, nil, "tokens", "create", "--ttl", "1m") == nil
	})
	write = time.Since(start)
	c.waitFor(60*time.Second, "every agent re-attached", func() bool { return c.online(survivor) == agents })
	attach = time.Since(start)
	return killed, write, attach
}

// TestHAFailover: three MMC processes, agents in two sites; kill -9 of
// the leader: a surviving member accepts writes through ferry ctl, every
// agent is online again without re-approval, what was written before is
// there, and the killed member rejoins as a follower on restart.
func TestHAFailover(t *testing.T) {
	c := newHACluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(1, &tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	c.startAgent("ha-a1", "--token", tok.Token, "--site", "a")
	c.startAgent("ha-b1", "--token", tok.Token, "--site", "b")
	c.waitFor(30*time.Second, "both agents online", func() bool { return c.online(2) == 2 })

	killed, write, attach := c.failover(2)
	t.Logf("kill -9 of mmc%d: first write at a survivor after %v, every agent online after %v", killed+1, write, attach)
	survivor := (killed + 1) % 3
	var toks []struct {
		ID string `json:"id"`
	}
	if err := c.ctl(survivor, &toks, "tokens", "list"); err != nil || len(toks) < 2 {
		t.Fatalf("tokens after the failover: %v %v", toks, err)
	}
	// Re-attached, not re-enrolled: still two agents, both approved.
	var as []struct {
		State string `json:"state"`
	}
	if err := c.ctl(survivor, &as, "agents", "list"); err != nil || len(as) != 2 || as[0].State != "approved" || as[1].State != "approved" {
		t.Fatalf("agents after the failover: %+v %v", as, err)
	}
	// The killed member comes back as a follower of the new leader.
	c.start(killed)
	c.waitFor(30*time.Second, "the restarted member back as a follower", func() bool {
		ms, err := c.mmcs(killed)
		if err != nil || len(ms) != 3 {
			return false
		}
		for _, m := range ms {
			if m.State == "unreachable" {
				return false
			}
		}
		return c.leader(killed) != killed
	})
}
