package core

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Review tests: each demonstrates one protocol or robustness defect (and
// fails until it is fixed), or pins a property that was checked and holds.

// reviewSim returns a simulation whose connection is confirmed on both sides
// and quiet (nothing in flight), so that frames injected with
// sealFromClient do not disturb the client's packet-number bookkeeping.
func reviewSim(t *testing.T, seed uint64, l link, cfg Config) *sim {
	t.Helper()
	s := handshakeSim(t, seed, l, cfg)
	runFor(s, 500*time.Millisecond)
	return s
}

// inject seals payload as the client's next packet and hands it to the
// server as if it came from "from".
func (s *sim) inject(from netip.AddrPort, payload []byte) {
	s.conn[1].HandleDatagram(s.now, from, s.sealFromClient(payload))
}

// drainServer polls the server until it has nothing to send, returning the
// packets and bytes it produced per destination.
func (s *sim) drainServer(now time.Time) (pkts, bytes map[netip.AddrPort]int) {
	pkts, bytes = map[netip.AddrPort]int{}, map[netip.AddrPort]int{}
	for i := 0; i < 100000; i++ {
		n, to, ok := s.conn[1].PollTransmit(now, s.buf)
		if !ok {
			break
		}
		pkts[to]++
		bytes[to] += n
	}
	return pkts, bytes
}

// A peer holding the keys sends DATAGRAM fragments that each announce the
// largest allowed fragment count and carry no data. Every one makes the
// receiver allocate a count-sized slice of fragment pointers that is not
// counted against the 4 x MaxDatagramMessage reassembly budget (§7.4,
// §14.9), so ~1025 partial messages pin count*24 bytes each: with the
// default 1 MiB MaxDatagramMessage that is ~400 MB from ~40 KB of packets.
func TestReview_DatagramReassemblyMemoryUnbounded(t *testing.T) {
	const maxMsg = 64 << 10 // keeps the test cheap; default is 1 MiB
	s := reviewSim(t, 11, link{delay: time.Millisecond}, Config{MaxDatagramMessage: maxMsg})
	srv := s.conn[1]
	count := uint64(maxMsg/64 + 1) // the largest count the receiver accepts
	id := uint64(1 << 20)
	for p := 0; p < 8; p++ {
		var payload []byte
		for len(payload) < 1300 {
			payload = wire.AppendDatagram(payload, id, 0, count, nil)
			id++
		}
		s.inject(s.addr[0], payload)
	}
	if err := srv.Err(); err != nil {
		t.Fatalf("connection closed: %v", err)
	}
	// inBytes charges data plus per-partial and per-fragment overhead;
	// fragment storage grows only with what arrived.
	held := srv.dg.inBytes
	for _, p := range srv.dg.in {
		held += len(p.frags) * 24
	}
	budget := 4 * maxMsg
	if held > 2*budget {
		t.Fatalf("%d partial messages hold %d bytes of reassembly state from %d bytes received; the budget is 4 x MaxDatagramMessage = %d",
			len(srv.dg.in), held, srv.Stats().BytesReceived, budget)
	}
}

// A zero-length fragment is stored as a nil slice, and nil is also what
// marks a missing fragment; so the same empty fragment repeated counts as
// several fragments and a message is "completed" with parts never received
// (§7.4: whole or not at all).
func TestReview_DatagramEmptyFragmentCountsTwice(t *testing.T) {
	s := reviewSim(t, 12, link{delay: time.Millisecond}, Config{})
	srv := s.conn[1]
	payload := wire.AppendDatagram(nil, 77, 0, 3, nil)
	payload = wire.AppendDatagram(payload, 77, 0, 3, nil)
	payload = wire.AppendDatagram(payload, 77, 0, 3, nil)
	s.inject(s.addr[0], payload)
	if m, ok := srv.RecvDatagram(); ok {
		t.Fatalf("message of 3 fragments delivered (%d bytes) although only fragment 0 ever arrived", len(m))
	}
}

// PATH_CHALLENGE frames are queued without bound and each is answered with
// its own packet, ahead of the anti-amplification budget and congestion
// control, to whatever source address the packet claims. One authenticated
// packet with a spoofed source (a peer reflecting off us, or draining
// frames in a tight loop) makes the server send ~150 packets and ~5x the
// bytes to a third party that never proved it owns the address (§10.6:
// at most 3x what the address sent).
func TestReview_PathChallengeAmplification(t *testing.T) {
	s := reviewSim(t, 13, link{delay: time.Millisecond}, Config{})
	srv := s.conn[1]
	victim := netip.MustParseAddrPort("203.0.113.9:53")
	var payload []byte
	for len(payload) < 1350 {
		payload = wire.AppendPath(payload, wire.FramePathChallenge, [8]byte{byte(len(payload))})
	}
	pkt := s.sealFromClient(payload)
	recv := len(pkt)
	srv.HandleDatagram(s.now, victim, pkt)
	queued := len(srv.pathRespQ)
	pkts, bytes := s.drainServer(s.now)
	if bytes[victim] > 3*recv || queued > 8 {
		t.Fatalf("one %d-byte packet from unvalidated %v made the server queue %d PATH_RESPONSEs and send %d packets / %d bytes there (limit 3x = %d bytes)",
			recv, victim, queued, pkts[victim], bytes[victim], 3*recv)
	}
}

// After a migration the PATH_CHALLENGE is padded to the whole
// anti-amplification budget, so nothing else may be sent to the new address
// until it is validated. An ACK owed for the peer's ack-eliciting packet then
// cannot leave, but its deadline stays armed in the past: NextTimeout keeps
// returning an expired time, HandleTimeout does nothing about it, and the
// driver spins (its loop re-polls every 20 µs) for up to 3 PTO -- after
// every NAT rebinding, or whenever an on-path attacker relays one packet
// from another address.
func TestReview_TimerSpinsWhileAckBlockedByAmplificationBudget(t *testing.T) {
	s := reviewSim(t, 14, link{delay: 40 * time.Millisecond}, Config{})
	srv := s.conn[1]
	newAddr := netip.MustParseAddrPort("198.18.0.1:4999") // the client after NAT rebinding
	s.inject(newAddr, wire.AppendPing(nil))
	// The new address is a candidate under validation (path.go); the
	// connection stays on its validated path meanwhile.
	if srv.findPathProbe(newAddr) == nil || srv.RemoteAddr() == newAddr {
		t.Fatalf("%v not being validated (path %v)", newAddr, srv.RemoteAddr())
	}
	now := s.now
	end := now.Add(2 * time.Second)
	spins := 0
	for now.Before(end) {
		s.drainServer(now) // whatever it sends is lost: the new address never answers
		next := srv.NextTimeout()
		if next.IsZero() {
			break
		}
		if !next.After(now) {
			spins++
			if spins > 1000 {
				t.Fatalf("NextTimeout stayed in the past for 1000 consecutive polls (%v after migration; owed ACK, budget %d, path %v)",
					now.Sub(s.now), srv.path.budget(), srv.path.addr)
			}
			now = now.Add(time.Microsecond)
		} else {
			spins = 0
			now = next
		}
		srv.HandleTimeout(now)
	}
}

// A stream is forgotten as soon as its RESET_STREAM was *sent* (maybeFree:
// sendReset && resetSent). When that packet is lost, onFramesLost finds no
// stream and the RESET_STREAM is never retransmitted (§8.3 says it is), so
// the receiver's stream stays open forever: its reader blocks, its
// stream-count credit and the connection credit of the unsent bytes leak.
func TestReview_LostResetStreamNeverRetransmitted(t *testing.T) {
	s := reviewSim(t, 15, link{delay: 10 * time.Millisecond}, Config{})
	cli, srv := s.conn[0], s.conn[1]
	id, err := cli.OpenStream(true, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.StreamWrite(id, make([]byte, 4000)); err != nil {
		t.Fatal(err)
	}
	s.transmit() // the data leaves
	cli.StreamReset(id, 42)
	s.link.loss = 1
	dropped := s.dropped
	s.transmit() // the packet with RESET_STREAM is lost
	s.link.loss = 0
	if s.dropped == dropped {
		t.Fatal("no packet carried the reset")
	}
	runFor(s, 5*time.Second)
	sid, ok := srv.AcceptStream(true)
	if !ok || sid != id {
		t.Fatalf("server did not see stream %d", id)
	}
	buf := make([]byte, 8192)
	var rerr error
	for i := 0; i < 10; i++ {
		_, fin, err := srv.StreamRead(sid, buf)
		if err != nil || fin {
			rerr = err
			break
		}
	}
	var se *StreamError
	if !errors.As(rerr, &se) || se.Code != 42 {
		t.Fatalf("receiver never learnt of the reset 5 s later (read err %v); sender forgot the stream: %v",
			rerr, cli.streams[id] == nil)
	}
}

// A FIN whose final size is below data already read by the application is
// accepted: the check "highest received > end" looks only at unread ranges
// (got is trimmed on read). The stream then never reaches its end nor
// errors. The same rule for RESET_STREAM includes readOff; FIN must too
// (§7.2: a different final size is a PROTOCOL_VIOLATION).
func TestReview_FinBelowDeliveredDataAccepted(t *testing.T) {
	s := reviewSim(t, 16, link{delay: time.Millisecond}, Config{})
	srv := s.conn[1]
	sid := uint64(2) // client uni stream 0
	s.inject(s.addr[0], append(wire.AppendStreamHeader(nil, sid, 0, 100, false), make([]byte, 100)...))
	buf := make([]byte, 200)
	if n, _, err := srv.StreamRead(sid, buf); n != 100 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
	s.inject(s.addr[0], wire.AppendStreamHeader(nil, sid, 50, 0, true)) // FIN at 50 < 100 already read
	if srv.Err() == nil {
		st := srv.streams[sid]
		t.Fatalf("FIN at offset 50 after 100 bytes were delivered was accepted (final size %d, read offset %d): stream can never end",
			st.finalSize, st.readOff)
	}
}

// stopPump runs a client that sends nMsg unidirectional messages of size
// bytes (at most 8 open at once) against a server that accepts each one and
// calls StreamStopReading on it when stopNow says so, never reading stream
// data. keepReading makes the server also call StreamRead on an idle stream
// of its own each round, the only place MAX_DATA is re-evaluated today.
// It returns how many messages the client finished (sent or reset) before
// limit of virtual time passed.
func stopPump(t *testing.T, s *sim, nMsg, size int, limit time.Duration, keepReading bool, stopNow func(st *stream) bool) int {
	t.Helper()
	cli, srv := s.conn[0], s.conn[1]
	var idle uint64
	if keepReading {
		var err error
		if idle, err = srv.OpenStream(false, PriorityNormal); err != nil {
			t.Fatal(err)
		}
	}
	data := make([]byte, size)
	type msg struct {
		id  uint64
		off int
	}
	var open []*msg
	started, done := 0, 0
	pending := map[uint64]bool{}
	buf := make([]byte, 16)
	end := s.now.Add(limit)
	for done < nMsg && s.now.Before(end) {
		for len(open) < 8 && started < nMsg && cli.CanOpenStream(true) {
			id, err := cli.OpenStream(true, PriorityNormal)
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, &msg{id: id})
			started++
		}
		kept := open[:0]
		for _, m := range open {
			if m.off < size {
				n, err := cli.StreamWrite(m.id, data[m.off:])
				if err == nil {
					m.off += n
					if m.off == size {
						cli.StreamCloseWrite(m.id)
					}
				} else {
					m.off = size // stopped by the peer
				}
			}
			if m.off == size && cli.StreamSendDone(m.id) {
				done++
				continue
			}
			kept = append(kept, m)
		}
		open = kept
		for {
			id, ok := srv.AcceptStream(true)
			if !ok {
				break
			}
			pending[id] = true
		}
		for id := range pending {
			st := srv.streams[id]
			if st == nil {
				delete(pending, id)
				continue
			}
			if stopNow(st) {
				srv.StreamStopReading(id, 1)
				delete(pending, id)
			}
		}
		if keepReading {
			if _, _, err := srv.StreamRead(idle, buf); err != nil {
				t.Fatal(err)
			}
		}
		s.transmit()
		if !s.step() {
			break
		}
	}
	for _, c := range s.conn {
		if err := c.Err(); err != nil {
			t.Fatalf("connection failed: %v", err)
		}
	}
	return done
}

// A receiver that refuses streams (StreamStopReading, or sudp.Stream.Close on
// an unread message) releases their bytes into connRead but never
// re-advertises MAX_DATA: that happens only inside StreamRead. Here every
// message has fully arrived (FIN known) before it is refused, so no byte is
// lost to the accounting; still, after ConnWindow bytes the sender is
// blocked forever.
func TestReview_StopReadingNeverReturnsConnCredit(t *testing.T) {
	cfg := Config{ConnWindow: InitialConnWindow, StreamWindow: InitialStreamWindow}
	s := reviewSim(t, 21, link{delay: 5 * time.Millisecond}, cfg)
	const nMsg, size = 48, 64 << 10 // 3 MiB through a 1 MiB window
	done := stopPump(t, s, nMsg, size, 30*time.Second, false, func(st *stream) bool { return st.rs == recvFinKnown })
	if done != nMsg {
		t.Fatalf("only %d of %d refused messages completed in 30 s: sender blocked on MAX_DATA (sent %d, peer limit %d; receiver read %d, advertised %d)",
			done, nMsg, s.conn[0].connSent, s.conn[0].connMaxSend, s.conn[1].connRead, s.conn[1].connMaxRecv)
	}
}

// A message refused while its data is in flight: the STOP_SENDING is
// acknowledged in the same packet that carries the peer's RESET_STREAM, the
// ACK frame comes first, maybeFree forgets the stream, and the RESET_STREAM
// is then ignored as "for a forgotten stream". The bytes between what the
// receiver saw and the final size were counted by the sender (connSent) but
// never by the receiver (connRecv/connRead): connection credit leaks on
// every such stream until the connection deadlocks. (Listed in §15 as a
// known limitation, but it is a liveness bug for long-lived connections:
// sudp.Conn.ReceiveMessage refuses oversized messages exactly this way.)
func TestReview_StopSendingLeaksConnCredit(t *testing.T) {
	cfg := Config{ConnWindow: InitialConnWindow, StreamWindow: InitialStreamWindow}
	s := reviewSim(t, 22, link{delay: 25 * time.Millisecond}, cfg)
	const nMsg, size = 64, 256 << 10
	done := stopPump(t, s, nMsg, size, 30*time.Second, true, func(st *stream) bool {
		hi, _ := st.highestReceived()
		return hi >= 16<<10
	})
	runFor(s, time.Second)
	sent, recvd := s.conn[0].connSent, s.conn[1].connRecv
	if done != nMsg || sent != recvd {
		t.Fatalf("%d of %d refused messages completed; sender counted %d bytes against MAX_DATA, receiver %d: %d bytes of credit leaked",
			done, nMsg, sent, recvd, sent-recvd)
	}
}

// churn opens nStreams streams from the client, one after another with up
// to 4 in flight, each ending in one of several ways, over a lossy link, and
// returns how many the client saw through to the end. The server reads each
// to FIN (or the reset), answers bidirectional ones, and refuses some.
func churn(t *testing.T, s *sim, nStreams int, limit time.Duration) int {
	t.Helper()
	cli, srv := s.conn[0], s.conn[1]
	type cs struct {
		id     uint64
		kind   int
		wrote  bool
		gotFin bool
	}
	var open []*cs
	started, done := 0, 0
	srvOpen := map[uint64]int{} // server stream -> bytes read
	buf := make([]byte, 4096)
	req := make([]byte, 3000)
	end := s.now.Add(limit)
	for (done < nStreams || len(srvOpen) > 0) && s.now.Before(end) {
		for len(open) < 4 && started < nStreams {
			kind := started % 4
			uni := kind != 3
			if !cli.CanOpenStream(uni) {
				break
			}
			id, err := cli.OpenStream(uni, PriorityNormal)
			if err != nil {
				t.Fatal(err)
			}
			open = append(open, &cs{id: id, kind: kind})
			started++
		}
		kept := open[:0]
		for _, m := range open {
			if !m.wrote {
				if n, err := cli.StreamWrite(m.id, req); err != nil || n != len(req) {
					t.Fatalf("write %d: %d %v", m.id, n, err)
				}
				m.wrote = true
				if m.kind != 1 {
					cli.StreamCloseWrite(m.id)
				}
			}
			if st := cli.streams[m.id]; m.kind == 1 && st != nil && st.ss == sendOpen && st.sent == uint64(len(req)) {
				cli.StreamReset(m.id, 9) // sender abandons after sending
			}
			finished := cli.StreamSendDone(m.id)
			if m.kind == 3 && !m.gotFin {
				for {
					n, fin, err := cli.StreamRead(m.id, buf)
					if err != nil {
						t.Fatalf("client read %d: %v", m.id, err)
					}
					if fin {
						m.gotFin = true
					}
					if n == 0 {
						break
					}
				}
				finished = finished && m.gotFin
			}
			if finished {
				done++
				continue
			}
			kept = append(kept, m)
		}
		open = kept
		for _, uni := range []bool{true, false} {
			for {
				id, ok := srv.AcceptStream(uni)
				if !ok {
					break
				}
				srvOpen[id] = 0
			}
		}
		for id, got := range srvOpen {
			if (id>>2)%4 == 2 && isUni(id) && got > 0 {
				srv.StreamStopReading(id, 5) // receiver refuses mid-message
				delete(srvOpen, id)
				continue
			}
			for {
				n, fin, err := srv.StreamRead(id, buf)
				var se *StreamError
				if errors.As(err, &se) {
					delete(srvOpen, id)
					break
				}
				if err != nil {
					t.Fatalf("server read %d: %v", id, err)
				}
				got += n
				srvOpen[id] = got
				if fin {
					delete(srvOpen, id)
					if !isUni(id) {
						srv.StreamWrite(id, []byte("response"))
						srv.StreamCloseWrite(id)
					}
					break
				}
				if n == 0 {
					break
				}
			}
		}
		s.transmit()
		if !s.step() {
			break
		}
	}
	return done
}

// A long-lived connection opening many more streams than MaxStreams, every
// way a stream can end, under loss, duplication and reordering: stream-count
// credit must keep coming back.
func TestReview_StreamCreditChurnUnderLoss(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		l := link{delay: 10 * time.Millisecond, jitter: 3 * time.Millisecond, loss: 0.1, dup: 0.03}
		s := reviewSim(t, 30+seed, l, Config{MaxStreams: InitialMaxStreams})
		const n = 200 // 12x the stream limit
		done := churn(t, s, n, 60*time.Second)
		runFor(s, 2*time.Second)
		cli, srv := s.conn[0], s.conn[1]
		if done != n || len(srv.streams) != 0 || len(cli.streams) != 0 {
			var left []string
			for id, st := range srv.streams {
				left = append(left, fmt.Sprintf("%d(send %d recv %d stopQ %v stopAcked %v stopSent %v final %v peerReset %v seen %v)", id, st.ss, st.rs, st.stopQueued, st.stopAcked, st.stopSent, st.finalCounted, st.peerReset, st.resetSeen))
			}
			t.Fatalf("seed %d: %d of %d streams finished in 60 s; client may open %v, opened %v; client holds %d streams, server %d: %v",
				seed, done, n, cli.peerMaxStreams, cli.nextSeq, len(cli.streams), len(srv.streams), left)
		}
	}
}

// The receiver stops reading a stream while the sender (independently, or
// in answer to an earlier STOP_SENDING) resets it. When RESET_STREAM arrives
// before the acknowledgement of STOP_SENDING, the handler sets peerReset,
// and maybeFree then keeps the stream "until the application saw the reset"
// -- but the application gave the stream up with StreamStopReading and will
// never read it again. The stream is never forgotten and the peer never gets
// its stream-count credit back: after MaxStreams such streams the
// connection cannot open another one.
func TestReview_StoppedStreamLeaksAfterPeerReset(t *testing.T) {
	s := reviewSim(t, 17, link{delay: 10 * time.Millisecond}, Config{})
	cli, srv := s.conn[0], s.conn[1]
	id, err := cli.OpenStream(true, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.StreamWrite(id, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10000 && srv.StreamReadable(id) == 0; i++ {
		s.step()
	}
	if sid, ok := srv.AcceptStream(true); !ok || sid != id {
		t.Fatal("stream not accepted")
	}
	limit := srv.ourMaxStreams[1]
	// Both sides give up on the stream at the same moment.
	srv.StreamStopReading(id, 1)
	cli.StreamReset(id, 2)
	runFor(s, 3*time.Second)
	if st := srv.streams[id]; st != nil {
		t.Fatalf("stream stopped by the receiver and reset by the sender is still held 3 s later (peerReset %v resetSeen %v stopAcked %v); MAX_STREAMS stuck at %d",
			st.peerReset, st.resetSeen, st.stopAcked, srv.ourMaxStreams[1])
	}
	if srv.ourMaxStreams[1] != limit+1 {
		t.Fatalf("stream credit not returned: limit %d, was %d", srv.ourMaxStreams[1], limit)
	}
}

// appendData drops a stream from the scheduler queue when it is blocked by
// flow control, and the comment promises "a MAX_*_DATA frame re-schedules
// it"; MAX_STREAM_DATA does, MAX_DATA does not. A stream blocked only by
// the connection window whose application has nothing more to write (or a
// full send buffer: StreamWrite then returns 0 without scheduling) is never
// sent again although the receiver keeps granting credit. With the default
// config it takes only a few concurrent bulk streams and a receiver that
// pauses (a migration target writing to a slow disk).
func TestReview_MaxDataDoesNotRescheduleBlockedStream(t *testing.T) {
	cases := []struct {
		name     string
		cfg      Config
		streams  int
		size     int
		pauseFor time.Duration
	}{
		{"one_stream_small_conn_window", Config{StreamWindow: 16 << 20, ConnWindow: InitialConnWindow}, 1, 4 << 20, 0},
		{"defaults_four_streams_reader_pauses", Config{}, 4, 7 << 20, 2 * time.Second},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := reviewSim(t, 18+uint64(i), link{delay: 5 * time.Millisecond}, tc.cfg)
			cli, srv := s.conn[0], s.conn[1]
			var ids []uint64
			for k := 0; k < tc.streams; k++ {
				id, err := cli.OpenStream(true, PriorityBulk)
				if err != nil {
					t.Fatal(err)
				}
				if n, err := cli.StreamWrite(id, make([]byte, tc.size)); n != tc.size || err != nil {
					t.Fatalf("write: %d %v", n, err)
				}
				cli.StreamCloseWrite(id)
				ids = append(ids, id)
			}
			buf := make([]byte, 256<<10)
			fins, read := map[uint64]bool{}, 0
			start := s.now
			for len(fins) < tc.streams && s.now.Before(start.Add(30*time.Second)) {
				srv.AcceptStream(true)
				for _, id := range ids {
					if fins[id] || srv.streams[id] == nil || s.now.Sub(start) < tc.pauseFor {
						continue
					}
					for {
						n, fin, err := srv.StreamRead(id, buf)
						if err != nil {
							t.Fatal(err)
						}
						read += n
						if fin {
							fins[id] = true
						}
						if n == 0 || fin {
							break
						}
					}
				}
				if !s.step() {
					break
				}
			}
			if len(fins) < tc.streams {
				queued := 0
				for _, id := range ids {
					if st := cli.streams[id]; st != nil && st.queued {
						queued++
					}
				}
				t.Fatalf("%d of %d streams done, %d of %d bytes read in 30 s: stalled with credit to spare (connSent %d < connMaxSend %d, %d streams queued)",
					len(fins), tc.streams, read, tc.streams*tc.size, cli.connSent, cli.connMaxSend, queued)
			}
		})
	}
}

// Key updates in both directions every 40 packets while packets are
// reordered by more than the RTT, lost and duplicated: every byte must
// arrive once, in order, and both sides must keep following the other's
// generations. (Checked: holds.)
func TestReview_KeyUpdateBothWaysHeavyReorder(t *testing.T) {
	l := link{delay: 10 * time.Millisecond, jitter: 30 * time.Millisecond, loss: 0.1, dup: 0.05}
	s := reviewSim(t, 40, l, Config{KeyUpdatePackets: 40})
	const size = 1 << 20
	var ids [2]uint64
	for side := 0; side < 2; side++ {
		id, err := s.conn[side].OpenStream(true, PriorityBulk)
		if err != nil {
			t.Fatal(err)
		}
		ids[side] = id
	}
	off, read := [2]int{}, [2]int{}
	accepted := [2]bool{}
	buf := make([]byte, 64<<10)
	pat := func(side, i int) byte { return byte(i*7 + side*13 + i>>11) }
	data := [2][]byte{make([]byte, size), make([]byte, size)}
	for side := range data {
		for i := range data[side] {
			data[side][i] = pat(side, i)
		}
	}
	end := s.now.Add(2 * time.Minute)
	for (read[0] < size || read[1] < size) && s.now.Before(end) {
		for side := 0; side < 2; side++ {
			c, peer := s.conn[side], s.conn[1-side]
			if off[side] < size {
				n, err := c.StreamWrite(ids[side], data[side][off[side]:])
				if err != nil {
					t.Fatal(err)
				}
				off[side] += n
				if off[side] == size {
					c.StreamCloseWrite(ids[side])
				}
			}
			if !accepted[side] {
				_, accepted[side] = peer.AcceptStream(true)
			}
			if accepted[side] {
				n, _, err := peer.StreamRead(ids[side], buf)
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < n; i++ {
					if buf[i] != pat(side, read[side]+i) {
						t.Fatalf("side %d byte %d corrupted", side, read[side]+i)
					}
				}
				read[side] += n
			}
		}
		if !s.step() {
			break
		}
	}
	if read[0] != size || read[1] != size {
		t.Fatalf("read %d and %d of %d bytes", read[0], read[1], size)
	}
	for side, c := range s.conn {
		if err := c.Err(); err != nil {
			t.Fatalf("side %d: %v", side, err)
		}
		if ku := c.Stats().KeyUpdates; ku < 20 {
			t.Fatalf("side %d made/followed only %d key updates", side, ku)
		}
	}
}

// Tens of thousands of small reliable messages on one connection over a
// lossy, reordering link, with the smallest windows and stream limits:
// neither connection credit nor stream-count credit may drift, and every
// message arrives exactly once. (Checked: holds.)
func TestReview_ManySmallMessagesLongLived(t *testing.T) {
	l := link{delay: 5 * time.Millisecond, jitter: 2 * time.Millisecond, loss: 0.05, dup: 0.02}
	s := reviewSim(t, 41, l, Config{ConnWindow: InitialConnWindow, StreamWindow: InitialStreamWindow, MaxStreams: InitialMaxStreams})
	cli, srv := s.conn[0], s.conn[1]
	const nMsg = 20000
	msg := make([]byte, 200)
	sent, got := 0, 0
	seen := map[uint64]bool{}
	open := map[uint64]int{}
	buf := make([]byte, 512)
	end := s.now.Add(10 * time.Minute)
	for got < nMsg && s.now.Before(end) {
		for sent < nMsg && cli.CanOpenStream(true) {
			id, err := cli.OpenStream(true, PriorityNormal)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := cli.StreamWrite(id, msg); n != len(msg) || err != nil {
				t.Fatalf("write: %d %v", n, err)
			}
			cli.StreamCloseWrite(id)
			sent++
		}
		for {
			id, ok := srv.AcceptStream(true)
			if !ok {
				break
			}
			if seen[id] {
				t.Fatalf("stream %d accepted twice", id)
			}
			seen[id] = true
			open[id] = 0
		}
		for id, n := range open {
			for {
				k, fin, err := srv.StreamRead(id, buf)
				if err != nil {
					t.Fatal(err)
				}
				n += k
				if fin {
					if n != len(msg) {
						t.Fatalf("stream %d: %d bytes", id, n)
					}
					delete(open, id)
					got++
					break
				}
				open[id] = n
				if k == 0 {
					break
				}
			}
		}
		if !s.step() {
			break
		}
	}
	runFor(s, time.Second)
	if got != nMsg {
		t.Fatalf("%d of %d messages delivered; client connSent %d / max %d, streams %v / %v",
			got, nMsg, cli.connSent, cli.connMaxSend, cli.nextSeq, cli.peerMaxStreams)
	}
	if cli.connSent != srv.connRecv || srv.connRecv != srv.connRead {
		t.Fatalf("credit drift: sender counted %d, receiver received %d, read %d", cli.connSent, srv.connRecv, srv.connRead)
	}
	if len(cli.streams) != 0 || len(srv.streams) != 0 {
		t.Fatalf("streams left: client %d, server %d", len(cli.streams), len(srv.streams))
	}
}

// The peer stops a stream we are writing. Once our RESET_STREAM is
// acknowledged the stream is forgotten, and from then on StreamWrite
// reports ErrUnknownStream instead of ErrStreamStopped: a writer that was
// not blocked at the right moment never learns the peer refused the data
// (this is what makes TestStopSendingReachesSender flaky: "sender's write
// ended with sudp: unknown stream").
func TestReview_WriteAfterStopReportsUnknownStream(t *testing.T) {
	s := reviewSim(t, 23, link{delay: 5 * time.Millisecond}, Config{})
	cli, srv := s.conn[0], s.conn[1]
	id, err := cli.OpenStream(true, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.StreamWrite(id, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10000 && srv.StreamReadable(id) == 0; i++ {
		s.step()
	}
	srv.StreamStopReading(id, 1)
	runFor(s, time.Second)
	if _, err := cli.StreamWrite(id, []byte("more")); !errors.Is(err, ErrStreamStopped) {
		t.Fatalf("write to a stream the peer stopped: %v, want ErrStreamStopped", err)
	}
}

// The client adopts the source address of the handshake response as the
// server's address, on a path it marks validated. Anyone who sees the
// response and sends a copy from elsewhere that arrives first (a
// man-on-the-side; no keys needed, the genuine copy is then discarded as a
// late duplicate) redirects the client: its key-confirming packet and all
// later traffic go to the attacker's address, unlimited by the
// anti-amplification rule. The server never sees confirmation and the
// connection dies at the idle timeout. The response should not move a
// validated path (or should start an unvalidated migration with a
// challenge).
func TestReview_ForwardedResponseRedirectsClient(t *testing.T) {
	s := newSim(t, 24, link{delay: 10 * time.Millisecond}, Config{})
	attacker := netip.MustParseAddrPort("192.0.2.66:4444")
	var resp []byte
	for i := 0; i < 1000 && resp == nil; i++ {
		s.step()
		for _, p := range s.q {
			if p.to == 0 && len(p.data) > 0 && p.data[0] == wire.TypeResponse {
				resp = append([]byte(nil), p.data...)
			}
		}
	}
	if resp == nil {
		t.Fatal("no handshake response seen")
	}
	cli := s.conn[0]
	cli.HandleDatagram(s.now, attacker, resp) // the racing copy
	if !cli.Established() {
		t.Fatal("copy of the response was not accepted (then there is no issue)")
	}
	pkts, bytes := 0, 0
	for i := 0; i < 100; i++ {
		n, to, ok := cli.PollTransmit(s.now, s.buf)
		if !ok {
			break
		}
		if to == attacker {
			pkts++
			bytes += n
		}
	}
	if cli.RemoteAddr() != s.addr[1] || pkts > 0 {
		t.Fatalf("a copy of the response sent from %v moved the client's validated path there: RemoteAddr %v, %d packets / %d bytes sent to it",
			attacker, cli.RemoteAddr(), pkts, bytes)
	}
}
