package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"text/tabwriter"
	"time"
)

// haTrials is how many failovers a BenchmarkHAFailover variant measures
// (issue #18: at least 20); FERRY_HA_TRIALS overrides it.
func haTrials(b *testing.B) int {
	n := 20
	if v := os.Getenv("FERRY_HA_TRIALS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("FERRY_HA_TRIALS=%q: want a positive count", v)
		}
	}
	return max(n, b.N)
}

// BenchmarkHAFailover measures MMC failover (issue #18) over repeated
// trials on one cluster of three `ferry mmc` processes with raft's
// default 1 s timeouts and four agents: per trial, from a steady state
// (three healthy members, every agent online with its standby session),
// kill -9 of the leader, then the time to the first successful write
// through `ferry ctl` at a survivor and to every agent online again;
// then the killed member restarts from its data directory and rejoins as
// a follower. Run it alone, once:
//
//	go test ./e2e -run '^$' -bench BenchmarkHAFailover -benchtime 1x -timeout 60m
//
// loopback: every process in this namespace. wan (root only): the WAN
// lab with the `wan` profile (50 ms RTT, 1 % loss, 100 Mbit/s); two
// members in site a, one in site b, two agents in each site. The lab has
// two sites only, so one of them holds two members; the leader is moved
// to a site-a member before each kill, so that the two survivors are on
// either side of the WAN: the election's votes, the new leader's first
// commits, and the agents of one site (or the other) all cross the
// lossy link — the worst case of this placement. (A leader in site b
// would leave a majority in one site, electing over loopback.)
func BenchmarkHAFailover(b *testing.B) {
	agents := []struct{ name, site string }{{"ha-a1", "a"}, {"ha-a2", "a"}, {"ha-b1", "b"}, {"ha-b2", "b"}}
	b.Run("loopback", func(b *testing.B) {
		c := newHACluster(b)
		startHAAgents(c, agents, nil)
		benchFailover(b, c, len(agents), nil, func(killed int) int { return (killed + 1) % 3 })
	})
	b.Run("wan", func(b *testing.B) {
		requireRoot(b)
		l := upLab(b, "wan")
		c := newHAClusterInLab(b, l, []int{0, 0, 1})
		startHAAgents(c, agents, map[string]string{"a": l.netns[0], "b": l.netns[1]})
		// The survivor written at is the other member in site a (1-killed).
		benchFailover(b, c, len(agents), []int{0, 1}, func(killed int) int { return 1 - killed })
	})
}

// startHAAgents enrols agents (name, site) with one token, each in the
// namespace of its site (nsOf; nil: this one), and waits until all are
// online.
func startHAAgents(c *haCluster, agents []struct{ name, site string }, nsOf map[string]string) {
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(0, &tok, "tokens", "create", "--uses", strconv.Itoa(len(agents))); err != nil {
		c.t.Fatal(err)
	}
	for _, a := range agents {
		c.agentNetns[a.name] = nsOf[a.site]
		// Debug logs: where a failover's time goes is read from them.
		c.startAgent(a.name, "--token", tok.Token, "--site", a.site, "--log-level", "debug")
	}
	c.waitFor(60*time.Second, "every agent online", func() bool { return c.online(0) == len(agents) })
}

// benchFailover runs the trials on c: before each, the leadership moves
// to leaders[trial % len] (nil: whoever leads is killed); survivor names
// the member written at after killing a given one.
func benchFailover(b *testing.B, c *haCluster, agents int, leaders []int, survivor func(killed int) int) {
	n := haTrials(b)
	type trial struct {
		at            time.Time
		killed, led   int
		write, attach time.Duration
	}
	var trials []trial
	b.ResetTimer()
	for i := range n {
		lead := c.steady(90*time.Second, agents)
		if len(leaders) > 0 {
			if want := leaders[i%len(leaders)]; lead != want {
				c.leadFrom(want)
				lead = c.steady(90*time.Second, agents)
			}
		}
		tr := trial{at: time.Now(), killed: lead}
		s := survivor(lead)
		tr.write, tr.attach = c.measureFailover(lead, s, agents)
		tr.led = c.leader(s)
		trials = append(trials, tr)
		c.start(lead) // rejoins as a follower from its data directory
	}
	b.StopTimer()

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\ttrial\tkilled at\tkilled\tnew leader\twrite\tall agents\t\n", b.Name())
	var writes, attaches []time.Duration
	for i, tr := range trials {
		fmt.Fprintf(tw, "\t%d\t%s\tmmc%d\tmmc%d\t%.2fs\t%.2fs\t\n", i+1, tr.at.UTC().Format("15:04:05.000"), tr.killed+1, tr.led+1, tr.write.Seconds(), tr.attach.Seconds())
		writes, attaches = append(writes, tr.write), append(attaches, tr.attach)
	}
	slices.Sort(writes)
	slices.Sort(attaches)
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"max", 1}} {
		w, a := percentile(writes, q.q), percentile(attaches, q.q)
		fmt.Fprintf(tw, "\t%s\t\t\t\t%.2fs\t%.2fs\t\n", q.name, w.Seconds(), a.Seconds())
		b.ReportMetric(w.Seconds(), "write-"+q.name+"-s")
		b.ReportMetric(a.Seconds(), "attach-"+q.name+"-s")
	}
	tw.Flush()
	b.ReportMetric(float64(len(trials)), "trials")
	b.ReportMetric(0, "ns/op")
}
