package core

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// patternByte is byte i of the test streams: a transfer that loses,
// duplicates or misplaces a byte does not read back the pattern.
func patternByte(i int) byte { return byte(i*7 + i>>11) }

// streamTransfer moves n bytes client→server on one stream, calling during
// (if set) before every step with the bytes read so far; it stops when the
// server has read everything, either side failed, or maxTime of virtual
// time passed. It returns the bytes read.
func streamTransfer(t *testing.T, s *sim, n int, maxTime time.Duration, during func(read int)) int {
	t.Helper()
	c, srv := s.conn[0], s.conn[1]
	id, err := c.OpenStream(true, PriorityBulk)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n)
	for i := range data {
		data[i] = patternByte(i)
	}
	buf := make([]byte, 256<<10)
	off, read := 0, 0
	var sid uint64
	accepted := false
	end := s.now.Add(maxTime)
	for read < n && s.now.Before(end) && c.Err() == nil && srv.Err() == nil {
		if during != nil {
			during(read)
		}
		if off < n {
			w, err := c.StreamWrite(id, data[off:])
			if err != nil {
				t.Fatal(err)
			}
			off += w
			if off == n {
				if err := c.StreamCloseWrite(id); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !accepted {
			sid, accepted = srv.AcceptStream(true)
		}
		if accepted {
			r, _, err := srv.StreamRead(sid, buf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:r], data[read:read+r]) {
				t.Fatalf("stream bytes [%d, %d) differ from what was written", read, read+r)
			}
			read += r
		}
		if !s.step() {
			break
		}
	}
	return read
}

// checkNoExpiredSends fails the test if a side sends a data packet under a
// send key older than KeyRejectAfter (a closing side's CLOSE excepted).
func checkNoExpiredSends(t *testing.T, s *sim) {
	s.onSend = func(side int, b []byte) {
		c := s.conn[side]
		if len(b) == 0 || !wire.IsData(b[0]) || c.state != stateEstablished {
			return
		}
		if age := s.now.Sub(c.sendKeyStart); age >= c.cfg.KeyRejectAfter {
			t.Errorf("side %d sent a data packet under a key %v old (limit %v)", side, age, c.cfg.KeyRejectAfter)
		}
	}
}

// TestOutageRekeyOnReturn: a total outage far longer than KeyRejectAfter in
// the middle of a transfer. The connection stops sending under its expired
// keys instead of closing, waits for as long as its IdleTimeout allows,
// rekeys by a re-handshake when the path returns, and the stream completes
// byte-exact. (Before the re-handshake existed, both ends closed with
// CodeKeyExpired three minutes into the outage.) The 10-minute case is the
// agent's post-copy link (internal/agent postcopyIdleTimeout, raised with
// SetIdleTimeout as the agent does).
func TestOutageRekeyOnReturn(t *testing.T) {
	for _, tc := range []struct {
		outage, idle time.Duration
	}{
		{10 * time.Minute, 11 * time.Minute},
		{12 * time.Minute, 15 * time.Minute},
	} {
		t.Run(fmt.Sprintf("outage %v idle %v", tc.outage, tc.idle), func(t *testing.T) {
			s := handshakeSim(t, 31, link{delay: 15 * time.Millisecond, rate: 50e6, queue: 400_000}, Config{})
			c, srv := s.conn[0], s.conn[1]
			c.SetIdleTimeout(tc.idle)
			srv.SetIdleTimeout(tc.idle)
			checkNoExpiredSends(t, s)
			const n = 24 << 20
			var outageStart, outageEnd time.Time
			read := streamTransfer(t, s, n, 2*tc.outage, func(read int) {
				if outageStart.IsZero() && read >= n/4 {
					outageStart = s.now
					outageEnd = s.now.Add(tc.outage)
					s.drop = func(int) bool { return s.now.Before(outageEnd) }
				}
			})
			if outageStart.IsZero() {
				t.Fatal("the transfer finished before the outage")
			}
			if err := c.Err(); err != nil {
				t.Fatalf("client: %v", err)
			}
			if err := srv.Err(); err != nil {
				t.Fatalf("server: %v", err)
			}
			if read != n {
				t.Fatalf("read %d of %d bytes", read, n)
			}
			cs, ss := c.Stats(), srv.Stats()
			t.Logf("done %v after the path returned; client: rehandshakes %d (started %d), expired-key waits %d, sent %d pkts; server: rehandshakes %d, collisions %d/%d",
				s.now.Sub(outageEnd), cs.Rehandshakes, cs.RehandshakesStarted, cs.KeyExpiredWaits, cs.PacketsSent, ss.Rehandshakes, cs.RehandshakeCollisions, ss.RehandshakeCollisions)
			if cs.KeyExpiredWaits == 0 {
				t.Error("the client's key never reached its hard limit: the outage did not test it")
			}
			if cs.Rehandshakes == 0 || ss.Rehandshakes == 0 {
				t.Errorf("no re-handshake completed (client %d, server %d)", cs.Rehandshakes, ss.Rehandshakes)
			}
			if took := s.now.Sub(outageEnd); took > 30*time.Second {
				t.Errorf("the transfer took %v to finish after the path returned", took)
			}
		})
	}
}

// TestOutageIdleTimeoutStillBounds: the wait for the path is bounded by the
// IdleTimeout the operator configured, not extended by the re-handshake's
// retransmissions.
func TestOutageIdleTimeoutStillBounds(t *testing.T) {
	s := handshakeSim(t, 32, link{delay: 15 * time.Millisecond}, Config{IdleTimeout: 5 * time.Minute})
	c, srv := s.conn[0], s.conn[1]
	start := s.now
	s.drop = func(int) bool { return true }
	advance(s, 6*time.Minute)
	if !errors.Is(c.Err(), ErrIdleTimeout) || !errors.Is(srv.Err(), ErrIdleTimeout) {
		t.Fatalf("after 6 min of silence with a 5 min idle timeout: client %v, server %v", c.Err(), srv.Err())
	}
	st := c.Stats()
	t.Logf("%v of silence: the client started %d re-handshakes and sent %d packets", s.now.Sub(start), st.RehandshakesStarted, st.PacketsSent)
	if st.RehandshakesStarted == 0 || st.PacketsSent > 200 {
		t.Fatalf("client started %d re-handshakes and sent %d packets in %v of outage", st.RehandshakesStarted, st.PacketsSent, s.now.Sub(start))
	}
}

// TestExpiredSenderAfterOutageClosed: a peer that keeps sending under its
// expired generation once the path is back (here a client whose own limit
// was raised past the outage, so it does not stop) is refused and closed
// with CodeKeyExpired, outage or not.
func TestExpiredSenderAfterOutageClosed(t *testing.T) {
	s := handshakeSim(t, 33, link{delay: 10 * time.Millisecond}, Config{IdleTimeout: 10 * time.Minute})
	c, srv := s.conn[0], s.conn[1]
	// The client neither updates nor re-handshakes nor respects the limit.
	c.cfg.KeyUpdateInterval, c.cfg.KeyRejectAfter, c.cfg.RehandshakeInterval = time.Hour, 2*time.Hour, -1
	c.rk.static = noise.DHKey{} // (it ignores the server's re-handshake)
	outageEnd := s.now.Add(5 * time.Minute)
	s.drop = func(int) bool { return s.now.Before(outageEnd) }
	advance(s, 5*time.Minute)
	for s.now.Sub(outageEnd) < 3*time.Second && srv.Err() == nil {
		if id, err := c.OpenStream(true, PriorityNormal); err == nil {
			c.StreamWrite(id, []byte("stale"))
			c.StreamCloseWrite(id)
		}
		advance(s, 50*time.Millisecond)
	}
	var ce *CloseError
	if err := srv.Err(); !errors.As(err, &ce) || ce.Code != CodeKeyExpired || ce.Remote || ce.Reason != "peer did not update its key" {
		t.Fatalf("server: %v, want a local close with CodeKeyExpired for the peer's key", err)
	}
	if st := srv.Stats(); st.KeyExpiredWaits == 0 || st.RehandshakesStarted == 0 {
		t.Fatalf("the server's own key did not wait for a re-handshake during the outage: %+v", st)
	}
}

// TestKeyExpiryWithoutRehandshakeCloses: a connection that cannot
// re-handshake (no static key) still closes with CodeKeyExpired when its
// send key cannot be updated, as it has no other way to a fresh key.
func TestKeyExpiryWithoutRehandshakeCloses(t *testing.T) {
	s := handshakeSim(t, 39, link{delay: 10 * time.Millisecond}, Config{IdleTimeout: 10 * time.Minute})
	c := s.conn[0]
	c.rk.static = noise.DHKey{}
	s.drop = func(int) bool { return true }
	// The generation acknowledged before the outage is updated at 2 min;
	// the next one can never be, and expires 3 min later.
	advance(s, 6*time.Minute)
	var ce *CloseError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != CodeKeyExpired || ce.Remote {
		t.Fatalf("client: %v, want a local close with CodeKeyExpired", err)
	}
}

// keyCopy is what a key-leak attacker holds: one generation's secret.
type keyCopy struct {
	secret [32]byte
	gen    uint64
}

// pnTracker recovers the full packet numbers of one direction's packets,
// seen in the order they were sent, as an eavesdropper can.
type pnTracker struct{ last uint64 }

func (p *pnTracker) header(t *testing.T, pkt []byte) wire.Header {
	t.Helper()
	h, err := wire.ParseHeader(pkt)
	if err != nil {
		t.Fatal(err)
	}
	if h.Short {
		h.PN = wire.DecodePN(h.PN, h.PNLen, p.last)
	}
	p.last = max(p.last, h.PN)
	return h
}

// opens reports whether the leaked secret, or any of the next `ahead`
// generations the hash chain derives from it, opens pkt (header h).
func (k keyCopy) opens(t *testing.T, h wire.Header, pkt []byte, ahead int) bool {
	ks, err := newKeySet(k.secret, k.gen)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= ahead; i++ {
		if _, err := ks.open(bytes.Clone(pkt), h.Len, h.PN); err == nil {
			return true
		}
		if ks, err = ks.next(); err != nil {
			t.Fatal(err)
		}
	}
	return false
}

// TestPeriodicRehandshake: a long session re-handshakes every
// RehandshakeInterval; a traffic secret leaked before a re-handshake opens
// the packets that follow it along the hash chain (the test can fail), and
// none sent after the re-handshake (forward secrecy from the leak point).
func TestPeriodicRehandshake(t *testing.T) {
	cfg := Config{KeyUpdateInterval: 200 * time.Millisecond, RehandshakeInterval: time.Second, IdleTimeout: time.Minute}
	s := handshakeSim(t, 34, link{delay: 10 * time.Millisecond, rate: 20e6, queue: 200_000}, cfg)
	c, srv := s.conn[0], s.conn[1]
	checkNoExpiredSends(t, s)

	leak := keyCopy{secret: c.sendKey.secret, gen: c.sendKey.gen}
	type sent struct {
		h     wire.Header
		pkt   []byte
		epoch uint64 // the client's re-handshake epoch when it was sent
	}
	var pkts []sent
	var pns pnTracker
	s.onSend = func(side int, b []byte) {
		if side == 0 && wire.IsData(b[0]) {
			pkts = append(pkts, sent{pns.header(t, b), bytes.Clone(b), c.sendKey.gen >> 32})
		}
	}
	const n = 12 << 20
	start := s.now
	if read := streamTransfer(t, s, n, 20*time.Second, nil); read != n {
		t.Fatalf("read %d of %d (client %v, server %v)", read, n, c.Err(), srv.Err())
	}
	elapsed := s.now.Sub(start)
	cs, ss := c.Stats(), srv.Stats()
	t.Logf("%d re-handshakes (client started %d, server %d), %d key updates, %d client packets", cs.Rehandshakes, cs.RehandshakesStarted, ss.RehandshakesStarted, cs.KeyUpdates, len(pkts))
	if cs.Rehandshakes < 3 || ss.Rehandshakes != cs.Rehandshakes {
		t.Fatalf("re-handshakes: client %d, server %d over ~%v with a 1 s interval", cs.Rehandshakes, ss.Rehandshakes, elapsed)
	}
	// Late copies (a retransmitted initiation answered twice) count as
	// replays; nothing an honest peer sends fails authentication.
	if cs.RehandshakeRejected+ss.RehandshakeRejected != 0 {
		t.Fatalf("honest run: %d/%d re-handshake messages rejected", cs.RehandshakeRejected, ss.RehandshakeRejected)
	}
	var before, beforeOpened, after, afterOpened int
	for _, p := range pkts {
		opened := leak.opens(t, p.h, p.pkt, 16)
		if p.epoch == 0 {
			before++
			if opened {
				beforeOpened++
			}
		} else {
			after++
			if opened {
				afterOpened++
			}
		}
	}
	t.Logf("leaked generation-0 secret opens %d of %d packets before the first re-handshake, %d of %d after", beforeOpened, before, afterOpened, after)
	if c.Stats().KeyUpdates == 0 || beforeOpened < before*9/10 {
		t.Fatalf("the leaked secret opened only %d of %d pre-re-handshake packets: the test does not model the hash chain's exposure", beforeOpened, before)
	}
	if after == 0 || afterOpened != 0 {
		t.Fatalf("the leaked secret opened %d of %d packets sent after the re-handshake", afterOpened, after)
	}
	// Nothing of the pre-re-handshake keys is left on either side.
	for _, k := range []*keySet{c.sendKey, c.recvCur, c.recvPrev, c.recvNext, srv.sendKey, srv.recvCur, srv.recvPrev, srv.recvNext} {
		if k != nil && k.gen < rekeyEpochGen(1) {
			t.Fatalf("a generation-%d key survived the re-handshakes", k.gen)
		}
	}
}

// forceRekey makes the side's periodic re-handshake due now.
func forceRekey(c *Conn) { c.rk.last = c.rk.last.Add(-2 * time.Hour) }

// settle runs the simulation and a small transfer so both directions use
// the newest keys, and checks the stream.
func settle(t *testing.T, s *sim) {
	t.Helper()
	advance(s, time.Second)
	if read := streamTransfer(t, s, 256<<10, 10*time.Second, nil); read != 256<<10 {
		t.Fatalf("read %d of %d (client %v, server %v)", read, 256<<10, s.conn[0].Err(), s.conn[1].Err())
	}
	advance(s, time.Second)
}

func TestRehandshakeSimultaneous(t *testing.T) {
	cfg := Config{RehandshakeInterval: time.Hour, IdleTimeout: time.Minute}
	s := handshakeSim(t, 35, link{delay: 20 * time.Millisecond}, cfg)
	c, srv := s.conn[0], s.conn[1]
	forceRekey(c)
	forceRekey(srv)
	var inits [2]int
	s.onSend = func(side int, b []byte) {
		if b[0] == wire.TypeRekey && b[1] == wire.RekeyInitiation {
			inits[side]++
		}
	}
	s.transmit() // both initiate at the same instant
	if inits[0] != 1 || inits[1] != 1 {
		t.Fatalf("initiations sent: client %d, server %d; want one each", inits[0], inits[1])
	}
	settle(t, s)
	cs, ss := c.Stats(), srv.Stats()
	if cs.Rehandshakes != 1 || ss.Rehandshakes != 1 {
		t.Fatalf("re-handshakes: client %d, server %d; want exactly one (the client's)", cs.Rehandshakes, ss.Rehandshakes)
	}
	if cs.RehandshakeCollisions != 1 || ss.RehandshakeCollisions != 1 {
		t.Fatalf("collisions seen: client %d, server %d", cs.RehandshakeCollisions, ss.RehandshakeCollisions)
	}
	for side, cc := range s.conn {
		if cc.rk.epoch != 1 || cc.sendKey.gen>>32 != 1 || cc.recvCur.gen>>32 != 1 || cc.rk.hs != nil {
			t.Fatalf("side %d: epoch %d, send gen %#x, recv gen %#x, initiation pending %v", side, cc.rk.epoch, cc.sendKey.gen, cc.recvCur.gen, cc.rk.hs != nil)
		}
	}
}

func TestRehandshakeLostMessages(t *testing.T) {
	for _, tc := range []struct {
		name              string
		dropInit, dropRsp int
	}{
		{"initiations lost", 3, 0},
		{"responses lost", 0, 3},
		{"both lost", 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{RehandshakeInterval: time.Hour, IdleTimeout: time.Minute}
			s := handshakeSim(t, 36, link{delay: 20 * time.Millisecond}, cfg)
			c, srv := s.conn[0], s.conn[1]
			dropped := [3]int{}
			s.dropPkt = func(from int, b []byte) bool {
				if b[0] != wire.TypeRekey {
					return false
				}
				limit := tc.dropInit
				if b[1] == wire.RekeyResponse {
					limit = tc.dropRsp
				}
				if dropped[b[1]] < limit {
					dropped[b[1]]++
					return true
				}
				return false
			}
			forceRekey(c)
			advance(s, 15*time.Second) // retransmissions back off: 0.2, 0.4, 0.8 … s
			settle(t, s)
			cs, ss := c.Stats(), srv.Stats()
			if cs.Rehandshakes != 1 || ss.Rehandshakes != 1 || cs.RehandshakesStarted != 1 {
				t.Fatalf("client: %d done of %d started; server: %d done", cs.Rehandshakes, cs.RehandshakesStarted, ss.Rehandshakes)
			}
			if dropped[wire.RekeyInitiation] != tc.dropInit || dropped[wire.RekeyResponse] != tc.dropRsp {
				t.Fatalf("dropped %v", dropped)
			}
			if c.sendKey.gen>>32 != 1 || srv.sendKey.gen>>32 != 1 {
				t.Fatalf("send generations %#x / %#x after the re-handshake", c.sendKey.gen, srv.sendKey.gen)
			}
		})
	}
}

// TestRehandshakeReplayAndForgery: a replayed re-handshake message of an
// epoch already completed changes no key (counted as a replay); messages
// made with a static key other than the peer's are rejected (counted), and
// do not disturb a re-handshake in progress.
func TestRehandshakeReplayAndForgery(t *testing.T) {
	cfg := Config{RehandshakeInterval: time.Hour, IdleTimeout: time.Minute}
	s := handshakeSim(t, 37, link{delay: 20 * time.Millisecond}, cfg)
	c, srv := s.conn[0], s.conn[1]
	var captured [3][]byte
	s.onSend = func(side int, b []byte) {
		if b[0] == wire.TypeRekey && captured[b[1]] == nil {
			captured[b[1]] = bytes.Clone(b)
		}
	}
	forceRekey(c)
	settle(t, s)
	if captured[wire.RekeyInitiation] == nil || captured[wire.RekeyResponse] == nil || c.Stats().Rehandshakes != 1 {
		t.Fatal("no re-handshake to replay")
	}

	t.Run("replay", func(t *testing.T) {
		srvSend, srvRecv, cSend, cRecv := srv.sendKey, srv.recvCur, c.sendKey, c.recvCur
		srv.HandleDatagram(s.now, s.addr[0], bytes.Clone(captured[wire.RekeyInitiation]))
		c.HandleDatagram(s.now, s.addr[1], bytes.Clone(captured[wire.RekeyResponse]))
		if srv.Stats().RehandshakeReplays != 1 || c.Stats().RehandshakeReplays != 1 {
			t.Fatalf("replays counted: server %d, client %d", srv.Stats().RehandshakeReplays, c.Stats().RehandshakeReplays)
		}
		settle(t, s)
		if srv.sendKey != srvSend || srv.recvCur != srvRecv || c.sendKey != cSend || c.recvCur != cRecv ||
			srv.rk.epoch != 1 || c.rk.epoch != 1 || srv.rk.recvPending != nil || srv.rk.respPkt != nil {
			t.Fatal("a replayed re-handshake message changed keys")
		}
		if c.Stats().Rehandshakes != 1 || srv.Stats().Rehandshakes != 1 {
			t.Fatalf("re-handshakes after replay: client %d, server %d", c.Stats().Rehandshakes, srv.Stats().Rehandshakes)
		}
	})

	mallory, err := handshake.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	// forged builds a re-handshake message of the next epoch as `as`
	// would, but with Mallory's static key in place of `as`'s. Her
	// initiation is a correct KK message from her key; a response she
	// cannot make correctly at all (reading the initiation needs the
	// responder's static key), so hers is her ephemeral and a guessed tag.
	forged := func(as *Conn, kind byte) []byte {
		epoch := as.rk.epoch + 1
		var msg []byte
		if kind == wire.RekeyInitiation {
			hs, err := noise.NewHandshakeState(noise.Config{CipherSuite: rekeySuite, Pattern: noise.HandshakeKK, Initiator: true,
				Prologue: as.rekeyPrologue(epoch), StaticKeypair: mallory, PeerStatic: as.session.PeerStatic[:]})
			if err != nil {
				t.Fatal(err)
			}
			if msg, _, _, err = hs.WriteMessage(nil, nil); err != nil {
				t.Fatal(err)
			}
		} else {
			msg = append(append(msg, mallory.Public...), make([]byte, wire.TagSize)...)
		}
		dst := as.remoteCID // an initiation, to the peer of `as`
		if kind == wire.RekeyResponse {
			dst = as.localCID // a response, to `as`
		}
		return wire.AppendRekey(nil, wire.RekeyHeader{Kind: kind, DstCID: dst, Epoch: epoch}, msg)
	}

	t.Run("forged initiation", func(t *testing.T) {
		before := srv.Stats().RehandshakeRejected
		srv.HandleDatagram(s.now, s.addr[0], forged(c, wire.RekeyInitiation))
		if srv.Stats().RehandshakeRejected != before+1 || srv.rk.epoch != 1 || srv.rk.respPkt != nil || srv.rk.recvPending != nil {
			t.Fatalf("forged initiation: rejected %d→%d, epoch %d", before, srv.Stats().RehandshakeRejected, srv.rk.epoch)
		}
	})

	t.Run("forged response", func(t *testing.T) {
		forceRekey(c)
		s.transmit() // the client's initiation of epoch 2 is on its way
		if c.rk.hs == nil {
			t.Fatal("no initiation in progress")
		}
		before := c.Stats().RehandshakeRejected
		c.HandleDatagram(s.now, s.addr[1], forged(c, wire.RekeyResponse))
		if c.Stats().RehandshakeRejected != before+1 || c.rk.hs == nil || c.rk.sendPending != nil {
			t.Fatal("forged response was not rejected, or ended the re-handshake")
		}
		settle(t, s) // the real response still completes it
		if c.Stats().Rehandshakes != 2 || srv.Stats().Rehandshakes != 2 || c.sendKey.gen>>32 != 2 {
			t.Fatalf("after a forged response: client %d, server %d re-handshakes, client send gen %#x", c.Stats().Rehandshakes, srv.Stats().Rehandshakes, c.sendKey.gen)
		}
	})

	t.Run("wrong connection", func(t *testing.T) {
		// A genuine message bound to another epoch's prologue: the
		// captured epoch-1 initiation relabelled as the next epoch.
		b := bytes.Clone(captured[wire.RekeyInitiation])
		b[17] = byte(srv.rk.epoch + 1)
		before := srv.Stats().RehandshakeRejected
		srv.HandleDatagram(s.now, s.addr[0], b)
		if srv.Stats().RehandshakeRejected != before+1 || srv.rk.epoch != 2 {
			t.Fatalf("relabelled initiation: rejected %d→%d, epoch %d", before, srv.Stats().RehandshakeRejected, srv.rk.epoch)
		}
	})
	if err := c.Err(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestRehandshakeRateLimit: a flood of authentic-looking initiations costs
// at most rekeyBurst Noise operations at once, the rest counted.
func TestRehandshakeRateLimit(t *testing.T) {
	s := handshakeSim(t, 38, link{delay: 10 * time.Millisecond}, Config{RehandshakeInterval: time.Hour})
	srv := s.conn[1]
	junk := wire.AppendRekey(nil, wire.RekeyHeader{Kind: wire.RekeyInitiation, DstCID: srv.localCID, Epoch: 1}, make([]byte, wire.RekeyNoiseSize))
	for i := 0; i < 100; i++ {
		srv.HandleDatagram(s.now, s.addr[0], bytes.Clone(junk))
	}
	st := srv.Stats()
	if st.RehandshakeRejected != rekeyBurst || st.RehandshakeLimited != 100-rekeyBurst {
		t.Fatalf("rejected %d, limited %d of 100", st.RehandshakeRejected, st.RehandshakeLimited)
	}
	if srv.Err() != nil || srv.rk.epoch != 0 {
		t.Fatal("junk changed the connection")
	}
}

// TestNoDataUnderExpiredKey: data the application writes while the send key
// is expired (mid-outage, with the congestion window open) waits for the
// re-handshake instead of leaving under the expired key, and arrives once
// the path is back.
func TestNoDataUnderExpiredKey(t *testing.T) {
	s := handshakeSim(t, 40, link{delay: 10 * time.Millisecond}, Config{IdleTimeout: 15 * time.Minute})
	c, srv := s.conn[0], s.conn[1]
	checkNoExpiredSends(t, s)
	outageEnd := s.now.Add(8 * time.Minute)
	s.drop = func(int) bool { return s.now.Before(outageEnd) }
	advance(s, 6*time.Minute) // past the hard limit of the generation after the 2-min update
	if !c.keyExpired {
		t.Fatal("the client's key has not expired")
	}
	id, err := c.OpenStream(true, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("written while the key was expired")
	if _, err := c.StreamWrite(id, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.StreamCloseWrite(id); err != nil {
		t.Fatal(err)
	}
	advance(s, 3*time.Minute) // the path returns at 8 min
	sid, ok := srv.AcceptStream(true)
	if !ok {
		t.Fatalf("message not delivered after the outage (client %v, server %v)", c.Err(), srv.Err())
	}
	buf := make([]byte, 100)
	n, fin, err := srv.StreamRead(sid, buf)
	if err != nil || !fin || !bytes.Equal(buf[:n], msg) {
		t.Fatalf("read %q fin=%v err=%v", buf[:n], fin, err)
	}
}

// TestStuckUpdateRehandshakes: when the peer's acknowledgements are lost (a
// one-way outage), the sender cannot update its key along the hash chain;
// as the generation nears its hard limit a re-handshake (whose messages
// still get through here) gives it a fresh key before the limit, so it
// never has to stop sending.
func TestStuckUpdateRehandshakes(t *testing.T) {
	cfg := Config{RehandshakeInterval: -1, IdleTimeout: 10 * time.Minute}
	s := handshakeSim(t, 41, link{delay: 10 * time.Millisecond}, cfg)
	c := s.conn[0]
	checkNoExpiredSends(t, s)
	// Everything the server sends but its re-handshake messages is lost.
	s.dropPkt = func(from int, b []byte) bool { return from == 1 && wire.IsData(b[0]) }
	start := s.now
	var firstRekey time.Duration
	// (The generation acknowledged before the loss began is updated at
	// 2 min; the next one is stuck.)
	for s.now.Sub(start) < 7*time.Minute {
		if id, err := c.OpenStream(false, PriorityNormal); err == nil {
			c.StreamWrite(id, []byte("tick"))
			c.StreamCloseWrite(id)
		}
		keyStart := c.sendKeyStart
		advance(s, time.Second)
		if firstRekey == 0 && c.Stats().Rehandshakes > 0 {
			firstRekey = s.now.Sub(keyStart)
		}
	}
	st := c.Stats()
	t.Logf("first re-handshake %v into the stuck generation; %d re-handshakes in 7 min, %d key updates", firstRekey, st.Rehandshakes, st.KeyUpdates)
	if c.Err() != nil || st.Rehandshakes == 0 || st.KeyExpiredWaits != 0 {
		t.Fatalf("err %v, re-handshakes %d, expired-key waits %d", c.Err(), st.Rehandshakes, st.KeyExpiredWaits)
	}
	if firstRekey < c.cfg.KeyUpdateInterval || firstRekey >= c.cfg.KeyRejectAfter {
		t.Fatalf("first re-handshake %v into the generation; want between the update (%v) and the hard limit (%v)", firstRekey, c.cfg.KeyUpdateInterval, c.cfg.KeyRejectAfter)
	}
}

// TestRehandshakeSuppressed: an on-path attacker who holds a leaked
// traffic key drops every re-handshake message (their type byte is
// visible) to keep the hash chain — which the key follows — going. The
// ends stop sending once the newest Diffie–Hellman is
// RehandshakeInterval + KeyRejectAfter old, instead of protecting traffic
// with keys the attacker can derive; when the messages get through again,
// they rekey and the stream completes.
func TestRehandshakeSuppressed(t *testing.T) {
	cfg := Config{KeyUpdateInterval: 200 * time.Millisecond, RehandshakeInterval: time.Second, IdleTimeout: time.Minute}
	s := handshakeSim(t, 42, link{delay: 10 * time.Millisecond, rate: 20e6, queue: 20_000}, cfg)
	c, srv := s.conn[0], s.conn[1]
	leak := keyCopy{secret: c.sendKey.secret, gen: c.sendKey.gen}
	epochStart := c.rk.last
	limit := cfg.RehandshakeInterval + c.cfg.KeyRejectAfter
	suppressUntil := s.now.Add(5 * time.Second)
	s.dropPkt = func(from int, b []byte) bool { return b[0] == wire.TypeRekey && s.now.Before(suppressUntil) }
	var late, leaked, lateLeaked int
	var pns pnTracker
	s.onSend = func(side int, b []byte) {
		if side != 0 || !wire.IsData(b[0]) {
			return
		}
		h := pns.header(t, b)
		if c.state != stateEstablished {
			return
		}
		opened := leak.opens(t, h, b, 12)
		if opened {
			leaked++
		}
		if s.now.Sub(epochStart) >= limit && c.rk.epoch == 0 {
			late++
			if opened {
				lateLeaked++
			}
		}
	}
	const n = 20 << 20
	if read := streamTransfer(t, s, n, 30*time.Second, nil); read != n {
		t.Fatalf("read %d of %d (client %v, server %v)", read, n, c.Err(), srv.Err())
	}
	st := c.Stats()
	t.Logf("leaked key opened %d client packets, %d of them after the epoch limit; expired-key waits %d; re-handshakes %d (started %d); done %v after the suppression ended",
		leaked, lateLeaked, st.KeyExpiredWaits, st.Rehandshakes, st.RehandshakesStarted, s.now.Sub(suppressUntil))
	if leaked == 0 {
		t.Fatal("the leaked key opened nothing: the test does not model the hash chain's exposure")
	}
	if late != 0 || st.KeyExpiredWaits == 0 {
		t.Fatalf("%d data packets sent past the epoch limit %v (expired-key waits %d)", late, limit, st.KeyExpiredWaits)
	}
	if st.Rehandshakes == 0 || s.now.Before(suppressUntil) {
		t.Fatalf("the transfer did not wait for the re-handshake (%d done)", st.Rehandshakes)
	}
}

// TestRehandshakeReplayNotReflected: a captured initiation replayed from
// many (spoofed) addresses while the responder still holds its answer
// earns at most the rate limit's burst of answers, not one per replay.
func TestRehandshakeReplayNotReflected(t *testing.T) {
	cfg := Config{RehandshakeInterval: time.Hour, IdleTimeout: time.Minute}
	s := handshakeSim(t, 41, link{delay: 20 * time.Millisecond}, cfg)
	c, srv := s.conn[0], s.conn[1]
	var init []byte
	s.onSend = func(side int, b []byte) {
		if side == 0 && b[0] == wire.TypeRekey && b[1] == wire.RekeyInitiation && init == nil {
			init = bytes.Clone(b)
		}
	}
	// The server's answers are lost, so it keeps its response.
	s.dropPkt = func(from int, b []byte) bool { return from == 1 && b[0] == wire.TypeRekey }
	forceRekey(c)
	advance(s, 100*time.Millisecond)
	if init == nil || srv.rk.respPkt == nil {
		t.Fatal("no answered initiation to replay")
	}
	answers := 0
	buf := make([]byte, 2048)
	for i := range 200 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 9999)
		srv.HandleDatagram(s.now, from, bytes.Clone(init))
		for {
			n, to, ok := srv.PollTransmit(s.now, buf)
			if !ok {
				break
			}
			if n > 0 && buf[0] == wire.TypeRekey && to == from {
				answers++
			}
		}
	}
	if answers > rekeyBurst {
		t.Fatalf("200 replays from 200 addresses earned %d answers, want at most %d", answers, rekeyBurst)
	}
	t.Logf("200 replays → %d answers", answers)
}
