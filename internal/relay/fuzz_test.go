package relay

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// FuzzCore drives the core with a program of datagrams from four sources
// (A, B, a second address of A, a stranger) on either side, some of them
// binds under the right or the wrong key with fuzzed counters, and checks
// after every step: a datagram starting with Magic is never forwarded, a
// forward goes from a side's bound address to the other side's, out of the
// other port; a reply acknowledges exactly the accepted bind; and every
// datagram is counted once, forwarded or dropped under a reason.
func FuzzCore(f *testing.F) {
	f.Add([]byte{0x00, 0x01, 0x10, 0x02, 0x21, 0x00})
	f.Add([]byte{0x80, 0x01, 0x81, 0x02, 0x01, 0x05, 0x11, 0x05, 0xc2, 0x09, 0x41, 0x01})
	f.Add([]byte{0x80, 0x00, 0x91, 0x00, 0x01, 0x20, 0x11, 0x30, 0xb0, 0x00, 0x31, 0x00, 0x21, 0x00})
	f.Fuzz(func(t *testing.T, prog []byte) {
		c := NewCore(t0, Limits{AllocPackets: 50, Burst: 100 * time.Millisecond, IdleTimeout: 5 * time.Second})
		if err := c.Allocate(t0, testID, &keyA, &keyB); err != nil {
			t.Fatal(err)
		}
		froms := [4]netip.AddrPort{addrA, addrB, addrA2, addrX}
		keys := [3][KeySize]byte{keyA, keyB, keyX}
		now := t0
		handled := uint64(0)
		var counter uint64
		for len(prog) >= 2 {
			op, arg := prog[0], prog[1]
			prog = prog[2:]
			side := Side(op & 1)
			from := froms[(op>>4)&3]
			now = now.Add(time.Duration(arg&0x0f) * 100 * time.Millisecond)
			if op&0x40 != 0 {
				if got := c.Expire(now); len(got) > 0 {
					return // the allocation is gone; nothing more to check
				}
			}
			var d []byte
			switch {
			case op&0x80 != 0: // a bind
				counter = counter + uint64(arg>>4) - 4 // may go back
				d = bindMsg(testID, counter, keys[int(op>>2&3)%3])
			case op&0x08 != 0:
				d = append([]byte{Magic}, make([]byte, int(arg))...)
			default:
				d = make([]byte, int(arg)+1)
				d[0] = 0x04
			}
			before := [2]netip.AddrPort{c.Bound(testID, SideA), c.Bound(testID, SideB)}
			a := c.Handle(now, testID, side, from, d)
			handled++
			switch a.Kind {
			case Forward:
				if d[0] == Magic {
					t.Fatalf("forwarded a relay datagram %x", d)
				}
				if from != before[side] || a.To != before[side.Other()] || a.Out != side.Other() {
					t.Fatalf("forward from %v on %v to %v out of %v; bound %v", from, side, a.To, a.Out, before)
				}
			case Reply:
				m, err := ParseMsg(a.Ack)
				if err != nil || m.Kind != KindAck || m.Counter != binary.BigEndian.Uint64(d[10:18]) || a.To != from || a.Out != side {
					t.Fatalf("bad reply %+v to %x", a, d)
				}
				if c.Bound(testID, side) != from || c.Bound(testID, side.Other()) != before[side.Other()] {
					t.Fatal("bind did not bind its side only")
				}
			case Drop:
				if a.Reason == ReasonNone || a.Reason >= numReasons {
					t.Fatalf("drop without a reason: %+v", a)
				}
				if c.Bound(testID, SideA) != before[0] || c.Bound(testID, SideB) != before[1] {
					t.Fatal("a dropped datagram moved a binding")
				}
			}
			s := c.Stats()
			total := s.ForwardedPackets + s.BindsAccepted
			for _, n := range s.Dropped {
				total += n
			}
			if total != handled {
				t.Fatalf("counted %d of %d datagrams: %+v", total, handled, s)
			}
		}
	})
}
