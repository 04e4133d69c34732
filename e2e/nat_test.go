package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab"
)

// natLab is a WAN lab with a hub (the public middle) and the sites
// behind NATs natA and natB ("" for none).
type natLab struct {
	lab
	hubNetns, hubAddr string
	routerNetns       [2]string // each NATed site's router ("" without a NAT)
	publicAddr        [2]string
}

func upNATLab(t testing.TB, natA, natB string, link ...string) *natLab {
	t.Helper()
	bin := filepath.Join(filepath.Dir(ferryBin), "wanlab")
	l := &natLab{lab: lab{name: fmt.Sprintf("fn%d", os.Getpid()%10000)}}
	_ = exec.Command(bin, "down", l.name).Run()
	if len(link) == 0 {
		link = []string{"--delay", "10ms"}
	}
	args := append([]string{"up", l.name, "--hub"}, link...)
	if natA != "" {
		args = append(args, "--nat-a", natA)
	}
	if natB != "" {
		args = append(args, "--nat-b", natB)
	}
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("wanlab %v: %v: %s", args, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(bin, "down", l.name).CombinedOutput(); err != nil {
			t.Errorf("wanlab down: %v: %s", err, out)
		}
	})
	st, err := wanlab.Status(l.name)
	if err != nil || st.Hub == nil {
		t.Fatalf("wanlab status: %+v, %v", st, err)
	}
	for i := range 2 {
		l.netns[i], l.addr[i] = st.Sites[i].Netns, st.Sites[i].Addr
		l.routerNetns[i], l.publicAddr[i] = st.Sites[i].RouterNetns, st.Sites[i].PublicAddr
	}
	l.hubNetns, l.hubAddr = st.Hub.Netns, st.Hub.Addr
	return l
}

// TestNATMatrix: the MMC (with its relay) in the public middle, the two
// sites behind every pair of NATs (none, eim, symmetric); in every cell
// a live migration completes, verified. Where a direct path can exist
// the agents punch one through (path: direct); two symmetric NATs
// cannot punch, and the link runs through the relay (path: relayed,
// with why punching failed).
func TestNATMatrix(t *testing.T) {
	requireRoot(t)
	kinds := []string{"", "eim", "symmetric"}
	for _, a := range kinds {
		for _, b := range kinds {
			name := fmt.Sprintf("%s-%s", orNone(a), orNone(b))
			t.Run(name, func(t *testing.T) {
				var link []string
				if p := os.Getenv("FERRY_NAT_PROFILE"); p != "" {
					link = []string{"--profile", p}
				}
				l := upNATLab(t, a, b, link...)
				c := newClusterIn(t, l.hubNetns, l.hubAddr+":7946", "--relay-ports", "40000-40099")
				c.agentNetns["h1"], c.agentNetns["h2"] = l.netns[0], l.netns[1]
				c.startSites(t)
				if err := c.ctl(nil, "vms", "create", "web", "--host", "h1", "--memory", "32MiB", "--workload", "cpu=0.1,dirty=1MB/s"); err != nil {
					t.Fatal(err)
				}
				c.waitFor("web reported on h1", func() bool { return c.vmState("h1", "web") == "running" })
				var created struct {
					ID string `json:"id"`
				}
				start := time.Now()
				if err := c.ctl(&created, "migrate", "web", "--to", "h2"); err != nil {
					t.Fatal(err)
				}
				m, err := c.watch(created.ID)
				if err != nil {
					t.Fatalf("watch: %v (%+v)", err, m)
				}
				want := "direct"
				if a == "symmetric" && b == "symmetric" {
					want = "relayed"
				}
				c.checkCompletedOver(m, "web", "h1", "h2", want)
				if want == "relayed" && m.PathNote == "" {
					t.Error("a relayed link without the reason punching failed")
				}
				// The first byte follows the link (the destination
				// reports when it came).
				if m.FirstByteMS <= 0 || m.FirstByteMS < m.LinkMS {
					t.Errorf("first_byte_ms %d with link_ms %d: want the first byte after the link", m.FirstByteMS, m.LinkMS)
				}
				// The MMC counts the link by its path.
				resp, err := httpGetIn(l.hubNetns, "http://"+c.admin+"/metrics")
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if line := `ferry_mmc_links_total{path="` + want + `"} 1`; !strings.Contains(string(body), line) {
					t.Errorf("metrics lack %q", line)
				}
				t.Logf("%s: completed over a %s path in %v (link up in %d ms, first byte at %d ms, migration %d ms) %s", name, m.Path, time.Since(start).Round(time.Millisecond), m.LinkMS, m.FirstByteMS, m.TotalMS, m.PathNote)
			})
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// TestRelayedLinkUpgrades: a firewall between the sites blocks every
// direct packet, so the agents cannot punch and the migration starts
// through the relay; once the firewall opens, the MMC's next attempt
// moves the running link to a direct path (the connection probes the
// peer's address while both punch). The migration completes, verified —
// nothing lost or duplicated across the move — and its record says the
// link is direct and was relayed at first.
func TestRelayedLinkUpgrades(t *testing.T) {
	requireRoot(t)
	l := upNATLab(t, "eim", "eim")
	block := fmt.Sprintf(`table ip ferry_block {
	chain sites {
		type filter hook forward priority -10; policy accept;
		ip daddr %[1]s drop
		ip saddr %[1]s drop
	}
}
`, l.publicAddr[1])
	nft := func(input string, args ...string) {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", l.routerNetns[0], "nft"}, args...)...)
		cmd.Stdin = strings.NewReader(input)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	nft(block, "-f", "-")
	c := newClusterIn(t, l.hubNetns, l.hubAddr+":7946", "--relay-ports", "40000-40099", "--link-upgrade-every", "2s")
	c.agentNetns["h1"], c.agentNetns["h2"] = l.netns[0], l.netns[1]
	c.startSites(t)
	if err := c.ctl(nil, "vms", "create", "web", "--host", "h1", "--memory", "64MiB", "--workload", "fill=1,cpu=0.1,dirty=1MB/s"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("web reported on h1", func() bool { return c.vmState("h1", "web") == "running" })
	var created struct {
		ID string `json:"id"`
	}
	if err := c.ctl(&created, "migrate", "web", "--to", "h2", "--max-bandwidth", "30mbit"); err != nil {
		t.Fatal(err)
	}
	var m migrationView
	c.waitFor("the migration transferring through the relay", func() bool {
		var ms []migrationView
		if c.ctl(&ms, "migrations", "list") != nil || len(ms) != 1 {
			return false
		}
		m = ms[0]
		return m.State == "transferring" && m.Path == "relayed"
	})
	if m.Progress > 0.5 {
		t.Fatalf("half transferred before the firewall opened: %+v", m)
	}
	nft("", "delete", "table", "ip", "ferry_block")
	c.waitForUpTo(20*time.Second, "the link moved to a direct path", func() bool {
		var ms []migrationView
		if c.ctl(&ms, "migrations", "list") != nil || len(ms) != 1 {
			return false
		}
		m = ms[0]
		return m.Path == "direct" || m.State != "transferring"
	})
	if m.State != "transferring" || m.Path != "direct" {
		t.Fatalf("the move: %s over %q (%s)", m.State, m.Path, m.Error)
	}
	t.Logf("moved at %.0f%% transferred: %s", 100*m.Progress, m.PathNote)
	m, err := c.watch(created.ID)
	if err != nil {
		t.Fatalf("watch: %v (%+v)", err, m)
	}
	c.checkCompleted(m, "web", "h1", "h2")
	if !strings.Contains(m.PathNote, "relayed at first") {
		t.Fatalf("path note %q", m.PathNote)
	}
}
