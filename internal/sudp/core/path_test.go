package core

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// An attacker that copies a client packet and races it from its own
// address first does not move the server: the copy makes the address a
// candidate, challenged within 3x what it sent, while ACKs and data keep
// going to the validated address; the client's next packet from there ends
// the candidate.
func TestPathRacingCopyDoesNotMove(t *testing.T) {
	s := reviewSim(t, 31, link{delay: 10 * time.Millisecond}, Config{})
	srv := s.conn[1]
	home := srv.RemoteAddr()
	attacker := netip.MustParseAddrPort("203.0.113.66:4444")

	inflight := srv.rec.bytesInFlight
	pkt := s.sealFromClient(wire.AppendPing(nil))
	cp := append([]byte(nil), pkt...)
	srv.HandleDatagram(s.now, attacker, cp) // the copy wins the race
	srv.HandleDatagram(s.now, home, pkt)    // the original: a replay now
	if srv.RemoteAddr() != home {
		t.Fatalf("a raced copy moved the path to %v", srv.RemoteAddr())
	}
	pkts, bytes := s.drainServer(s.now.Add(maxAckDelay)) // the ACK is due
	if pkts[attacker] != 1 || bytes[attacker] > 3*len(pkt) {
		t.Fatalf("sent %d packets / %d bytes to the racing address (want one challenge within %d bytes)", pkts[attacker], bytes[attacker], 3*len(pkt))
	}
	if pkts[home] == 0 {
		t.Fatal("the ACK for the client's packet did not go to the validated path")
	}
	if srv.rec.bytesInFlight != inflight {
		t.Fatalf("the challenge to the racing address is in flight (%d bytes, %d before): its loss would shrink the window", srv.rec.bytesInFlight, inflight)
	}
	// The client's next packet, from its real address, ends the candidate.
	s.inject(home, wire.AppendPing(nil))
	if st := srv.Stats(); len(srv.pathProbes) != 0 || st.PathProbes != 1 || st.PathProbesFailed != 1 || st.PathChanges != 0 {
		t.Fatalf("after the next genuine packet: %d candidates, stats probes %d failed %d changes %d", len(srv.pathProbes), st.PathProbes, st.PathProbesFailed, st.PathChanges)
	}
	runFor(s, time.Second)
	s.healthy(t)
}

// A genuine NAT rebinding: the new address is challenged, the client
// answers from it, and the server moves there.
func TestPathRebindingValidated(t *testing.T) {
	s := reviewSim(t, 32, link{delay: 10 * time.Millisecond}, Config{})
	cli, srv := s.conn[0], s.conn[1]
	srvAddr := s.addr[1]
	moved := netip.MustParseAddrPort("198.18.0.1:5999")
	s.inject(moved, wire.AppendPing(nil))
	if srv.RemoteAddr() == moved {
		t.Fatal("moved before the new address was validated")
	}
	var challenge []byte
	for {
		n, to, ok := srv.PollTransmit(s.now, s.buf)
		if !ok {
			break
		}
		if to == moved {
			challenge = append([]byte(nil), s.buf[:n]...)
		}
	}
	if challenge == nil {
		t.Fatal("no PATH_CHALLENGE to the new address")
	}
	cli.HandleDatagram(s.now, srvAddr, challenge)
	answered := false
	for {
		n, to, ok := cli.PollTransmit(s.now, s.buf)
		if !ok {
			break
		}
		if to != srvAddr {
			t.Fatalf("client sent to %v", to)
		}
		srv.HandleDatagram(s.now, moved, append([]byte(nil), s.buf[:n]...))
		answered = true
	}
	if !answered || srv.RemoteAddr() != moved || !srv.path.validated {
		t.Fatalf("after the PATH_RESPONSE: path %v validated %v", srv.RemoteAddr(), srv.path.validated)
	}
	if st := srv.Stats(); st.PathChanges != 1 {
		t.Fatalf("path changes %d", st.PathChanges)
	}
}

// A candidate that never answers is abandoned after 3 PTO; the connection
// was never off its validated path.
func TestPathCandidateExpires(t *testing.T) {
	s := reviewSim(t, 33, link{delay: 10 * time.Millisecond}, Config{})
	srv := s.conn[1]
	home := srv.RemoteAddr()
	s.inject(netip.MustParseAddrPort("203.0.113.66:4444"), wire.AppendPing(nil))
	s.drainServer(s.now)
	if len(srv.pathProbes) != 1 {
		t.Fatalf("%d candidates", len(srv.pathProbes))
	}
	dl := srv.pathProbeDeadline()
	if next := srv.NextTimeout(); next.After(dl) {
		t.Fatalf("timer at %v, after the candidate's deadline %v", next, dl)
	}
	srv.HandleTimeout(dl)
	if len(srv.pathProbes) != 0 || srv.RemoteAddr() != home || srv.Stats().PathProbesFailed != 1 {
		t.Fatalf("after the deadline: %d candidates, path %v", len(srv.pathProbes), srv.RemoteAddr())
	}
}

// deliverAll polls from until it has nothing to send and hands every
// packet addressed to `to` to dst as if from `as`; it returns how many
// went to each address.
func deliverAll(s *sim, from, dst *Conn, to, as netip.AddrPort) map[netip.AddrPort]int {
	sent := map[netip.AddrPort]int{}
	for range 1000 {
		n, dest, ok := from.PollTransmit(s.now, s.buf)
		if !ok {
			break
		}
		sent[dest]++
		if dest == to {
			dst.HandleDatagram(s.now, as, append([]byte(nil), s.buf[:n]...))
		}
	}
	return sent
}

// A connection running through a relay moves to a direct path when one
// opens: the client probes the server's direct address, the server
// validates the client's new address as after a rebinding, and both end
// on the direct path; packets still arriving through the relay meanwhile
// do not abandon the move.
func TestProbePathMovesBothSides(t *testing.T) {
	s := reviewSim(t, 34, link{delay: 10 * time.Millisecond}, Config{})
	cli, srv := s.conn[0], s.conn[1]
	relayed := srv.RemoteAddr()
	srvDirect := netip.MustParseAddrPort("198.18.9.1:7946")
	cliDirect := netip.MustParseAddrPort("198.18.9.2:4000")
	if err := cli.ProbePath(s.now, srvDirect); err != nil {
		t.Fatal(err)
	}
	if cli.RemoteAddr() == srvDirect {
		t.Fatal("moved before the answer")
	}
	// The challenge goes to the direct address (no budget: we chose it).
	if n := deliverAll(s, cli, srv, srvDirect, cliDirect)[srvDirect]; n != 1 {
		t.Fatalf("%d packets to the probed address", n)
	}
	// A newer packet through the relay: the server drops its candidate
	// (a racing copy, for all it knows) — the client's probe stays.
	s.inject(relayed, wire.AppendPing(nil))
	// The server answered the challenge on the client's new address.
	if n := deliverAll(s, srv, cli, cliDirect, srvDirect)[cliDirect]; n == 0 {
		t.Fatal("no answer to the client's direct address")
	}
	if cli.RemoteAddr() != srvDirect {
		t.Fatalf("client path %v after the PATH_RESPONSE", cli.RemoteAddr())
	}
	// From now on the client sends on the direct path; the server
	// validates it and moves too.
	for range 3 {
		s.now = s.now.Add(20 * time.Millisecond)
		cli.HandleTimeout(s.now)
		srv.HandleTimeout(s.now)
		// Keep something flowing on the client's side.
		if err := cli.SendDatagram([]byte("tick"), PriorityNormal); err != nil {
			t.Fatal(err)
		}
		deliverAll(s, cli, srv, srvDirect, cliDirect)
		deliverAll(s, srv, cli, cliDirect, srvDirect)
	}
	if srv.RemoteAddr() != cliDirect || !srv.path.validated {
		t.Fatalf("server path %v (validated %v), want %v", srv.RemoteAddr(), srv.path.validated, cliDirect)
	}
	if cli.Stats().PathChanges != 1 || srv.Stats().PathChanges != 1 {
		t.Fatalf("path changes: client %d, server %d", cli.Stats().PathChanges, srv.Stats().PathChanges)
	}
}

// A probed address that never answers: the challenge is resent every
// chosenRetry until chosenWindow, then abandoned; the connection never
// left its path. An answer with the wrong data, or from elsewhere, moves
// nothing.
func TestProbePathUnanswered(t *testing.T) {
	s := reviewSim(t, 35, link{delay: 10 * time.Millisecond}, Config{})
	cli := s.conn[0]
	home := cli.RemoteAddr()
	dead := netip.MustParseAddrPort("198.18.9.9:1")
	if err := cli.ProbePath(s.now, dead); err != nil {
		t.Fatal(err)
	}
	end := s.now.Add(chosenWindow + time.Second)
	challenges := 0
	for s.now.Before(end) {
		for {
			_, to, ok := cli.PollTransmit(s.now, s.buf)
			if !ok {
				break
			}
			if to == dead {
				challenges++
			}
		}
		next := cli.NextTimeout()
		if next.IsZero() || next.After(end) {
			break
		}
		if next.After(s.now) {
			s.now = next
		} else {
			s.now = s.now.Add(time.Millisecond)
		}
		cli.HandleTimeout(s.now)
	}
	want := int(chosenWindow / chosenRetry)
	if challenges < want-2 || challenges > want+2 {
		t.Fatalf("%d challenges in the window, want about %d", challenges, want)
	}
	if cli.RemoteAddr() != home || len(cli.pathProbes) != 0 {
		t.Fatalf("after the window: path %v, %d probes", cli.RemoteAddr(), len(cli.pathProbes))
	}
	// Forged answers.
	if err := cli.ProbePath(s.now, dead); err != nil {
		t.Fatal(err)
	}
	cli.onPathResponse(dead, [8]byte{1})
	cli.onPathResponse(netip.MustParseAddrPort("198.18.9.10:1"), cli.pathProbes[0].data)
	if cli.RemoteAddr() != home {
		t.Fatal("a forged PATH_RESPONSE moved the connection")
	}
}
