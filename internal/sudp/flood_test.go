package sudp

import (
	"crypto/rand"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// A flood of valid initiations from thousands of fresh keys — what anyone
// holding the cluster's enrolment psk can send to an MMC that accepts any
// key for enrolment — leaves the server with a bounded number of
// unconfirmed connections (and their goroutines) and a bounded replay
// table, and an honest client still connects. The many sources the flood
// would come from are stood in for by a rate limit that does not bite.
func TestAttackFreshKeyFlood(t *testing.T) {
	const maxUnconfirmed, flood = 64, 3000
	srvKey, cliKey := genKey(t), genKey(t)
	enrolPSK := [32]byte{7, 7}
	srv, err := Listen(Config{
		Listen:         "127.0.0.1:0",
		Static:         srvKey,
		ClusterID:      "test",
		LoadThreshold:  1 << 20,
		RateLimit:      ratelimit.Config{Rate: 1e6, Burst: 1 << 20},
		MaxUnconfirmed: maxUnconfirmed,
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			return handshake.Peer{ID: "enrol", PSK: enrolPSK, Allowed: true, Unregistered: peer != pub(cliKey)}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	attacker, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()

	goroutines := runtime.NumGoroutine()
	dst := net.UDPAddrFromAddrPort(srv.LocalAddr())
	sent := 0
	for sent < flood {
		k, err := handshake.GenerateKeypair(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		init, err := handshake.NewInitiator(handshake.InitiatorConfig{
			Static: k, RemoteStatic: pub(srvKey), PSK: enrolPSK, ClusterID: "test",
		})
		if err != nil {
			t.Fatal(err)
		}
		pkt, err := init.Initiation(time.Now(), uint64(sent+1))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := attacker.WriteToUDP(pkt, dst); err != nil {
			t.Fatal(err)
		}
		sent++
		if sent%100 == 0 {
			// Let the server keep up, so the flood is processed rather
			// than dropped by the socket.
			waitFor(t, "flood processed", func() bool { return srv.Stats().Handshake.Initiations >= uint64(sent)*9/10 })
		}
	}
	waitFor(t, "flood processed", func() bool { return srv.Stats().Handshake.Sessions >= flood*9/10 })
	// Evicted connections' goroutines exit asynchronously.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine()-goroutines > maxUnconfirmed+16 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := srv.Stats()
	reg, unreg := 0, 0
	srv.mu.Lock()
	reg, unreg = srv.ep.ReplayEntries()
	srv.mu.Unlock()
	grown := runtime.NumGoroutine() - goroutines
	t.Logf("%d fresh-key sessions: %d connections, %d unconfirmed, %d evicted, %d replay entries (%d registered), %d more goroutines",
		st.Handshake.Sessions, st.Conns, st.Unconfirmed, st.UnconfirmedEvicted, unreg, reg, grown)
	if st.Conns > maxUnconfirmed {
		t.Fatalf("%d connections held for the flood, bound %d", st.Conns, maxUnconfirmed)
	}
	if grown > maxUnconfirmed+16 {
		t.Fatalf("%d more goroutines after the flood, bound %d", grown, maxUnconfirmed)
	}
	if st.UnconfirmedEvicted < flood*8/10 {
		t.Fatalf("evicted %d unconfirmed connections, want most of %d", st.UnconfirmedEvicted, flood)
	}
	if reg != 0 || unreg > handshake.DefaultMaxUnregistered {
		t.Fatalf("replay table: %d registered, %d unregistered entries", reg, unreg)
	}

	// The honest client still connects, during the aftermath.
	cli := newClientEndpoint(t, cliKey)
	ctx := ctxT(t)
	c, err := cli.Dial(ctx, srv.LocalAddr().String(), pub(srvKey), enrolPSK)
	if err != nil {
		t.Fatalf("honest client after the flood: %v", err)
	}
	sc, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendMessage(ctx, []byte("hello"), PriorityControl); err != nil {
		t.Fatal(err)
	}
	if m, err := sc.ReceiveMessage(ctx, 100); err != nil || string(m) != "hello" {
		t.Fatalf("%q %v", m, err)
	}
	srv.mu.Lock()
	reg, _ = srv.ep.ReplayEntries()
	srv.mu.Unlock()
	if reg != 1 {
		t.Fatalf("%d registered replay entries, want the honest client's", reg)
	}
}
