package e2e

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

// The MMC cluster in the WAN lab: members and agents in the lab's sites
// (network namespaces), for the failover benchmark and the partition
// test of issue #18.

// requireRoot skips a test that needs the WAN lab when not root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the WAN lab needs root (network namespaces, TUN devices); run the suite as root")
	}
}

// newHAClusterInLab starts member i in site sites[i] of l (0: a, 1: b),
// listening for members and agents on the site's address and for ctl on
// that namespace's loopback. Ports differ per member, so that two members
// share a site and every admin URL names one member.
func newHAClusterInLab(t testing.TB, l *lab, sites []int) *haCluster {
	var places []haPlace
	for i, s := range sites {
		places = append(places, haPlace{netns: l.netns[s],
			sudp:  fmt.Sprintf("%s:%d", l.addr[s], 7946+10*i),
			admin: fmt.Sprintf("127.0.0.1:%d", 7947+10*i)})
	}
	return newHAClusterAt(t, places)
}

// httpGetIn is a GET whose connection is dialled in network namespace ns
// ("": this one), where a member's admin API listens on loopback.
func httpGetIn(ns, url string) (*http.Response, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	if ns != "" {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(ns, func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}
	}
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	return cl.Get(url)
}

// metric reads an unlabelled sample of member i's /metrics (the admin
// API serves it without a token).
func (c *haCluster) metric(i int, name string) (float64, error) {
	m := c.members[i]
	resp, err := httpGetIn(m.netns, "http://"+m.admin+"/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("mmc%d: no metric %s", i+1, name)
}

// memberAt is the member whose admin URL is admin (-1: none).
func (c *haCluster) memberAt(admin string) int {
	for i, m := range c.members {
		if "http://"+m.admin == admin {
			return i
		}
	}
	return -1
}

// memberID is member i's raft id, as the cluster lists it.
func (c *haCluster) memberID(i int) string {
	for at := range c.members {
		ms, err := c.mmcs(at)
		if err != nil {
			continue
		}
		for _, m := range ms {
			if m.Admin == "http://"+c.members[i].admin {
				return m.ID
			}
		}
	}
	c.t.Fatalf("mmc%d is in no member's list", i+1)
	return ""
}

// steady waits until every member is up and reachable with one leader,
// every agent is online at it and each has its standby session at a
// follower (sessions at the members sum to the agents): the state a
// failover starts from. It returns the leader.
func (c *haCluster) steady(limit time.Duration, agents int) int {
	c.t.Helper()
	lead := -1
	c.waitFor(limit, fmt.Sprintf("%d members healthy, %d agents online with standby sessions", len(c.members), agents), func() bool {
		lead = -1
		for at := range c.members {
			ms, err := c.mmcs(at)
			if err != nil || len(ms) != len(c.members) {
				return false
			}
			l := -1
			for _, m := range ms {
				if m.State == "unreachable" {
					return false
				}
				if m.State == "leader" {
					l = c.memberAt(m.Admin)
				}
			}
			if l < 0 || (lead >= 0 && l != lead) {
				return false
			}
			lead = l
		}
		if c.online(lead) != agents {
			return false
		}
		standby := 0.0
		for i := range c.members {
			v, err := c.metric(i, "ferry_mmc_standby_sessions")
			if err != nil {
				return false
			}
			standby += v
		}
		return int(standby) == agents
	})
	return lead
}

// leadFrom hands the leadership to member i (if it does not lead).
func (c *haCluster) leadFrom(i int) {
	c.t.Helper()
	lead := c.leader(i)
	if lead == i {
		return
	}
	// Asked at the leader itself: a follower forwarding the request
	// abandons it as soon as it learns of the new leader — the request's
	// own effect — and answers 504 "may or may not have been applied".
	var r struct {
		Leader string `json:"leader"`
	}
	if err := c.ctl(max(lead, 0), &r, "mmcs", "transfer-leadership", c.memberID(i)); err != nil {
		c.t.Fatal(err)
	}
	c.waitFor(30*time.Second, fmt.Sprintf("mmc%d leading", i+1), func() bool { return c.leader(i) == i })
}

// measureFailover kills member killed (the leader) and measures, from
// the kill, the first successful write through `ferry ctl` at survivor
// and the moment every agent is online at the survivors' leader. The
// writes are tried with --retry-for 0 every 20 ms: ctl's own retries
// (every 250 ms) would round the time up.
func (c *haCluster) measureFailover(killed, survivor, agents int) (write, attach time.Duration) {
	c.t.Helper()
	start := time.Now()
	c.kill(killed)
	for c.ctl(survivor, nil, "--retry-for", "0", "tokens", "create", "--ttl", "1m") != nil {
		if time.Since(start) > 60*time.Second {
			c.t.Fatalf("no write at mmc%d within 60 s of killing mmc%d", survivor+1, killed+1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	write = time.Since(start)
	c.waitFor(90*time.Second, "every agent re-attached", func() bool { return c.online(survivor) == agents })
	return write, time.Since(start)
}

// percentile is the nearest-rank q-quantile of sorted ds.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// readyz is member i's /readyz status code (0 when it does not answer).
func (c *haCluster) readyz(i int) int {
	m := c.members[i]
	resp, err := httpGetIn(m.netns, "http://"+m.admin+"/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
