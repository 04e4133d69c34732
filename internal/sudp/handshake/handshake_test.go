package handshake

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

func TestSpecSizesAndOffsets(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"InitiationSize", InitiationSize, 152},
		{"ResponseSize", ResponseSize, 112},
		{"CookieReplySize", CookieReplySize, 68},
		{"noise msg1", noiseInitiationLen, 108},
		{"noise msg2", noiseResponseLen, 60},
		{"init mac1", initMAC1Offset, 120},
		{"init mac2", initMAC2Offset, 136},
		{"resp noise", respNoiseOffset, 20},
		{"resp mac1", respMAC1Offset, 80},
		{"resp mac2", respMAC2Offset, 96},
		{"cookie nonce", cookieNonceOffset, 12},
		{"cookie box", cookieBoxOffset, 36},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	want := append([]byte("ferry-sudp\x01\x00\x03"), "abc"...)
	if got := prologue("abc"); !bytes.Equal(got, want) {
		t.Errorf("prologue = %q, want %q", got, want)
	}
}

func TestHandshake(t *testing.T) {
	f := newFixture(t, 1)
	r := f.responder(t)
	i := f.initiator(t)

	pkt := mustInitiation(t, i, t0, 0x1111)
	if !isZero(pkt[initMAC2Offset:]) {
		t.Fatal("mac2 set without a cookie")
	}
	rNow := t0.Add(7 * time.Millisecond) // the responder's clock is its own
	reply, rs, err := handle(t, r, rNow, srcA, pkt, 0x2222)
	if err != nil {
		t.Fatalf("HandleInitiation: %v", err)
	}
	is, err := i.HandleResponse(t0.Add(20*time.Millisecond), reply)
	if err != nil {
		t.Fatalf("HandleResponse: %v", err)
	}

	if is.SendKey != rs.RecvKey || is.RecvKey != rs.SendKey {
		t.Fatal("traffic keys do not match crosswise")
	}
	if is.SendKey == is.RecvKey || isZero(is.SendKey[:]) || isZero(is.RecvKey[:]) {
		t.Fatal("degenerate traffic keys")
	}
	if is.HandshakeHash != rs.HandshakeHash || isZero(is.HandshakeHash[:]) {
		t.Fatal("handshake hashes differ")
	}
	if is.LocalCID != 0x1111 || is.RemoteCID != 0x2222 || rs.LocalCID != 0x2222 || rs.RemoteCID != 0x1111 {
		t.Fatalf("connection ids: initiator %x/%x responder %x/%x", is.LocalCID, is.RemoteCID, rs.LocalCID, rs.RemoteCID)
	}
	if is.PeerStatic != pub32(f.rKey) || rs.PeerStatic != pub32(f.iKey) {
		t.Fatal("peer static keys wrong")
	}
	if !rs.PeerTime.Equal(t0) {
		t.Fatalf("responder got initiator time %v, want %v", rs.PeerTime, t0)
	}
	if !is.PeerTime.Equal(rNow) {
		t.Fatalf("initiator got responder time %v, want %v", is.PeerTime, rNow)
	}
	if is.RTT != 20*time.Millisecond || rs.RTT != 0 {
		t.Fatalf("RTT initiator %v responder %v", is.RTT, rs.RTT)
	}
	if is.LoginState != f.login || rs.LoginState != f.login {
		t.Fatalf("login state %d/%d, want %d", is.LoginState, rs.LoginState, f.login)
	}
	if rs.Peer.ID != "agent-1" || !rs.Peer.Allowed || !isZero(rs.Peer.PSK[:]) {
		t.Fatalf("responder Peer = %+v (PSK must be wiped)", rs.Peer)
	}

	// The keys protect traffic both ways.
	for _, dir := range []struct{ send, recv [32]byte }{{is.SendKey, rs.RecvKey}, {rs.SendKey, is.RecvKey}} {
		ct, err := noise.UnsafeNewCipherState(cipherSuite, dir.send, 0).Encrypt(nil, nil, []byte("migrate vm-42"))
		if err != nil {
			t.Fatal(err)
		}
		pt, err := noise.UnsafeNewCipherState(cipherSuite, dir.recv, 0).Decrypt(nil, nil, ct)
		if err != nil || string(pt) != "migrate vm-42" {
			t.Fatalf("traffic key does not decrypt: %v", err)
		}
	}

	// The response is single-use.
	if _, err := i.HandleResponse(t0.Add(21*time.Millisecond), reply); !errors.Is(err, ErrNoPendingHandshake) {
		t.Fatalf("second HandleResponse: %v, want ErrNoPendingHandshake", err)
	}
	if st := r.Stats(); st.Initiations != 1 || st.Sessions != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSessionZero(t *testing.T) {
	s := Session{SendKey: [32]byte{1}, RecvKey: [32]byte{2}, HandshakeHash: [32]byte{3}, Peer: Peer{PSK: [32]byte{4}}, LocalCID: 5}
	s.Zero()
	if !isZero(s.SendKey[:]) || !isZero(s.RecvKey[:]) || !isZero(s.HandshakeHash[:]) || !isZero(s.Peer.PSK[:]) {
		t.Fatalf("Zero left secrets: %+v", s)
	}
	if s.LocalCID != 5 {
		t.Fatal("Zero touched non-secret fields")
	}
}

func TestClusterAndVersionBinding(t *testing.T) {
	f := newFixture(t, 2)
	r := f.responder(t)

	t.Run("cluster id mismatch", func(t *testing.T) {
		i := f.initiator(t, func(c *InitiatorConfig) { c.ClusterID = "dc-berlin" })
		_, _, err := handle(t, r, t0, srcA, mustInitiation(t, i, t0, 1), 2)
		if !errors.Is(err, ErrDecrypt) {
			t.Fatalf("got %v, want ErrDecrypt", err)
		}
	})
	t.Run("cluster id is length-prefixed", func(t *testing.T) {
		if bytes.Equal(prologue("ab"), prologue("a")[:len(prologue("a"))]) ||
			bytes.HasPrefix(prologue("ab"), prologue("a")) {
			t.Fatal("prologue of one cluster id is a prefix of another's")
		}
	})
	t.Run("version in the prologue", func(t *testing.T) {
		// A build speaking another version but (wrongly) keeping the
		// header byte: the prologue alone makes the handshake fail.
		i := f.initiator(t)
		i.prologue[len(PrologueLabel)] = Version + 1
		_, _, err := handle(t, r, t0, srcA, mustInitiation(t, i, t0, 1), 2)
		if !errors.Is(err, ErrDecrypt) {
			t.Fatalf("got %v, want ErrDecrypt", err)
		}
	})
	t.Run("version in the header", func(t *testing.T) {
		pkt := mustInitiation(t, f.initiator(t), t0, 1)
		pkt[1] = Version + 1
		_, _, err := handle(t, r, t0, srcA, withMAC1(pkt, f.rKey.Public), 2)
		if !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("got %v, want ErrUnsupportedVersion", err)
		}
	})
	if st := r.Stats(); st.Sessions != 0 || st.DecryptFailed != 2 || st.BadVersion != 1 || len(r.timestamps) != 0 {
		t.Fatalf("stats %+v, %d timestamps", st, len(r.timestamps))
	}
}

// TestWrongPSK documents the IKpsk2 property: the psk is mixed in by message
// 2, which the responder writes but never reads back, so the responder cannot
// tell a wrong psk. It returns a session whose keys the initiator will never
// hold; the initiator refuses the response. The caller must treat the
// responder's session as unconfirmed until an authenticated data packet
// arrives under its RecvKey.
func TestWrongPSK(t *testing.T) {
	f := newFixture(t, 3)
	r := f.responder(t)
	i := f.initiator(t, func(c *InitiatorConfig) { c.PSK[0] ^= 1 })

	reply, rs, err := handle(t, r, t0, srcA, mustInitiation(t, i, t0, 1), 2)
	if err != nil || rs == nil {
		t.Fatalf("responder: %v (it cannot detect a wrong psk)", err)
	}
	if _, err := i.HandleResponse(t0, reply); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("initiator: %v, want ErrDecrypt", err)
	}
	// Nothing the initiator can produce authenticates under the
	// responder's RecvKey: it has no session at all.
	if i.pending == nil {
		t.Fatal("a failed response should leave the attempt open (it may have been forged)")
	}
}

func TestUnknownAndNotAllowed(t *testing.T) {
	f := newFixture(t, 4)
	r := f.responder(t)

	t.Run("unknown key", func(t *testing.T) {
		stranger := newFixture(t, 40)
		i := stranger.initiator(t, func(c *InitiatorConfig) { c.RemoteStatic = pub32(f.rKey) })
		_, _, err := handle(t, r, t0, srcA, mustInitiation(t, i, t0, 1), 2)
		if !errors.Is(err, ErrUnknownPeer) || !errors.Is(err, errNoSuchPeer) {
			t.Fatalf("got %v, want ErrUnknownPeer wrapping the lookup error", err)
		}
	})

	i := f.initiator(t)
	pkt := mustInitiation(t, i, t0, 1)
	t.Run("not allowed", func(t *testing.T) {
		f.allowed = false
		defer func() { f.allowed = true }()
		if _, _, err := handle(t, r, t0, srcA, pkt, 2); !errors.Is(err, ErrPeerNotAllowed) {
			t.Fatalf("got %v, want ErrPeerNotAllowed", err)
		}
	})
	t.Run("zero psk is not allowed", func(t *testing.T) {
		psk := f.psk
		f.psk = [32]byte{}
		defer func() { f.psk = psk }()
		if _, _, err := handle(t, r, t0, srcA, pkt, 2); !errors.Is(err, ErrPeerNotAllowed) {
			t.Fatalf("got %v, want ErrPeerNotAllowed", err)
		}
	})
	if len(r.timestamps) != 0 {
		t.Fatal("a refused initiation recorded a timestamp")
	}
	st := r.Stats()
	if st.UnknownPeer != 1 || st.PeerNotAllowed != 2 || st.Sessions != 0 {
		t.Fatalf("stats %+v", st)
	}
	// No timestamp was recorded, so once the peer is allowed the very same
	// initiation goes through.
	if _, _, err := handle(t, r, t0, srcA, pkt, 2); err != nil {
		t.Fatalf("after allowing: %v", err)
	}
}

func TestReplay(t *testing.T) {
	f := newFixture(t, 5)
	r := f.responder(t)
	i := f.initiator(t)

	old := mustInitiation(t, i, t0, 1)
	cur := mustInitiation(t, i, t0.Add(time.Second), 1)
	if _, _, err := handle(t, r, t0, srcA, cur, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := handle(t, r, t0, srcA, cur, 3); !errors.Is(err, ErrReplay) {
		t.Fatalf("same bytes again: %v, want ErrReplay", err)
	}
	if _, _, err := handle(t, r, t0, srcB, old, 4); !errors.Is(err, ErrReplay) {
		t.Fatalf("older timestamp: %v, want ErrReplay", err)
	}
	if st := r.Stats(); st.Replays != 2 || st.Sessions != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The refused ones did not move the bar: a newer one still works.
	if _, _, err := handle(t, r, t0, srcA, mustInitiation(t, i, t0.Add(2*time.Second), 1), 5); err != nil {
		t.Fatal(err)
	}
}

func TestTimestampStrictlyMonotonic(t *testing.T) {
	f := newFixture(t, 6)
	r := f.responder(t)
	i := f.initiator(t)
	// Same instant twice, then a clock stepping back: every initiation
	// still carries a newer timestamp and is accepted.
	times := []time.Time{t0, t0, t0.Add(-time.Hour), t0.Add(999_999_999)}
	var last timestamp
	for k, now := range times {
		pkt := mustInitiation(t, i, now, 1)
		_, s, err := handle(t, r, now, srcA, pkt, 2)
		if err != nil {
			t.Fatalf("initiation %d: %v", k, err)
		}
		ts, _ := timestampOf(s.PeerTime)
		if k > 0 && !ts.after(last) {
			t.Fatalf("initiation %d: timestamp %v not after %v", k, ts, last)
		}
		last = ts
	}
	if want := (timestamp{sec: uint64(t0.Unix()), nsec: 999_999_999}); last != want {
		// t0, t0+1ns, t0+2ns, then t0+999999999ns is newer than t0+2ns.
		t.Fatalf("last timestamp %v, want %v", last, want)
	}
	if (timestamp{5, 999_999_999}).next() != (timestamp{6, 0}) {
		t.Fatal("next does not carry")
	}
}

func TestInitiationArguments(t *testing.T) {
	f := newFixture(t, 7)
	i := f.initiator(t)
	if _, err := i.Initiation(t0, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("cid 0: %v", err)
	}
	if _, err := i.Initiation(time.Unix(-1, 0), 1); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("before 1970: %v", err)
	}
	r := f.responder(t)
	pkt := mustInitiation(t, i, t0, 1)
	if _, _, err := handle(t, r, t0, srcA, pkt, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("local cid 0: %v", err)
	}
	if _, _, err := handle(t, r, t0, netip.AddrPort{}, pkt, 1); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("invalid source: %v", err)
	}
}

func TestMalformedInitiation(t *testing.T) {
	f := newFixture(t, 8)
	r := f.responder(t)
	good := mustInitiation(t, f.initiator(t), t0, 1)
	mutate := func(fn func([]byte) []byte) []byte { return fn(append([]byte(nil), good...)) }
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"short", good[:InitiationSize-1], ErrMalformed},
		{"long", append(append([]byte(nil), good...), 0), ErrMalformed},
		{"response type", mutate(func(b []byte) []byte { b[0] = TypeResponse; return withMAC1(b, f.rKey.Public) }), ErrMalformed},
		{"reserved", mutate(func(b []byte) []byte { b[3] = 1; return withMAC1(b, f.rKey.Public) }), ErrMalformed},
		{"zero sender cid", mutate(func(b []byte) []byte { clear(b[4:12]); return withMAC1(b, f.rKey.Public) }), ErrMalformed},
		{"version", mutate(func(b []byte) []byte { b[1] = 2; return withMAC1(b, f.rKey.Public) }), ErrUnsupportedVersion},
		{"mac1 for another key", mutate(func(b []byte) []byte { return withMAC1(b, f.iKey.Public) }), ErrBadMAC1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := handle(t, r, t0, srcA, tc.pkt, 2); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, _, err := handle(t, r, t0, srcA, good, 2); err != nil {
		t.Fatalf("the valid one after all that: %v", err)
	}
}

func flip(pkt []byte, bit int) []byte {
	b := append([]byte(nil), pkt...)
	b[bit/8] ^= 1 << (bit % 8)
	return b
}

func TestEveryBitFlipOfInitiationRejected(t *testing.T) {
	f := newFixture(t, 9)
	for _, requireCookie := range []bool{false, true} {
		r := f.responder(t, func(c *ResponderConfig) { c.RequireCookie = requireCookie })
		i := f.initiator(t)
		pkt := mustInitiation(t, i, t0, 1)
		if requireCookie { // get a cookie first so mac2 is set
			reply, _, err := handle(t, r, t0, srcA, pkt, 2)
			if !errors.Is(err, ErrCookieRequired) {
				t.Fatal(err)
			}
			if err := i.HandleCookieReply(t0, reply); err != nil {
				t.Fatal(err)
			}
			pkt = mustInitiation(t, i, t0, 1)
			if isZero(pkt[initMAC2Offset:]) {
				t.Fatal("mac2 not set")
			}
		}
		for bit := range len(pkt) * 8 {
			if _, _, err := handle(t, r, t0, srcA, flip(pkt, bit), 2); err == nil {
				t.Fatalf("requireCookie=%v: flip of bit %d accepted", requireCookie, bit)
			}
		}
		if len(r.timestamps) != 0 {
			t.Fatal("rejected initiations left a timestamp")
		}
		if _, _, err := handle(t, r, t0, srcA, pkt, 2); err != nil {
			t.Fatalf("requireCookie=%v: original refused after the flips: %v", requireCookie, err)
		}
	}
}

// TestForgedNoiseWithValidMAC1 plays an attacker who knows the responder's
// public key and so can recompute mac1: any change to the Noise message must
// still fail, at the cost of at most the Diffie-Hellman work.
func TestForgedNoiseWithValidMAC1(t *testing.T) {
	f := newFixture(t, 10)
	r := f.responder(t)
	pkt := mustInitiation(t, f.initiator(t), t0, 1)
	for bit := initNoiseOffset * 8; bit < initMAC1Offset*8; bit++ {
		forged := withMAC1(flip(pkt, bit), f.rKey.Public)
		if _, _, err := handle(t, r, t0, srcA, forged, 2); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("bit %d: %v, want ErrDecrypt", bit, err)
		}
	}
	if st := r.Stats(); st.DecryptFailed != noiseInitiationLen*8 || len(r.timestamps) != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func completedPair(t *testing.T, f *fixture) (*Responder, *Initiator, []byte, []byte) {
	t.Helper()
	r := f.responder(t)
	i := f.initiator(t)
	pkt := mustInitiation(t, i, t0, 0xabc)
	reply, _, err := handle(t, r, t0, srcA, pkt, 0xdef)
	if err != nil {
		t.Fatal(err)
	}
	return r, i, pkt, reply
}

func TestEveryBitFlipOfResponseRejected(t *testing.T) {
	f := newFixture(t, 11)
	_, i, _, reply := completedPair(t, f)
	for bit := range len(reply) * 8 {
		if s, err := i.HandleResponse(t0, flip(reply, bit)); err == nil || s != nil {
			t.Fatalf("flip of bit %d accepted", bit)
		}
	}
	if _, err := i.HandleResponse(t0, reply); err != nil {
		t.Fatalf("original refused after the flips: %v", err)
	}
}

// TestForgedResponsesDoNotBreakHandshake sends the initiator responses that
// pass its cheap checks (right connection id, mac1 recomputed from its public
// key) but carry a tampered Noise message, including a low-order ephemeral
// key that makes the Diffie-Hellman itself fail. The genuine response that
// follows must still complete the handshake.
func TestForgedResponsesDoNotBreakHandshake(t *testing.T) {
	f := newFixture(t, 12)
	_, i, _, reply := completedPair(t, f)

	lowOrder := append([]byte(nil), reply...)
	clear(lowOrder[respNoiseOffset : respNoiseOffset+DHLen])
	if _, err := i.HandleResponse(t0, withMAC1(lowOrder, f.iKey.Public)); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("low-order e: %v, want ErrDecrypt", err)
	}
	for bit := respNoiseOffset * 8; bit < respMAC1Offset*8; bit += 3 {
		if _, err := i.HandleResponse(t0, withMAC1(flip(reply, bit), f.iKey.Public)); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("bit %d: %v, want ErrDecrypt", bit, err)
		}
	}
	if _, err := i.HandleResponse(t0, reply); err != nil {
		t.Fatalf("genuine response after forgeries: %v", err)
	}
}

func TestMalformedResponse(t *testing.T) {
	f := newFixture(t, 13)
	_, i, _, reply := completedPair(t, f)
	mutate := func(fn func([]byte)) []byte {
		b := append([]byte(nil), reply...)
		fn(b)
		return withMAC1(b, f.iKey.Public)
	}
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{"short", reply[:ResponseSize-1], ErrMalformed},
		{"reserved", mutate(func(b []byte) { b[2] = 0x80 }), ErrMalformed},
		{"zero sender", mutate(func(b []byte) { clear(b[respSenderOffset:respReceiverOffset]) }), ErrMalformed},
		{"zero receiver", mutate(func(b []byte) { clear(b[respReceiverOffset:respNoiseOffset]) }), ErrMalformed},
		{"other receiver", mutate(func(b []byte) { b[respNoiseOffset-1]++ }), ErrWrongReceiver},
		{"version", mutate(func(b []byte) { b[1] = 0 }), ErrUnsupportedVersion},
		{"mac1 for the responder's key", withMAC1(reply, f.rKey.Public), ErrBadMAC1},
		{"mac2 set", func() []byte { b := append([]byte(nil), reply...); b[ResponseSize-1] = 1; return b }(), ErrBadMAC2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := i.HandleResponse(t0, tc.pkt); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := i.HandleResponse(t0, reply); err != nil {
		t.Fatal(err)
	}
	fresh := f.initiator(t)
	if _, err := fresh.HandleResponse(t0, reply); !errors.Is(err, ErrNoPendingHandshake) {
		t.Fatalf("no initiation sent: %v", err)
	}
}

// TestBadPayloads crafts messages that authenticate but break the payload
// format, which only a key holder can do.
func TestBadPayloads(t *testing.T) {
	f := newFixture(t, 14)

	t.Run("initiation timestamp nanoseconds", func(t *testing.T) {
		r := f.responder(t)
		i := f.initiator(t)
		p := &pending{}
		copy(p.ephemeral[:], "0123456789abcdef0123456789abcdef")
		timestamp{sec: 1, nsec: 1e9}.put(p.payload[:])
		_, msg, err := i.newHandshake(p)
		if err != nil {
			t.Fatal(err)
		}
		pkt := make([]byte, InitiationSize)
		putHeader(pkt, TypeInitiation)
		binary.BigEndian.PutUint64(pkt[initSenderOffset:], 1)
		copy(pkt[initNoiseOffset:], msg)
		if _, _, err := handle(t, r, t0, srcA, withMAC1(pkt, f.rKey.Public), 2); !errors.Is(err, ErrBadPayload) {
			t.Fatalf("got %v, want ErrBadPayload", err)
		}
		if st := r.Stats(); st.BadPayload != 1 || len(r.timestamps) != 0 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("response reserved bytes", func(t *testing.T) {
		i := f.initiator(t)
		pkt := mustInitiation(t, i, t0, 1)
		hs, err := noise.NewHandshakeState(noise.Config{
			CipherSuite: cipherSuite, Random: seeded(14, 9), Pattern: noise.HandshakeIK,
			Prologue: prologue(clusterA), PresharedKeyPlacement: 2, StaticKeypair: f.rKey,
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := hs.ReadMessage(nil, pkt[initNoiseOffset:initMAC1Offset]); err != nil {
			t.Fatal(err)
		}
		if err := hs.SetPresharedKey(f.psk[:]); err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, RespPayloadLen)
		payload[RespPayloadLen-1] = 1
		out := make([]byte, respNoiseOffset, ResponseSize)
		putHeader(out, TypeResponse)
		binary.BigEndian.PutUint64(out[respSenderOffset:], 9)
		binary.BigEndian.PutUint64(out[respReceiverOffset:], 1)
		out, _, _, err = hs.WriteMessage(out, payload)
		if err != nil {
			t.Fatal(err)
		}
		out = withMAC1(out[:ResponseSize], f.iKey.Public)
		if _, err := i.HandleResponse(t0, out); !errors.Is(err, ErrBadPayload) {
			t.Fatalf("got %v, want ErrBadPayload", err)
		}
		// The handshake completed cryptographically: its state is gone.
		if _, err := i.HandleResponse(t0, out); !errors.Is(err, ErrNoPendingHandshake) {
			t.Fatalf("got %v, want ErrNoPendingHandshake", err)
		}
	})
}

// cookieDance has a RequireCookie responder refuse an initiation with a
// cookie reply, which the initiator takes.
func cookieDance(t *testing.T, r *Responder, i *Initiator, now time.Time, src netip.AddrPort) {
	t.Helper()
	pkt := mustInitiation(t, i, now, 1)
	reply, _, err := handle(t, r, now, src, pkt, 2)
	if !errors.Is(err, ErrCookieRequired) {
		t.Fatalf("got %v, want ErrCookieRequired", err)
	}
	if binary.BigEndian.Uint64(reply[cookieReceiverOffset:]) != 1 {
		t.Fatal("cookie reply does not name the initiator's cid")
	}
	if err := i.HandleCookieReply(now, reply); err != nil {
		t.Fatalf("HandleCookieReply: %v", err)
	}
}

func TestCookieFlow(t *testing.T) {
	f := newFixture(t, 15)
	requireCookie := func(c *ResponderConfig) { c.RequireCookie = true }

	t.Run("cookie then accepted", func(t *testing.T) {
		r := f.responder(t, requireCookie)
		i := f.initiator(t)
		cookieDance(t, r, i, t0, srcA)
		if len(r.timestamps) != 0 || r.limiter.Len() != 0 {
			t.Fatal("the cookie path kept state")
		}
		pkt := mustInitiation(t, i, t0.Add(time.Millisecond), 1)
		reply, _, err := handle(t, r, t0.Add(time.Millisecond), srcA, pkt, 2)
		if err != nil {
			t.Fatalf("retry with cookie: %v", err)
		}
		if _, err := i.HandleResponse(t0, reply); err != nil {
			t.Fatal(err)
		}
		if st := r.Stats(); st.CookieReplies != 1 || st.Sessions != 1 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("cookie bound to source address and port", func(t *testing.T) {
		r := f.responder(t, requireCookie)
		i := f.initiator(t)
		cookieDance(t, r, i, t0, srcA)
		otherPort := netip.AddrPortFrom(srcA.Addr(), srcA.Port()+1)
		for _, src := range []netip.AddrPort{srcB, otherPort} {
			pkt := mustInitiation(t, i, t0, 1)
			if _, _, err := handle(t, r, t0, src, pkt, 2); !errors.Is(err, ErrCookieRequired) {
				t.Fatalf("cookie of %v used from %v: %v", srcA, src, err)
			}
		}
		// IPv4-mapped IPv6 is the same address.
		mapped := netip.AddrPortFrom(netip.AddrFrom16(srcA.Addr().As16()), srcA.Port())
		if _, _, err := handle(t, r, t0, mapped, mustInitiation(t, i, t0, 1), 2); err != nil {
			t.Fatalf("from IPv4-mapped form of the same address: %v", err)
		}
	})

	t.Run("survives one secret rotation, not two", func(t *testing.T) {
		r := f.responder(t, requireCookie)
		i := f.initiator(t)
		cookieDance(t, r, i, t0, srcA) // responder's epoch 0 starts at t0
		// The initiator's clock barely moves, so it keeps the cookie; the
		// responder's crosses one rotation, then a second.
		rNow := t0.Add(CookieSecretLifetime + time.Second)
		if _, _, err := handle(t, r, rNow, srcA, mustInitiation(t, i, t0.Add(time.Second), 1), 2); err != nil {
			t.Fatalf("after one rotation: %v", err)
		}
		rNow = t0.Add(2*CookieSecretLifetime + time.Second)
		if _, _, err := handle(t, r, rNow, srcA, mustInitiation(t, i, t0.Add(2*time.Second), 1), 2); !errors.Is(err, ErrCookieRequired) {
			t.Fatalf("after two rotations: %v, want ErrCookieRequired", err)
		}
	})

	t.Run("two periods unseen drop both secrets", func(t *testing.T) {
		r := f.responder(t, requireCookie)
		i := f.initiator(t)
		cookieDance(t, r, i, t0, srcA)
		// No traffic during epoch 1: at epoch 2 the old secret is gone.
		rNow := t0.Add(2*CookieSecretLifetime + time.Second)
		if _, _, err := handle(t, r, rNow, srcA, mustInitiation(t, i, t0.Add(time.Second), 1), 2); !errors.Is(err, ErrCookieRequired) {
			t.Fatalf("got %v, want ErrCookieRequired", err)
		}
	})

	t.Run("initiator drops an old cookie", func(t *testing.T) {
		r := f.responder(t, requireCookie)
		i := f.initiator(t)
		cookieDance(t, r, i, t0, srcA)
		if pkt := mustInitiation(t, i, t0.Add(CookieLifetime-CookieLifetimeMargin-time.Nanosecond), 1); isZero(pkt[initMAC2Offset:]) {
			t.Fatal("cookie dropped too early")
		}
		if pkt := mustInitiation(t, i, t0.Add(CookieLifetime-CookieLifetimeMargin), 1); !isZero(pkt[initMAC2Offset:]) {
			t.Fatal("stale cookie still used")
		}
	})

	t.Run("stale mac2 when not under load gets a fresh cookie", func(t *testing.T) {
		// The initiator's address changed (NAT rebinding) while it held a
		// cookie: the responder, not under load, answers with a new cookie
		// rather than accept a mac2 it cannot verify.
		strict := f.responder(t, requireCookie)
		i := f.initiator(t)
		cookieDance(t, strict, i, t0, srcA)
		r := f.responder(t)
		reply, _, err := handle(t, r, t0, srcB, mustInitiation(t, i, t0, 1), 2)
		if !errors.Is(err, ErrCookieRequired) {
			t.Fatalf("got %v, want ErrCookieRequired", err)
		}
		if err := i.HandleCookieReply(t0, reply); err != nil {
			t.Fatal(err)
		}
		if _, _, err := handle(t, r, t0, srcB, mustInitiation(t, i, t0, 1), 2); err != nil {
			t.Fatalf("with the new cookie: %v", err)
		}
	})
}

func TestCookieReplyChecks(t *testing.T) {
	f := newFixture(t, 16)
	r := f.responder(t, func(c *ResponderConfig) { c.RequireCookie = true })
	i := f.initiator(t)

	if err := i.HandleCookieReply(t0, make([]byte, CookieReplySize)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("all zero: %v", err)
	}
	first := mustInitiation(t, i, t0, 1)
	reply1, _, _ := handle(t, r, t0, srcA, first, 2)

	// A new initiation (same cid) makes the reply to the first useless:
	// it is bound to the first one's mac1.
	second := mustInitiation(t, i, t0, 1)
	if err := i.HandleCookieReply(t0, reply1); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("reply to an earlier initiation: %v, want ErrDecrypt", err)
	}
	reply2, _, _ := handle(t, r, t0, srcA, second, 2)
	other := append([]byte(nil), reply2...)
	other[cookieNonceOffset-1] ^= 2
	if err := i.HandleCookieReply(t0, other); !errors.Is(err, ErrWrongReceiver) {
		t.Fatalf("other cid: %v, want ErrWrongReceiver", err)
	}
	for bit := range CookieReplySize * 8 {
		if err := i.HandleCookieReply(t0, flip(reply2, bit)); err == nil {
			t.Fatalf("flip of bit %d accepted", bit)
		}
	}
	if err := i.HandleCookieReply(t0, reply2); err != nil {
		t.Fatalf("original after flips: %v", err)
	}
	if err := i.HandleCookieReply(t0, reply2); !errors.Is(err, ErrNoPendingHandshake) {
		t.Fatalf("same reply twice: %v, want ErrNoPendingHandshake", err)
	}
	if err := f.initiator(t).HandleCookieReply(t0, reply2); !errors.Is(err, ErrNoPendingHandshake) {
		t.Fatalf("no initiation: %v", err)
	}
}

// junkInitiation is what a flooder who knows the responder's public key can
// send cheaply: a valid mac1 over random Noise bytes.
func junkInitiation(f *fixture, n byte) []byte {
	pkt := make([]byte, InitiationSize)
	putHeader(pkt, TypeInitiation)
	binary.BigEndian.PutUint64(pkt[initSenderOffset:], 0xdead00+uint64(n))
	for k := initNoiseOffset; k < initMAC1Offset; k++ {
		pkt[k] = byte(k)*7 + n
	}
	return withMAC1(pkt, f.rKey.Public)
}

func TestUnderLoadDemandsCookies(t *testing.T) {
	f := newFixture(t, 17)
	r := f.responder(t, func(c *ResponderConfig) { c.LoadThreshold = 3 })
	for n := range 3 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(n)}), 1000)
		if _, _, err := handle(t, r, t0, src, junkInitiation(f, byte(n)), 2); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("junk %d below threshold: %v, want ErrDecrypt", n, err)
		}
	}
	// The fourth initiation within the second exceeds the threshold.
	i := f.initiator(t)
	reply, _, err := handle(t, r, t0, srcA, mustInitiation(t, i, t0, 1), 2)
	if !errors.Is(err, ErrCookieRequired) {
		t.Fatalf("above threshold: %v, want ErrCookieRequired", err)
	}
	if err := i.HandleCookieReply(t0, reply); err != nil {
		t.Fatal(err)
	}
	if _, _, err := handle(t, r, t0.Add(time.Millisecond), srcA, mustInitiation(t, i, t0, 1), 2); err != nil {
		t.Fatalf("with cookie under load: %v", err)
	}
	// Junk without a cookie no longer reaches the Diffie-Hellman.
	if _, _, err := handle(t, r, t0.Add(time.Millisecond), srcB, junkInitiation(f, 9), 2); !errors.Is(err, ErrCookieRequired) {
		t.Fatalf("junk under load: %v, want ErrCookieRequired", err)
	}
	// Once the rate has fallen, no cookie is needed.
	i2 := f.initiator(t)
	later := t0.Add(3 * LoadWindow)
	if _, _, err := handle(t, r, later, srcB, mustInitiation(t, i2, later, 1), 2); err != nil {
		t.Fatalf("after the load passed: %v", err)
	}
	if st := r.Stats(); st.CookieReplies != 2 || st.Sessions != 2 || st.DecryptFailed != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLoadMeter(t *testing.T) {
	var m loadMeter
	for k := range 10 {
		if got := m.observe(t0); got != float64(k+1) {
			t.Fatalf("observe %d = %v", k, got)
		}
	}
	// Half-way into the next window, half of the previous one still counts.
	if got := m.observe(t0.Add(LoadWindow + LoadWindow/2)); got != 6 {
		t.Fatalf("sliding estimate = %v, want 5+1", got)
	}
	if got := m.observe(t0.Add(10 * LoadWindow)); got != 1 {
		t.Fatalf("after a long pause = %v, want 1", got)
	}
	if got := m.observe(t0); got != 2 { // clock went backwards: counted in the current window
		t.Fatalf("backwards = %v", got)
	}
}

func TestFloodFromOneAddress(t *testing.T) {
	f := newFixture(t, 18)
	r := f.responder(t, func(c *ResponderConfig) {
		c.RateLimit = ratelimit.Config{} // the defaults: 20/s, burst 5
		c.LoadThreshold = 1 << 30        // isolate the rate limiter from the cookie defence
	})
	junk := junkInitiation(f, 1)
	counts := map[error]int{}
	var victim *Session
	for k := range 1000 {
		now := t0.Add(time.Duration(k) * time.Millisecond)
		_, _, err := handle(t, r, now, srcA, junk, 2)
		counts[err]++
		if k == 500 { // a genuine peer elsewhere in the middle of the flood
			i := f.initiator(t)
			reply, s, err := handle(t, r, now, srcB, mustInitiation(t, i, now, 7), 8)
			if err != nil {
				t.Fatalf("second address during the flood: %v", err)
			}
			if _, err := i.HandleResponse(now, reply); err != nil {
				t.Fatal(err)
			}
			victim = s
		}
	}
	// Burst of 5, plus one token per 50 ms over the 999 ms: 5 + 19.
	const passed = ratelimit.DefaultBurst + 999/(1000/ratelimit.DefaultRate)
	if counts[ErrDecrypt] != passed || counts[ErrRateLimited] != 1000-passed || len(counts) != 2 {
		t.Fatalf("outcomes %v, want %d decrypt failures and the rest rate limited", counts, passed)
	}
	if victim == nil {
		t.Fatal("no session for the second address")
	}
	if st := r.Stats(); st.RateLimited != uint64(1000-passed) || st.Sessions != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestAmplificationBound drives every path of HandleInitiation (handle checks
// len(reply) <= 3*len(pkt) on each) and checks that every path was taken.
func TestAmplificationBound(t *testing.T) {
	f := newFixture(t, 19)
	seen := map[error]bool{}
	record := func(_ []byte, _ *Session, err error) {
		for _, e := range []error{ErrMalformed, ErrUnsupportedVersion, ErrBadMAC1, ErrCookieRequired,
			ErrRateLimited, ErrDecrypt, ErrUnknownPeer, ErrPeerNotAllowed, ErrReplay, ErrInvalidArgument} {
			if errors.Is(err, e) {
				seen[e] = true
			}
		}
		if err == nil {
			seen[nil] = true
		}
	}
	r := f.responder(t, func(c *ResponderConfig) { c.RateLimit = ratelimit.Config{Burst: 3} })
	i := f.initiator(t)
	good := mustInitiation(t, i, t0, 1)
	for n := 0; n <= 2*InitiationSize; n += 7 {
		record(handle(t, r, t0, srcA, make([]byte, n), 2))
	}
	record(handle(t, r, t0, srcA, good, 0))
	record(handle(t, r, t0, srcA, withMAC1(append([]byte{1, 9}, good[2:]...), f.rKey.Public), 2))
	record(handle(t, r, t0, srcA, flip(good, 8*initMAC1Offset), 2))
	record(handle(t, r, t0, srcA, flip(good, 8*initMAC2Offset), 2))
	record(handle(t, r, t0, srcA, junkInitiation(f, 1), 2))
	f.allowed = false
	record(handle(t, r, t0, srcB, good, 2))
	f.allowed = true
	stranger := newFixture(t, 191)
	si := stranger.initiator(t, func(c *InitiatorConfig) { c.RemoteStatic = pub32(f.rKey) })
	record(handle(t, r, t0, srcB, mustInitiation(t, si, t0, 1), 2))
	record(handle(t, r, t0, srcB, good, 2))
	record(handle(t, r, t0, netip.MustParseAddrPort("192.0.2.77:1"), good, 2))
	for range 5 {
		record(handle(t, r, t0, srcA, good, 2))
	}
	strict := f.responder(t, func(c *ResponderConfig) { c.RequireCookie = true })
	record(handle(t, strict, t0, srcA, good, 2))
	if len(seen) != 11 {
		t.Fatalf("paths covered: %v", seen)
	}
}

func TestStatsConcurrentRead(t *testing.T) {
	f := newFixture(t, 20)
	r := f.responder(t)
	i := f.initiator(t)
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
				_ = r.Stats()
			}
		}
	}()
	for k := range 20 {
		now := t0.Add(time.Duration(k) * time.Second)
		handle(t, r, now, srcA, mustInitiation(t, i, now, 1), 2)
		handle(t, r, now, srcA, junkInitiation(f, byte(k)), 2)
	}
	close(done)
	wg.Wait()
	st := r.Stats()
	if st.Initiations != 40 || st.Sessions != 20 || st.DecryptFailed != 20 {
		t.Fatalf("stats %+v", st)
	}
}

func TestConfigValidation(t *testing.T) {
	f := newFixture(t, 21)
	other := newFixture(t, 22)
	badResponder := map[string]func(*ResponderConfig){
		"short private":    func(c *ResponderConfig) { c.Static.Private = c.Static.Private[:31] },
		"mismatched pub":   func(c *ResponderConfig) { c.Static.Public = other.rKey.Public },
		"empty cluster":    func(c *ResponderConfig) { c.ClusterID = "" },
		"huge cluster":     func(c *ResponderConfig) { c.ClusterID = string(make([]byte, MaxClusterIDLen+1)) },
		"nil lookup":       func(c *ResponderConfig) { c.Lookup = nil },
		"negative load":    func(c *ResponderConfig) { c.LoadThreshold = -1 },
		"failing rand":     func(c *ResponderConfig) { c.Rand = bytes.NewReader(nil) },
		"missing key pair": func(c *ResponderConfig) { c.Static = noise.DHKey{} },
	}
	for name, mut := range badResponder {
		cfg := f.responderConfig()
		mut(&cfg)
		if _, err := NewResponder(cfg); err == nil {
			t.Errorf("NewResponder accepted %s", name)
		}
	}
	badInitiator := map[string]func(*InitiatorConfig){
		"zero remote":    func(c *InitiatorConfig) { c.RemoteStatic = [32]byte{} },
		"zero psk":       func(c *InitiatorConfig) { c.PSK = [32]byte{} },
		"empty cluster":  func(c *InitiatorConfig) { c.ClusterID = "" },
		"mismatched pub": func(c *InitiatorConfig) { c.Static.Public = other.iKey.Public },
	}
	for name, mut := range badInitiator {
		cfg := f.initiatorConfig()
		mut(&cfg)
		if _, err := NewInitiator(cfg); err == nil {
			t.Errorf("NewInitiator accepted %s", name)
		}
	}
	// The caller's key slices are copied: changing them later has no effect.
	cfg := f.initiatorConfig()
	cfg.Static = cloneKey(cfg.Static)
	i, err := NewInitiator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	clear(cfg.Static.Private)
	if _, _, err := handle(t, f.responder(t), t0, srcA, mustInitiation(t, i, t0, 1), 2); err != nil {
		t.Fatalf("after the caller wiped its copy: %v", err)
	}
	// A low-order responder key makes initiations fail, not panic.
	bad := f.initiator(t, func(c *InitiatorConfig) { c.RemoteStatic = [32]byte{1} })
	if _, err := bad.Initiation(t0, 1); !errors.Is(err, ErrInternal) {
		t.Fatalf("low-order remote key: %v", err)
	}
}

func TestKeys(t *testing.T) {
	k, err := GenerateKeypair(seeded(23, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkStatic(k); err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateKeypair(bytes.NewReader(nil)); err == nil {
		t.Fatal("GenerateKeypair with no randomness succeeded")
	}
	if _, err := GenerateKeypair(nil); err != nil {
		t.Fatal(err)
	}
	pub := pub32(k)
	s := EncodeKey(pub)
	if len(s) != 44 {
		t.Fatalf("EncodeKey gave %d chars", len(s))
	}
	back, err := ParseKey(s)
	if err != nil || back != pub {
		t.Fatalf("round trip: %v", err)
	}
	for name, in := range map[string]string{
		"empty":         "",
		"short":         s[:43],
		"long":          s + "=",
		"not base64":    "!" + s[1:],
		"unpadded":      s[:43] + "A",                   // 44 chars of data: 33 bytes
		"non-canonical": s[:42] + string(s[42]+1) + "=", // padding bits set
		"zero":          EncodeKey([32]byte{}),
	} {
		if _, err := ParseKey(in); err == nil {
			t.Errorf("ParseKey accepted %s (%q)", name, in)
		}
	}
}
