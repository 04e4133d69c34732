package core

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Hostile-peer review tests (issue #20): each fails on the code before its
// fix.

// TestExpiredEpochRefusedOnReceive: an on-path attacker who holds a leaked
// client→server traffic key drops every packet of the real client (the
// re-handshake with them) and follows the hash chain itself. The server
// stops sending once the epoch is RehandshakeInterval + KeyRejectAfter old;
// it must also stop accepting: packets under a key descending from an
// expired Diffie–Hellman are forgeries or stale, and accepting them kept
// the connection alive (lastRecv) and fed the attacker's frames to the
// application for as long as the attacker liked.
func TestExpiredEpochRefusedOnReceive(t *testing.T) {
	cfg := Config{KeyUpdateInterval: 200 * time.Millisecond, RehandshakeInterval: time.Second, IdleTimeout: time.Minute}
	s := handshakeSim(t, 43, link{delay: 10 * time.Millisecond}, cfg)
	c, srv := s.conn[0], s.conn[1]
	forged, err := newKeySet(c.sendKey.secret, c.sendKey.gen)
	if err != nil {
		t.Fatal(err)
	}
	pn := c.nextPN + 1000
	from := srv.path.addr
	s.drop = func(int) bool { return true } // the attacker drops the real client
	limit := cfg.RehandshakeInterval + srv.cfg.KeyRejectAfter
	start := s.now
	var before, after int
	for s.now.Sub(start) < 3*limit {
		// Step along the hash chain before the server's hard limit on
		// one generation, as an honest sender would.
		if forged.gen == srv.recvCur.gen && s.now.Sub(srv.recvKeyStart) >= cfg.KeyUpdateInterval {
			n, err := forged.next()
			if err != nil {
				t.Fatal(err)
			}
			forged = n
		}
		b := wire.AppendHeader(make([]byte, 0, 64), wire.Header{KeyPhase: forged.phase(), DstCID: c.remoteCID, PN: pn})
		b = append(b, wire.FramePing)
		b = forged.seal(b, wire.DataHeaderSize, pn)
		pn++
		got := srv.Stats().PacketsReceived
		srv.HandleDatagram(s.now, from, b)
		if srv.Stats().PacketsReceived > got {
			if s.now.Sub(srv.rk.last) >= limit {
				after++
			} else {
				before++
			}
		}
		advance(s, 50*time.Millisecond)
		if srv.Err() != nil {
			break
		}
	}
	t.Logf("forged packets accepted: %d before the epoch limit, %d after; server: %v", before, after, srv.Err())
	if before == 0 {
		t.Fatal("no forged packet accepted before the limit: the test does not model the leaked key")
	}
	if after != 0 {
		t.Fatalf("%d forged packets under keys of an expired epoch accepted", after)
	}
}

// TestForgedLowOrderRekeyResponse: a re-handshake response whose ephemeral
// is a low-order point fails inside flynn/noise's Diffie–Hellman, which —
// unlike a failed decryption — does not roll the handshake state back. One
// such forgery (anyone who sees the connection id can send it while an
// initiation is outstanding) left the initiation poisoned: the genuine
// response, and every retransmission of it, failed from then on, and the
// connection never rekeyed again.
func TestForgedLowOrderRekeyResponse(t *testing.T) {
	cfg := Config{RehandshakeInterval: time.Hour, IdleTimeout: time.Minute}
	s := handshakeSim(t, 44, link{delay: 20 * time.Millisecond}, cfg)
	c := s.conn[0]
	advance(s, 100*time.Millisecond)
	forceRekey(c)
	forged := false
	s.onSend = func(side int, b []byte) {
		if forged || side != 0 || b[0] != wire.TypeRekey || b[1] != wire.RekeyInitiation {
			return
		}
		forged = true
		// Ephemeral 0 (low order) and any tag, racing the real answer.
		resp := wire.AppendRekey(nil, wire.RekeyHeader{Kind: wire.RekeyResponse, DstCID: c.localCID, Epoch: c.rk.epoch + 1}, make([]byte, wire.RekeyNoiseSize))
		c.HandleDatagram(s.now, c.path.addr, resp)
	}
	advance(s, 10*time.Second)
	st := c.Stats()
	t.Logf("forged %v; re-handshakes %d, rejected %d, started %d", forged, st.Rehandshakes, st.RehandshakeRejected, st.RehandshakesStarted)
	if !forged || st.RehandshakeRejected == 0 {
		t.Fatal("no forged response was processed: the test does not exercise the attack")
	}
	if st.Rehandshakes == 0 {
		t.Fatal("one forged low-order response prevented the re-handshake")
	}
}

// TestForgedRekeyFloodDoesNotStarveRehandshake: re-handshake messages are
// rate-limited per connection before their Diffie–Hellman work. Forged
// initiations (a valid point, a wrong tag) sent from another address by
// anyone who saw the connection id took every token, so the genuine
// initiation from the peer's validated address was dropped unread, again
// and again: the connection could never rekey, and stopped at the epoch
// limit.
func TestForgedRekeyFloodDoesNotStarveRehandshake(t *testing.T) {
	cfg := Config{RehandshakeInterval: time.Hour, IdleTimeout: time.Minute}
	s := handshakeSim(t, 45, link{delay: 20 * time.Millisecond}, cfg)
	c, srv := s.conn[0], s.conn[1]
	advance(s, 100*time.Millisecond)
	attacker := netip.MustParseAddrPort("203.0.113.9:4444")
	point, err := curve25519.X25519(bytes.Repeat([]byte{7}, 32), curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	forge := func() []byte {
		msg := append(bytes.Clone(point), make([]byte, wire.TagSize)...)
		return wire.AppendRekey(nil, wire.RekeyHeader{Kind: wire.RekeyInitiation, DstCID: srv.localCID, Epoch: srv.rk.epoch + 1}, msg)
	}
	start := s.now
	for i := 0; s.now.Sub(start) < 15*time.Second && c.Stats().Rehandshakes == 0; i++ {
		if i == 20 {
			forceRekey(c) // once the flood is under way
		}
		for range 5 {
			srv.HandleDatagram(s.now, attacker, forge())
		}
		advance(s, 50*time.Millisecond)
	}
	st, sst := c.Stats(), srv.Stats()
	t.Logf("after %v of 100 forged initiations/s: client re-handshakes %d (started %d); server rejected %d, limited %d",
		s.now.Sub(start), st.Rehandshakes, st.RehandshakesStarted, sst.RehandshakeRejected, sst.RehandshakeLimited)
	if sst.RehandshakeRejected == 0 {
		t.Fatal("no forged initiation was processed: the test does not exercise the attack")
	}
	if st.Rehandshakes == 0 {
		t.Fatal("a flood of forged initiations from elsewhere starved the peer's re-handshake")
	}
}

// TestCookieRepliesDoNotDriveInitiations: a cookie reply is sealed under a
// key derived from the responder's public key, with the initiation's mac1
// (in clear) as associated data: anyone who sees the initiation can make
// one. Each made the connecting side build and send a new initiation at
// once — a fresh ephemeral and its Diffie–Hellman work per forged packet.
// At most one immediate retry per backoff step is allowed.
func TestCookieRepliesDoNotDriveInitiations(t *testing.T) {
	s := newSim(t, 46, link{delay: 10 * time.Millisecond}, Config{})
	c := s.conn[0]
	srvKey := s.ep[1].cfg.Static
	sent := 0
	for range 200 {
		n, _, ok := c.PollTransmit(s.now, s.buf)
		if !ok {
			s.now = s.now.Add(time.Millisecond)
			continue
		}
		if s.buf[0] != wire.TypeInitiation {
			continue
		}
		sent++
		// A fresh cookie secret each time: the forger's cookies are
		// never valid, so each initiation gets a reply again.
		forger, err := NewEndpoint(EndpointConfig{Static: srvKey, ClusterID: "sim", RequireCookie: true,
			Lookup: func([32]byte) (handshake.Peer, error) { return handshake.Peer{}, errors.New("unused") }})
		if err != nil {
			t.Fatal(err)
		}
		reply, _, _, err := forger.HandleInitiation(s.now, s.addr[0], bytes.Clone(s.buf[:n]))
		if reply == nil {
			t.Fatalf("no cookie reply to forge (initiation %d): %v", sent, err)
		}
		c.HandleDatagram(s.now, s.addr[1], reply)
		s.now = s.now.Add(time.Millisecond)
	}
	t.Logf("200 ms of forged cookie replies: %d initiations sent", sent)
	if sent > 3 {
		t.Fatalf("%d initiations in 200 ms driven by forged cookie replies", sent)
	}
}
