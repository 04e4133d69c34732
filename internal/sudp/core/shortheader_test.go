package core

import (
	"errors"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// sealShortFromClient seals payload as the client's next packet with a
// short header.
func (s *sim) sealShortFromClient(payload []byte) []byte {
	c := s.conn[0]
	n := wire.ShortPNLen(c.nextPN, c.rec.largestAcked, c.rec.hasAcked)
	b := wire.AppendShortHeader(make([]byte, 0, len(payload)+64), c.sendKey.phase(), c.remoteCID, c.nextPN, n)
	b = append(b, payload...)
	b = c.sendKey.seal(b, 5+n, c.nextPN)
	c.nextPN++
	return b
}

// Every data packet of a connection takes the short header, over a
// lossy, reordering path (the receiver recovers each number from the
// largest it accepted), and the stream arrives intact (its full packets
// end in STREAM frames without a length); the long header, still
// accepted, costs 9 to 12 bytes more per packet.
func TestShortHeadersOnTheWire(t *testing.T) {
	const n = 4 << 20
	l := link{delay: 20 * time.Millisecond, jitter: 5 * time.Millisecond, loss: 0.02, rate: 50e6, queue: 200_000}
	perPacket := map[bool]float64{}
	for _, long := range []bool{false, true} {
		s := handshakeSim(t, 11, l, Config{LongHeaders: long})
		var short, all int
		s.onSend = func(side int, b []byte) {
			if wire.IsData(b[0]) {
				all++
				if wire.IsShort(b[0]) {
					short++
				}
			}
		}
		if read := streamTransfer(t, s, n, time.Minute, nil); read != n { // checks every byte
			t.Fatalf("long headers %v: read %d of %d", long, read, n)
		}
		if want := map[bool]int{false: all, true: 0}[long]; short != want || all == 0 {
			t.Fatalf("long headers %v: %d of %d data packets short, want %d", long, short, all, want)
		}
		st := s.conn[0].Stats()
		if st.PacketsSent == 0 || st.RetransmittedBytes == 0 {
			t.Fatalf("long headers %v: nothing lost on a lossy path: %+v", long, st)
		}
		perPacket[long] = float64(st.StreamBytesSent+st.RetransmittedBytes) / float64(st.PacketsSent)
		if srv := s.conn[1].Stats(); srv.DroppedAuth != 0 || srv.DroppedMalformed != 0 {
			t.Fatalf("long headers %v: the receiver dropped %d packets as forged, %d as malformed", long, srv.DroppedAuth, srv.DroppedMalformed)
		}
	}
	// Full datagrams either way: the short header leaves the room to data.
	t.Logf("stream bytes per packet: short headers %.1f, long %.1f", perPacket[false], perPacket[true])
	if gain := perPacket[false] - perPacket[true]; gain < 9 {
		t.Fatalf("the short header carries %.1f more stream bytes per packet, want at least 9", gain)
	}
}

// A short packet names only the low half of a connection id, and a reset
// token derives from all of it: an endpoint that lost the connection (a
// restart) does not answer short packets — else anyone could collect the
// tokens of ids not yet used. The peer's keepalive takes the long header
// and is answered: the connection ends at its first keepalive, not at its
// idle timeout.
func TestStatelessResetOfAShortPacket(t *testing.T) {
	s, restarted := resetSim(t, 44)
	cli := s.conn[0]
	pkt := s.sealShortFromClient(append(wire.AppendPing(nil), make([]byte, 64)...))
	if !wire.IsShort(pkt[0]) {
		t.Fatalf("type 0x%02x", pkt[0])
	}
	if c, _ := restarted.Route(pkt); c != nil {
		t.Fatal("the restarted endpoint knows the connection")
	}
	if reset := restarted.StatelessReset(s.now, s.addr[0], pkt); reset != nil {
		t.Fatal("a short packet was answered with a reset")
	}

	// Idle until the keepalive: it is long, and answered.
	buf := make([]byte, 2048)
	var keepalive []byte
	for end := s.now.Add(cli.cfg.KeepAlive + time.Second); s.now.Before(end) && keepalive == nil; s.now = s.now.Add(100 * time.Millisecond) {
		cli.HandleTimeout(s.now)
		for {
			n, _, ok := cli.PollTransmit(s.now, buf)
			if !ok {
				break
			}
			if wire.IsData(buf[0]) {
				keepalive = append([]byte(nil), buf[:n]...)
			}
		}
	}
	if keepalive == nil || keepalive[0] != wire.TypeData {
		t.Fatalf("keepalive %x: want a long-header packet", keepalive)
	}
	reset := restarted.StatelessReset(s.now, s.addr[0], keepalive)
	if reset == nil || len(reset) >= len(keepalive) {
		t.Fatalf("the keepalive (%d bytes) got no reset, or one of %d bytes", len(keepalive), len(reset))
	}
	c, _ := s.ep[0].Route(reset)
	if c != cli {
		t.Fatal("the reset did not find the client's connection")
	}
	c.HandleDatagram(s.now, s.addr[1], reset)
	if !errors.Is(cli.Err(), ErrStatelessReset) {
		t.Fatalf("after the reset: %v", cli.Err())
	}
}

// Connection ids are unique in their low 32 bits (what a short packet
// names); the high half is random too.
func TestConnectionIDsShortUnique(t *testing.T) {
	s := handshakeSim(t, 45, link{delay: time.Millisecond}, Config{})
	ep := s.ep[1]
	seen := map[uint32]bool{}
	highs := map[uint32]bool{}
	for range 2000 {
		cid, err := ep.newCID()
		if err != nil {
			t.Fatal(err)
		}
		lo := uint32(cid)
		if lo == 0 || seen[lo] || ep.conns[lo] != nil {
			t.Fatalf("cid %#x: low half zero, repeated or in use", cid)
		}
		seen[lo] = true
		highs[uint32(cid>>32)] = true
		ep.conns[lo] = s.conn[1] // in use from now on
	}
	if len(highs) < 1990 {
		t.Fatalf("%d distinct high halves in 2000 ids", len(highs))
	}
}
