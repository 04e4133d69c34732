package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a ferry process whose stderr is kept for assertions and failure
// reports.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs bytes.Buffer
	done chan struct{}
	err  error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.Write(b)
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, exec.Command(ferryBin, args...))
}

// ferryIn is `ferry args...` run in network namespace ns ("": this one).
func ferryIn(ns string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(ferryBin, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, ferryBin}, args...)...)
}

func startCmd(t testing.TB, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	p.cmd.Stderr = p
	p.cmd.Stdout = p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		dest := os.Getenv("FERRY_E2E_LOGS")
		switch {
		case filepath.IsAbs(dest):
			// A directory: the logs go to files there, whole (a
			// benchmark's log is truncated by the test framework).
			f := filepath.Join(dest, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()+"-"+name)+time.Now().Format("-150405.000")+fmt.Sprintf("-%d.log", p.cmd.Process.Pid))
			if err := os.WriteFile(f, []byte(p.log()), 0o644); err != nil {
				t.Logf("writing %s's log: %v", name, err)
			}
		case t.Failed() || dest != "":
			t.Logf("--- %s log ---\n%s", name, p.log())
		}
	})
	return p
}

// stop sends SIGTERM and waits (SIGKILL after 10 s).
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

func freePort(t testing.TB, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// cluster is one MMC under test and the ctl flags to reach it.
type cluster struct {
	t           testing.TB
	dir         string
	sudp, admin string
	mmc         *proc
	extra       []string
	agentExtra  []string // flags for the agents startHostsIn starts
	bundle      string
	agentDirs   map[string]string
	// netns is where the MMC (and ctl) run; agentNetns where each agent
	// does ("" for both: this namespace).
	netns      string
	agentNetns map[string]string
	agentProcs map[string]*proc // the last process startAgent started for each name
}

func newCluster(t testing.TB, extra ...string) *cluster {
	c := &cluster{t: t, dir: filepath.Join(t.TempDir(), "mmc"), agentDirs: map[string]string{},
		sudp:  fmt.Sprintf("127.0.0.1:%d", freePort(t, "udp")),
		admin: fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp")), extra: extra}
	c.start()
	return c
}

// newClusterIn is a cluster whose MMC runs in namespace ns and listens
// for agents on sudpAddr there (its admin API on that namespace's
// loopback, which ctl reaches by running there too).
func newClusterIn(t testing.TB, ns, sudpAddr string, extra ...string) *cluster {
	c := &cluster{t: t, dir: filepath.Join(t.TempDir(), "mmc"), agentDirs: map[string]string{},
		sudp: sudpAddr, admin: "127.0.0.1:7947", extra: extra, netns: ns, agentNetns: map[string]string{}}
	c.start()
	return c
}

func (c *cluster) start() {
	t := c.t
	c.startMMC()
	out, err := exec.Command(ferryBin, "mmc", "bundle", "--data-dir", c.dir).Output()
	if err != nil {
		t.Fatalf("mmc bundle: %v", err)
	}
	c.bundle = strings.TrimSpace(string(out))
	if !strings.HasPrefix(c.bundle, "ferry-bundle-v1:") || strings.Contains(c.bundle, "\n") {
		t.Fatalf("bundle is not one line: %q", c.bundle)
	}
}

func (c *cluster) startMMC() {
	args := append([]string{"mmc", "--data-dir", c.dir, "--listen", c.sudp, "--admin", c.admin,
		"--reauth-min", "1s", "--reauth-max", "2s", "--reauth-timeout", "3s"}, c.extra...)
	c.mmc = startCmd(c.t, "mmc", ferryIn(c.netns, args...))
	c.waitFor("admin API up", func() bool {
		if c.netns != "" {
			return c.ctl(nil, "hosts", "list") == nil
		}
		_, err := http.Get("http://" + c.admin + "/metrics")
		return err == nil
	})
	if st, err := os.Stat(filepath.Join(c.dir, "admin.token")); err != nil || st.Mode().Perm() != 0o600 {
		c.t.Fatalf("admin.token: %v (mode %v)", err, st.Mode().Perm())
	}
}

func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	c.waitForUpTo(30*time.Second, what, cond)
}

func (c *cluster) waitForUpTo(limit time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ctl runs `ferry ctl ... -o json` and decodes its output into out.
func (c *cluster) ctl(out any, args ...string) error {
	full := append([]string{"ctl", "--admin", "http://" + c.admin, "--token-file", filepath.Join(c.dir, "admin.token")}, args...)
	full = append(full, "-o", "json")
	cmd := ferryIn(c.netns, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("ferry %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("ferry %s: stdout is not one JSON document: %v: %q", strings.Join(args, " "), err, b)
		}
	}
	return nil
}

// ctlText runs `ferry ctl ...` for its human output (tables, text).
func (c *cluster) ctlText(out io.Writer, args ...string) error {
	full := append([]string{"ctl", "--admin", "http://" + c.admin, "--token-file", filepath.Join(c.dir, "admin.token")}, args...)
	cmd := ferryIn(c.netns, full...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ferry %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return nil
}

type agentView struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	State    string `json:"state"`
	Online   bool   `json:"online"`
	Facts    struct {
		DiskID string   `json:"disk_id"`
		MACs   []string `json:"macs"`
	} `json:"facts"`
}

func (c *cluster) agents() []agentView {
	c.t.Helper()
	var out []agentView
	if err := c.ctl(&out, "agents", "list"); err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *cluster) agent(name string) (agentView, bool) {
	for _, a := range c.agents() {
		if a.Hostname == name {
			return a, true
		}
	}
	return agentView{}, false
}

type auditView struct {
	Actor, Action, Target, Source, Outcome, Detail string
}

func (c *cluster) audit() []auditView {
	c.t.Helper()
	var out []auditView
	if err := c.ctl(&out, "audit"); err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *cluster) countAudit(action, outcome string) int {
	n := 0
	for _, e := range c.audit() {
		if e.Action == action && (outcome == "" || e.Outcome == outcome) {
			n++
		}
	}
	return n
}

// startAgent runs an agent for simulated host `name` (its own data dir,
// disk id and MAC).
func (c *cluster) startAgent(name string, extra ...string) *proc {
	dir, ok := c.agentDirs[name]
	if !ok {
		dir = filepath.Join(c.t.TempDir(), name)
		c.agentDirs[name] = dir
	}
	args := append([]string{"agent", "--data-dir", dir, "--bundle", c.bundle, "--name", name,
		"--disk-id", "disk-" + name, "--macs", "02:00:00:00:00:" + fmt.Sprintf("%02x", len(name)), "--time-sync-interval", "1s"}, extra...)
	p := startCmd(c.t, "agent "+name, ferryIn(c.agentNetns[name], args...))
	if c.agentProcs == nil {
		c.agentProcs = map[string]*proc{}
	}
	c.agentProcs[name] = p
	return p
}

func (c *cluster) metric(name string) float64 {
	c.t.Helper()
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, name+" ") {
			var v float64
			fmt.Sscan(strings.TrimPrefix(line, name+" "), &v)
			return v
		}
	}
	return 0
}

// TestEnrolmentApproveRestart is the paper's enrolment flow across real
// processes: pending → approved by an administrator → online, periodic
// re-authentication, and after restarting both MMC and agent the agent
// logs in again without a new approval.
func TestEnrolmentApproveRestart(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	ag := c.startAgent("host1")

	var pending []agentView
	c.waitFor("a pending enrolment", func() bool {
		if err := c.ctl(&pending, "agents", "pending"); err != nil {
			t.Fatal(err)
		}
		return len(pending) == 1
	})
	a := pending[0]
	if a.State != "pending" || a.Online || a.Hostname != "host1" || a.Facts.DiskID != "disk-host1" {
		t.Fatalf("pending agent: %+v", a)
	}
	// Not approved: it must not be online, even after a while.
	time.Sleep(time.Second)
	if a, _ := c.agent("host1"); a.Online || a.State != "pending" {
		t.Fatalf("unapproved agent: %+v", a)
	}
	var approved agentView
	if err := c.ctl(&approved, "agents", "approve", a.ID); err != nil {
		t.Fatal(err)
	}
	if approved.State != "approved" {
		t.Fatalf("after approve: %+v", approved)
	}
	c.waitFor("agent online", func() bool { a, _ := c.agent("host1"); return a.Online })
	// Re-authentication runs every 1–2 s here: wait for two.
	c.waitFor("two re-authentications", func() bool { return c.metric("ferry_mmc_reauth_ok_total") >= 2 })
	// Approving twice is a conflict, not a second code.
	if err := c.ctl(nil, "agents", "approve", a.ID); err == nil || !strings.Contains(err.Error(), "409") && !strings.Contains(err.Error(), "approved") {
		t.Fatalf("second approve: %v", err)
	}

	// Restart both: the agent logs in again with what both sides stored.
	ag.stop()
	c.mmc.stop()
	c.startMMC()
	ag = c.startAgent("host1")
	c.waitFor("agent online after restart", func() bool { a, _ := c.agent("host1"); return a.Online })
	if n := len(c.agents()); n != 1 {
		t.Fatalf("%d agent records after restart, want 1", n)
	}
	for _, want := range []string{"enrol.request", "agent.approve", "enrol.code-delivered"} {
		if c.countAudit(want, "ok") != 1 {
			t.Errorf("audit: %s recorded %d times, want 1", want, c.countAudit(want, "ok"))
		}
	}
	if n := c.countAudit("login", "ok"); n < 2 {
		t.Errorf("audit: %d logins, want ≥ 2", n)
	}
	// The registration code reached the agent's data dir with mode 0600
	// and never appears in any log.
	st, err := os.Stat(filepath.Join(c.agentDirs["host1"], "agent.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("agent state file: %v", err)
	}
	_ = ag
}

// TestJoinToken: a single-use token approves one agent at once; a second
// agent presenting it, and one presenting a guessed token, are refused,
// counted and audited, and leave no record.
func TestJoinToken(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--ttl", "1h", "--uses", "1"); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok.Token, "fjt1.") {
		t.Fatalf("token %q", tok.Token)
	}
	c.startAgent("auto1", "--token", tok.Token)
	c.waitFor("token-approved agent online", func() bool { a, _ := c.agent("auto1"); return a.Online && a.State == "approved" })

	second := c.startAgent("auto2", "--token", tok.Token)
	if !second.exited(20 * time.Second) {
		t.Fatal("agent with a used-up token kept running")
	}
	if !strings.Contains(second.log(), "join token not accepted") {
		t.Fatalf("agent with a used-up token: no clear error:\n%s", second.log())
	}
	guessed := c.startAgent("auto3", "--token", "fjt1.0123456789abcdef."+strings.Repeat("A", 43))
	if !guessed.exited(20 * time.Second) {
		t.Fatal("agent with a guessed token kept running")
	}
	if _, ok := c.agent("auto2"); ok {
		t.Fatal("refused enrolment left a record")
	}
	if _, ok := c.agent("auto3"); ok {
		t.Fatal("refused enrolment left a record")
	}
	if n := c.countAudit("enrol.token", "denied"); n != 2 {
		t.Fatalf("audit: %d denied token uses, want 2", n)
	}
	if v := c.metric("ferry_mmc_token_failures_total"); v != 2 {
		t.Fatalf("token failure metric %v, want 2", v)
	}
}

// TestRevokeAndChangedDisk: revoking ends the live session within seconds
// and refuses every later handshake; an agent whose disk id changed is
// refused with an alarm.
func TestRevokeAndChangedDisk(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	r := c.startAgent("r1", "--token", tok.Token)
	d := c.startAgent("d1", "--token", tok.Token)
	c.waitFor("both online", func() bool {
		a, _ := c.agent("r1")
		b, _ := c.agent("d1")
		return a.Online && b.Online
	})
	r1, _ := c.agent("r1")
	start := time.Now()
	if err := c.ctl(nil, "agents", "revoke", r1.ID); err != nil {
		t.Fatal(err)
	}
	c.waitFor("revoked agent offline", func() bool { a, _ := c.agent("r1"); return !a.Online && a.State == "revoked" })
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("revoked session lasted %v", el)
	}
	// The agent is told why and stops.
	if !r.exited(10 * time.Second) {
		t.Fatal("revoked agent kept running")
	}
	if !strings.Contains(r.log(), "revoked") {
		t.Fatalf("revoked agent gave no clear reason:\n%s", r.log())
	}
	// Started again with the same key, every handshake is refused and
	// audited, and it never comes back online.
	c.startAgent("r1")
	c.waitFor("refused handshakes of the revoked key", func() bool { return c.countAudit("login.refused", "denied") >= 1 })
	time.Sleep(2 * time.Second)
	if a, _ := c.agent("r1"); a.Online || a.State != "revoked" {
		t.Fatalf("revoked agent: %+v", a)
	}

	// Same data directory, different disk: refused, alarmed.
	d.stop()
	changed := c.startAgent("d1", "--disk-id", "another-disk")
	if !changed.exited(20 * time.Second) {
		t.Fatal("agent with a changed disk id kept running")
	}
	if !strings.Contains(changed.log(), "host facts changed: disk_id") {
		t.Fatalf("no clear refusal:\n%s", changed.log())
	}
	if c.countAudit("login.facts-changed", "denied") != 1 || c.metric("ferry_mmc_fact_alarms_total") != 1 {
		t.Fatal("facts change not audited or counted")
	}
	if a, _ := c.agent("d1"); a.Online || a.Facts.DiskID != "disk-d1" {
		t.Fatalf("record changed by a refused login: %+v", a)
	}
}

// metricSum adds up every series of a metric family at the MMC.
func (c *cluster) metricSum(family string) float64 {
	c.t.Helper()
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, family+" ") || strings.HasPrefix(line, family+"{") {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sum += v
		}
	}
	return sum
}
