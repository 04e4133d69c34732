package core

import (
	"bytes"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// establishedSim returns a lossless simulation whose connection is up and
// has exchanged a message, for the fuzz targets to attack.
func establishedSim(t testing.TB) *sim {
	return handshakeSim(t, 1, link{delay: time.Millisecond}, Config{})
}

// sealFromClient protects payload as the client's next packet, as an
// authenticated but misbehaving peer could.
func (s *sim) sealFromClient(payload []byte) []byte {
	c := s.conn[0]
	b := wire.AppendHeader(make([]byte, 0, len(payload)+64), wire.Header{KeyPhase: c.sendKey.phase(), DstCID: c.remoteCID, PN: c.nextPN})
	b = append(b, payload...)
	b = c.sendKey.seal(b, wire.DataHeaderSize, c.nextPN)
	c.nextPN++
	return b
}

// healthy checks the connection can still carry a message both ways.
func (s *sim) healthy(t *testing.T) {
	for side := 0; side < 2; side++ {
		c := s.conn[side]
		if err := c.Err(); err != nil {
			return // a protocol violation closed it: an acceptable outcome
		}
		id, err := c.OpenStream(true, PriorityControl)
		if err != nil {
			t.Fatalf("open after fuzz input: %v", err)
		}
		if _, err := c.StreamWrite(id, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		c.StreamCloseWrite(id)
	}
	for i := 0; i < 2000; i++ {
		if !s.step() {
			break
		}
	}
}

// FuzzEndpointDatagram feeds arbitrary datagrams to the server's endpoint
// and connection: nothing may panic, and the connection must keep working.
func FuzzEndpointDatagram(f *testing.F) {
	s := establishedSim(f)
	good := s.sealFromClient(wire.AppendPing(nil))
	f.Add(good)
	f.Add([]byte{wire.TypeData})
	f.Add(make([]byte, 152))
	f.Add(append([]byte{wire.TypeInitiation, 1, 0, 0}, make([]byte, 148)...))
	f.Add(append([]byte{wire.TypeCookieReply, 1, 0, 0}, make([]byte, 64)...))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		s := establishedSim(t)
		ep := s.ep[1]
		data := append([]byte(nil), pkt...)
		c, initiation := ep.Route(data)
		if initiation {
			ep.HandleInitiation(s.now, s.addr[0], data)
		} else if c != nil {
			before := c.Stats().PacketsReceived
			c.HandleDatagram(s.now, s.addr[0], data)
			// The deterministic simulation recreates the same keys, so the
			// sealed seed is genuinely authentic; nothing else may pass.
			if c.Stats().PacketsReceived != before && !bytes.Equal(pkt, good) {
				t.Fatalf("unauthenticated datagram accepted: %x", pkt)
			}
		}
		s.healthy(t)
	})
}

// FuzzAuthenticatedFrames feeds arbitrary plaintext, correctly encrypted by
// the client's keys, to the server: a buggy or hostile peer that holds the
// keys must at worst get its connection closed, never crash the server.
func FuzzAuthenticatedFrames(f *testing.F) {
	f.Add(wire.AppendPing(nil))
	f.Add(wire.AppendAck(nil, 0, []wire.AckRange{{Smallest: 0, Largest: 3}}))
	f.Add(append(wire.AppendStreamHeader(nil, 2, 0, 4, true), "data"...))
	f.Add(append(wire.AppendStreamHeader(nil, 1<<40, 0, 1, false), 'x'))
	f.Add(wire.AppendStreamValue(nil, wire.FrameMaxStreamData, 0, 1<<50))
	f.Add(wire.AppendReset(nil, 2, 1, 7))
	f.Add(wire.AppendDatagram(nil, 1, 0, 2, []byte("half")))
	f.Add(wire.AppendValue(nil, wire.FrameKeyUpdate, 9))
	f.Add(wire.AppendClose(nil, 1, "bye"))
	f.Add(wire.AppendPath(nil, wire.FramePathChallenge, [8]byte{1}))
	f.Fuzz(func(t *testing.T, payload []byte) {
		s := establishedSim(t)
		pkt := s.sealFromClient(payload)
		s.conn[1].HandleDatagram(s.now, s.addr[0], pkt)
		s.healthy(t)
	})
}
