package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// relay is an on-path attacker between agents and the MMC: it forwards
// datagrams both ways and records them.
type relay struct {
	pc     net.PacketConn
	mmc    *net.UDPAddr
	mu     sync.Mutex
	client net.Addr
	up     [][]byte // agent → MMC
	down   [][]byte // MMC → agent
	out    *net.UDPConn
}

func newRelay(t *testing.T, mmcAddr string) *relay {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ua, err := net.ResolveUDPAddr("udp", mmcAddr)
	if err != nil {
		t.Fatal(err)
	}
	out, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{pc: pc, mmc: ua, out: out}
	t.Cleanup(func() { pc.Close(); out.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.client = from
			r.up = append(r.up, bytes.Clone(buf[:n]))
			r.mu.Unlock()
			out.Write(buf[:n])
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := out.Read(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.down = append(r.down, bytes.Clone(buf[:n]))
			to := r.client
			r.mu.Unlock()
			if to != nil {
				pc.WriteTo(buf[:n], to)
			}
		}
	}()
	return r
}

func (r *relay) initiations() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, p := range r.up {
		if len(p) == handshake.InitiationSize && p[0] == handshake.TypeInitiation {
			out = append(out, p)
		}
	}
	return out
}

// inject sends datagrams to addr from a socket of the attacker's own.
func inject(t *testing.T, addr string, pkts ...[]byte) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range pkts {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
}

func (c *cluster) bundleVia(t *testing.T, addr string) string {
	b, err := identity.ParseBundle(c.bundle)
	if err != nil {
		t.Fatal(err)
	}
	b.MMCs[0].Addr = addr
	return b.Encode()
}

// TestAttacksOnIdentity: replayed enrolment and login initiations (to the
// running MMC and after its restart), reflected packets, every single-bit
// corruption of a recorded initiation, a login attempt with credentials
// from a stolen copy of the MMC database, and a forged MMC. Each is refused,
// counted and (where it can be attributed) audited, and nothing changes.
func TestAttacksOnIdentity(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	rl := newRelay(t, c.sudp)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create"); err != nil {
		t.Fatal(err)
	}
	ag := c.startAgent("v1", "--token", tok.Token, "--bundle", c.bundleVia(t, rl.pc.LocalAddr().String()))
	c.waitFor("agent online through the relay", func() bool { a, _ := c.agent("v1"); return a.Online })
	inits := rl.initiations()
	if len(inits) < 2 {
		t.Fatalf("recorded %d initiations, want the enrolment's and the login's", len(inits))
	}
	before := c.agents()
	logins := c.countAudit("login", "ok")

	// Replays of the recorded enrolment and login, to the running MMC.
	inject(t, c.sudp, inits...)
	// Every replay is counted; repeats of one key from one source within
	// 10 s are audited once (a flood must not become a disk write per
	// packet).
	c.waitFor("replays refused and audited", func() bool {
		return c.countAudit("login.replay", "denied") >= 1 &&
			c.metric(`ferry_mmc_handshakes_refused_total{reason="replay"}`) >= float64(len(inits))
	})

	// Reflection: what the MMC sent, sent back to it. Each is dropped and
	// counted (unknown connection id, or a handshake type a responder
	// does not take).
	rl.mu.Lock()
	down := append([][]byte(nil), rl.down...)
	rl.mu.Unlock()
	dropped := c.metricSum("ferry_sudp_dropped_total") + c.metricSum("ferry_sudp_handshakes_total")
	inject(t, c.sudp, down...)
	c.waitFor("reflected packets counted", func() bool {
		return c.metricSum("ferry_sudp_dropped_total")+c.metricSum("ferry_sudp_handshakes_total") >= dropped+float64(len(down))
	})

	// Every single-bit corruption of the recorded login initiation.
	login := inits[len(inits)-1]
	var flipped [][]byte
	for bit := 0; bit < len(login)*8; bit++ {
		p := bytes.Clone(login)
		p[bit/8] ^= 1 << (bit % 8)
		flipped = append(flipped, p)
	}
	for i := 0; i < len(flipped); i += 64 {
		inject(t, c.sudp, flipped[i:min(i+64, len(flipped))]...)
		time.Sleep(5 * time.Millisecond)
	}
	c.waitFor("every corrupted initiation counted", func() bool {
		return c.metricSum("ferry_sudp_dropped_total")+c.metricSum("ferry_sudp_handshakes_total") >= dropped+float64(len(down)+len(flipped))
	})
	if got := c.countAudit("login", "ok"); got != logins {
		t.Fatalf("attacks produced %d new logins", got-logins)
	}

	// After an MMC restart the recorded initiations are still replays.
	ag.stop()
	c.mmc.stop()
	c.startMMC()
	replays := c.countAudit("login.replay", "denied")
	inject(t, c.sudp, inits...)
	c.waitFor("replays after restart refused", func() bool {
		return c.countAudit("login.replay", "denied") >= replays+1 &&
			c.metric(`ferry_mmc_handshakes_refused_total{reason="replay"}`) >= float64(len(inits))
	})
	after := c.agents()
	if len(after) != len(before) || after[0].State != before[0].State || after[0].Facts.DiskID != before[0].Facts.DiskID {
		t.Fatalf("state changed: %+v → %+v", before, after)
	}

	// A stolen copy of the database: it holds K for the agent, but not the
	// agent's private key or M, and K alone does not log in.
	c.mmc.stop()
	db, err := os.ReadFile(filepath.Join(c.dir, "mmc.db"))
	if err != nil {
		t.Fatal(err)
	}
	c.startMMC()
	agentDir := c.agentDirs["v1"]
	keyFile, _ := os.ReadFile(filepath.Join(agentDir, identity.KeyFile))
	priv, err := handshake.ParseKey(strings.TrimSpace(string(keyFile)))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, priv[:]) {
		t.Fatal("the MMC database contains the agent's private key")
	}
	stolenPath := filepath.Join(t.TempDir(), "stolen.db")
	if err := os.WriteFile(stolenPath, db, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(stolenPath)
	if err != nil {
		t.Fatal(err)
	}
	agents, _ := st.Agents()
	st.Close()
	if len(agents) != 1 || agents[0].PSK == ([32]byte{}) || len(agents[0].PendingCode) != 0 {
		t.Fatalf("stolen record: %d agents, pending code %d bytes", len(agents), len(agents[0].PendingCode))
	}
	thief, err := handshake.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := identity.ParseBundle(c.bundle)
	keys, _ := b.Keys()
	ep, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: thief, ClusterID: b.ClusterID})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if conn, err := ep.Dial(ctx, c.sudp, keys[0], agents[0].PSK); err == nil {
		conn.Close()
		t.Fatal("logged in with a psk from the stolen database")
	}
	if v := c.metric(`ferry_mmc_logins_total`); v != 0 {
		t.Fatalf("%v logins after the theft attempt", v)
	}

	// A forged MMC at the address agents dial: the agent's pinned key makes
	// the handshake fail; the forger never hears a usable initiation.
	forged := newCluster(t)
	fb := c.bundleVia(t, forged.sudp) // the real MMC's key, the forger's address
	victim := startProc(t, "agent to forged MMC", "agent", "--data-dir", filepath.Join(t.TempDir(), "victim"), "--bundle", fb, "--name", "victim", "--disk-id", "dv")
	time.Sleep(4 * time.Second)
	if n := len(forged.agents()); n != 0 {
		t.Fatalf("forged MMC enrolled %d agents", n)
	}
	if strings.Contains(victim.log(), "online") || strings.Contains(victim.log(), "pending") {
		t.Fatalf("agent talked to a forged MMC:\n%s", victim.log())
	}
}
