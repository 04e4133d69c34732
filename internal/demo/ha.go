package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/mmc"
)

// The demo with three MMCs (--ha). They run as child processes (`ferry
// mmc`, formed as an operator would: the first alone, the others with
// --join and a join token), so that the leader can be killed with
// SIGKILL — no goodbye to anyone, as when its machine dies. The demo's
// own client then talks to a survivor, and probes measure the takeover
// from the kill: the survivors' election, the first write a survivor
// accepts, every agent online again.

// haMembers is the size of the demo's MMC cluster.
const haMembers = 3

// probeEvery is how often a failover probe tries again; probeTimeout
// bounds one try (a survivor forwards to the dead leader until it learns
// of the new one).
const (
	probeEvery   = 50 * time.Millisecond
	probeTimeout = 2 * time.Second
)

// haMember is one MMC process of the demo's cluster.
type haMember struct {
	name      string // mmc1, mmc2, mmc3
	dir       string
	listen    string // SUDP (raft and agents)
	adminAddr string
	id        string      // its raft id, from the members' list
	cl        *api.Client // its admin API, retrying through an election
	probe     *api.Client // its admin API, one short try per call (the takeover's probes)
	cmd       *exec.Cmd
	done      chan struct{} // closed once the process has exited
}

func (m *haMember) adminURL() string { return "http://" + m.adminAddr }

func (m *haMember) running() bool {
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// haCluster is the demo's three MMC processes.
type haCluster struct {
	bin     string
	members []*haMember
}

// HASummary is the takeover in the summary (`ferry demo --ha --json`);
// durations are from the kill.
type HASummary struct {
	Members []HAMember `json:"members"`
	// Killed is the member that led and was killed (SIGKILL), during
	// what ("m1 transferring"; "" between migrations).
	Killed       string `json:"killed"`
	KilledID     string `json:"killed_id"`
	KilledDuring string `json:"killed_during,omitempty"`
	NewLeader    string `json:"new_leader"`
	NewLeaderID  string `json:"new_leader_id"`
	// ElectedMS: a survivor reports itself the leader (its raft state,
	// from its admin API's /v1/cluster/self).
	ElectedMS int64 `json:"elected_ms"`
	// FailoverMS: a survivor accepts its first write (a token created).
	FailoverMS int64 `json:"failover_ms"`
	// AgentsReattachedMS: every agent online again, as the survivors'
	// cluster shows it.
	AgentsReattachedMS int64 `json:"agents_reattached_ms"`
	// Rejoined: the killed member, restarted at the end, is back as a
	// follower (it heard from the leader and applied what the leader had
	// applied before the restart), RejoinedMS after its restart.
	Rejoined   bool  `json:"rejoined"`
	RejoinedMS int64 `json:"rejoined_ms,omitempty"`
}

// HAMember names one MMC of the demo's cluster.
type HAMember struct {
	Name  string `json:"name"`
	ID    string `json:"id"`
	Admin string `json:"admin"`
}

// startHA forms the demo's cluster of three MMC processes on loopback:
// the first with the admin API on the default address when it is free
// (as the single demo MMC), the others on free ports. It returns once
// the three are voters under one leader and their bundle lists them all.
func startHA(ctx context.Context, dir, bin string) (*cluster, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	h := &haCluster{bin: bin}
	c := &cluster{dir: dir, ha: h, agents: map[string]*exec.Cmd{}, stopMMC: h.stop}
	fail := func(err error) (*cluster, error) {
		h.stop()
		return nil, err
	}
	var token string
	for i := range haMembers {
		m := &haMember{name: fmt.Sprintf("mmc%d", i+1), dir: filepath.Join(dir, fmt.Sprintf("mmc%d", i+1))}
		// Each member on its own loopback address, as on its own
		// machine: a joining member presents its join token from its
		// SUDP address, and the first member counts token attempts per
		// source address — the agents' four, from 127.0.0.1, and the
		// members' two from there would exceed its burst of five.
		var err error
		if m.listen, err = freeAddr("udp", fmt.Sprintf("127.0.0.%d", i+1)); err != nil {
			return fail(err)
		}
		m.adminAddr = mmc.DefaultAdmin
		if i > 0 || !free(m.adminAddr) {
			if m.adminAddr, err = freeAddr("tcp", "127.0.0.1"); err != nil {
				return fail(err)
			}
		}
		h.members = append(h.members, m)
		var join []string
		if i > 0 {
			jt, err := h.members[0].cl.CreateMMCJoinToken(ctx, 0)
			if err != nil {
				return fail(fmt.Errorf("demo: join token for %s: %w", m.name, err))
			}
			b, err := h.bundle(h.members[0])
			if err != nil {
				return fail(err)
			}
			join = []string{"--join", b, "--join-token", jt.Token}
		}
		// The admin token is the first member's, valid on every member
		// once they have joined.
		if err := h.start(ctx, m, token, join...); err != nil {
			return fail(err)
		}
		if i == 0 {
			tok, err := os.ReadFile(filepath.Join(m.dir, mmc.AdminTokenFile))
			if err != nil {
				return fail(err)
			}
			token = strings.TrimSpace(string(tok))
			m.cl.Token, m.probe.Token = token, token
		}
	}
	first := h.members[0]
	if err := waitUntil(ctx, 60*time.Second, "three voters under one leader", func() bool {
		ms, err := first.cl.MMCs(ctx)
		if err != nil || len(ms) != haMembers {
			return false
		}
		leaders := 0
		for _, x := range ms {
			if !x.Voter || x.State == "unreachable" {
				return false
			}
			if x.State == "leader" {
				leaders++
			}
			if m := h.byAdmin(x.Admin); m != nil {
				m.id = x.ID
			}
		}
		return leaders == 1
	}); err != nil {
		return fail(fmt.Errorf("demo: forming the MMC cluster: %w (see the logs in %s)", err, dir))
	}
	if err := waitUntil(ctx, 30*time.Second, "a bundle listing every MMC", func() bool {
		b, err := h.bundle(first)
		if err != nil {
			return false
		}
		p, err := identity.ParseBundle(b)
		c.bundle = b
		return err == nil && len(p.MMCs) == haMembers
	}); err != nil {
		return fail(err)
	}
	c.admin, c.tokenFile, c.cl = first.adminURL(), filepath.Join(first.dir, mmc.AdminTokenFile), first.cl
	return c, nil
}

// start runs member m (again, if it ran before: its data directory holds
// its state, so a restart needs no --join) and waits for its admin API.
func (h *haCluster) start(ctx context.Context, m *haMember, token string, extra ...string) error {
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(m.dir), m.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append([]string{"mmc", "--data-dir", m.dir, "--listen", m.listen, "--admin", m.adminAddr, "--policy-interval", "1s"}, extra...)
	cmd := exec.Command(h.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, as the agents: a Ctrl-C reaches the demo,
	// which stops the MMCs after the agents.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("demo: start %s: %w", m.name, err)
	}
	done := make(chan struct{})
	// Owned by the process: it ends when the process does (stop, kill).
	go func() { defer close(done); _ = cmd.Wait() }()
	m.cmd, m.done = cmd, done
	m.cl = &api.Client{Base: m.adminURL(), Token: token}
	m.probe = &api.Client{Base: m.adminURL(), Token: token, HTTP: &http.Client{Timeout: probeTimeout}, RetryFor: -1}
	// Done when it answers, or has exited (which is then the error).
	err = waitUntil(ctx, 30*time.Second, m.name+"'s admin API", func() bool {
		if !m.running() {
			return true
		}
		resp, err := http.Get(m.adminURL() + "/metrics")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	if err == nil && !m.running() {
		err = fmt.Errorf("demo: %s exited: %v (see %s.log in %s)", m.name, cmd.ProcessState, m.name, filepath.Dir(m.dir))
	}
	return err
}

// bundle is what `ferry mmc bundle` prints for member m.
func (h *haCluster) bundle(m *haMember) (string, error) {
	b, err := identity.ReadSecretFile(filepath.Join(m.dir, mmc.BundleFile))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (h *haCluster) byAdmin(url string) *haMember {
	for _, m := range h.members {
		if m.adminURL() == url {
			return m
		}
	}
	return nil
}

// leader is the member that leads, as via lists the members.
func (h *haCluster) leader(ctx context.Context, via *haMember) (*haMember, error) {
	ms, err := via.cl.MMCs(ctx)
	if err != nil {
		return nil, err
	}
	for _, x := range ms {
		if x.State == "leader" {
			if m := h.byAdmin(x.Admin); m != nil {
				return m, nil
			}
		}
	}
	return nil, errors.New("no leader")
}

// roles is the members' line of the live view, as via lists them.
func (h *haCluster) roles(ctx context.Context, via *haMember) string {
	ms, err := via.cl.MMCs(ctx)
	if err != nil {
		return ""
	}
	var parts []string
	for _, m := range h.members {
		i := slices.IndexFunc(ms, func(x api.MMCMember) bool { return x.Admin == m.adminURL() })
		switch {
		case !m.running():
			parts = append(parts, m.name+" killed")
		case i < 0:
			parts = append(parts, m.name+" ?")
		default:
			parts = append(parts, m.name+" "+ms[i].State)
		}
	}
	return strings.Join(parts, " · ")
}

func (h *haCluster) summaryMembers() []HAMember {
	var out []HAMember
	for _, m := range h.members {
		out = append(out, HAMember{Name: m.name, ID: m.id, Admin: m.adminURL()})
	}
	return out
}

// stop stops every running member: SIGTERM, then SIGKILL after 5 s.
func (h *haCluster) stop() {
	var wg sync.WaitGroup
	for _, m := range h.members {
		if !m.running() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-m.done:
			case <-time.After(5 * time.Second):
				_ = m.cmd.Process.Kill()
				<-m.done
			}
		}()
	}
	wg.Wait()
}

// kill stops m with SIGKILL.
func (m *haMember) kill() {
	_ = m.cmd.Process.Kill()
	<-m.done
}

// probeResult is one measured step of a takeover.
type probeResult struct {
	step   string // elected, write, reattached
	after  time.Duration
	leader *haMember // elected: the new leader
}

// failover kills the leader with SIGKILL (during: what is under way, for
// the story) and follows the takeover until every agent is back; the
// live view goes on at a survivor meanwhile, its errors while the
// survivors elect a leader being expected. Afterwards the demo's client
// talks to the new leader.
func (c *cluster) failover(ctx context.Context, v *view, during string) (*HASummary, error) {
	h := c.ha
	killed, err := h.leader(ctx, h.members[0])
	if err != nil {
		return nil, fmt.Errorf("demo: finding the leader to kill: %w", err)
	}
	var survivors []*haMember
	for _, m := range h.members {
		if m != killed {
			survivors = append(survivors, m)
		}
	}
	sum := &HASummary{Members: h.summaryMembers(), Killed: killed.name, KilledID: killed.id, KilledDuring: during}
	what := "between migrations"
	if during != "" {
		what = "while " + during
	}
	v.event("kill -9 of the leader %s (%s) %s: no goodbye to anyone", killed.name, killed.adminURL(), what)
	start := time.Now()
	killed.kill()
	// Not asked of a survivor: it would forward to the dead leader until
	// the election, and the probes would start that late.
	v.cluster = killed.name + " killed · " + survivors[0].name + ", " + survivors[1].name + " electing"
	c.cl, c.admin = survivors[0].cl, survivors[0].adminURL()
	v.admin = c.admin

	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	results := make(chan probeResult, 3) // never blocks a probe
	var wg sync.WaitGroup
	defer func() {
		cancel() // the probes still trying stop at their next try
		wg.Wait()
	}()
	probe := func(step string, try func() (*haMember, bool)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if m, ok := try(); ok {
					results <- probeResult{step: step, after: time.Since(start), leader: m}
					return
				}
				if !sleep(pctx, probeEvery) {
					return
				}
			}
		}()
	}
	// Each survivor's own view (not the members' list, which waits for
	// the dead member's answer up to its timeout): either may win.
	var turn int
	probe("elected", func() (*haMember, bool) {
		turn++
		m := survivors[turn%len(survivors)]
		self, err := m.probe.MMCSelf(pctx)
		return m, err == nil && self.State == "leader"
	})
	probe("write", func() (*haMember, bool) {
		tok, err := survivors[0].probe.CreateToken(pctx, time.Minute, 1)
		if err != nil {
			return nil, false
		}
		// Only a probe: it should let no one enrol.
		_, _ = survivors[0].probe.RevokeToken(pctx, tok.ID)
		return nil, true
	})
	probe("reattached", func() (*haMember, bool) {
		hs, err := survivors[0].probe.Hosts(pctx)
		return nil, err == nil && online(hs) == len(hosts)
	})
	for pending := 3; pending > 0; {
		select {
		case r := <-results:
			pending--
			ms := r.after.Milliseconds()
			switch r.step {
			case "elected":
				sum.ElectedMS, sum.NewLeader, sum.NewLeaderID = ms, r.leader.name, r.leader.id
				c.cl, c.admin = r.leader.cl, r.leader.adminURL()
				v.admin = c.admin
				v.event("%s elected leader by the survivors (raft) %.2f s after the kill; the demo now talks to its admin API", r.leader.name, r.after.Seconds())
				v.cluster = h.roles(ctx, r.leader)
			case "write":
				sum.FailoverMS = ms
				v.event("first write accepted at survivor %s %.2f s after the kill", survivors[0].name, r.after.Seconds())
			case "reattached":
				sum.AgentsReattachedMS = ms
				v.event("all %d agents re-attached to the new leader %.2f s after the kill (no re-approval: same keys, same records)", len(hosts), r.after.Seconds())
			}
		case <-time.After(frameEvery):
			_, _ = v.frame(pctx, c.cl) // fails until a leader is elected
		case <-pctx.Done():
			return sum, fmt.Errorf("demo: the takeover after killing %s did not complete: %w (see the logs in %s)", killed.name, pctx.Err(), c.dir)
		}
	}
	return sum, nil
}

// rejoin restarts the killed member and waits until the leader lists it
// as a follower again; the live view goes on meanwhile.
func (c *cluster) rejoin(ctx context.Context, v *view, sum *HASummary) error {
	h := c.ha
	var killed, leader *haMember
	for _, m := range h.members {
		switch m.name {
		case sum.Killed:
			killed = m
		case sum.NewLeader:
			leader = m
		}
	}
	if killed == nil || leader == nil {
		return fmt.Errorf("demo: rejoin: no member %q or %q", sum.Killed, sum.NewLeader)
	}
	// Back means more than a follower's state (a restarted member is a
	// follower before it hears from anyone): it has heard from the
	// leader and applied what the leader had applied before the restart,
	// the entries written since the kill among them.
	ms, err := leader.cl.MMCs(ctx)
	if err != nil {
		return err
	}
	var target uint64
	for _, x := range ms {
		if x.Admin == leader.adminURL() {
			target = x.AppliedIndex
		}
	}
	v.event("%s restarted from its data directory (no --join: it is a member already)", killed.name)
	start := time.Now()
	if err := h.start(ctx, killed, leader.cl.Token); err != nil {
		return err
	}
	v.cluster = h.roles(ctx, leader)
	back := func() bool {
		ms, err := leader.cl.MMCs(ctx)
		if err != nil || len(ms) != haMembers {
			return false
		}
		for _, x := range ms {
			if x.State == "unreachable" {
				return false
			}
			if x.Admin == killed.adminURL() && (x.State != "follower" || x.LastContactMS == nil || x.AppliedIndex < target) {
				return false
			}
		}
		return true
	}
	limit := time.Now().Add(time.Minute)
	for !back() {
		if time.Now().After(limit) {
			return fmt.Errorf("demo: %s did not rejoin as a follower within a minute (see %s.log in %s)", killed.name, killed.name, c.dir)
		}
		if _, err := v.frame(ctx, c.cl); err != nil {
			return err
		}
		if !sleep(ctx, frameEvery) {
			return ctx.Err()
		}
	}
	sum.Rejoined, sum.RejoinedMS = true, time.Since(start).Milliseconds()
	v.cluster = h.roles(ctx, leader)
	v.event("%s back as a follower of %s %.2f s after its restart (heard from the leader, caught up to its raft index %d)", killed.name, leader.name, time.Since(start).Seconds(), target)
	_, err = v.frame(ctx, c.cl) // the last frame shows it
	return err
}

func online(hs []api.Host) int {
	n := 0
	for _, h := range hs {
		if h.Online {
			n++
		}
	}
	return n
}

// waitUntil polls cond until it holds, d passes or ctx ends.
func waitUntil(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for !cond() {
		if !sleep(ctx, probeEvery) {
			return fmt.Errorf("demo: waiting for %s: %w", what, ctx.Err())
		}
	}
	return nil
}

// freeAddr is an address on ip with a port free at the moment.
func freeAddr(network, ip string) (string, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.LocalAddr().String(), nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// free reports whether TCP address addr can be listened on.
func free(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}
