package link

import (
	"encoding/binary"
	"math/rand/v2"
)

// corruptPacket flips one random bit of pkt's transport payload and reports
// whether it did.
//
// Why the payload, and why the checksum is fixed up: a flipped bit in the IP
// or transport header, or a stale TCP/UDP/ICMP checksum, makes the receiving
// kernel discard the packet (it counts a checksum error) — indistinguishable
// from loss, which Loss already models. What loss cannot model is corruption
// that reaches the application, the case an end-to-end integrity check (SUDP's
// AEAD) exists for. So the bit is flipped past the IPv4/IPv6 + TCP/UDP/ICMP
// headers and the transport checksum is updated incrementally (RFC 1624), and
// the kernel delivers the damaged datagram to the socket.
//
// Packets it cannot handle this way are left intact and not counted: IPv4
// fragments, IPv6 with extension headers, other protocols, and packets with
// no payload (e.g. pure TCP ACKs).
func corruptPacket(pkt []byte, rng *rand.Rand) bool {
	if len(pkt) < 20 {
		return false
	}
	var off int
	var proto byte
	switch pkt[0] >> 4 {
	case 4:
		off = int(pkt[0]&0x0f) * 4
		if off < 20 || len(pkt) < off {
			return false
		}
		if binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 { // MF or offset: a fragment
			return false
		}
		proto = pkt[9]
	case 6:
		off = 40
		if len(pkt) < off {
			return false
		}
		proto = pkt[6]
	default:
		return false
	}
	var payload, csum int
	switch proto {
	case 6: // TCP
		if len(pkt) < off+20 {
			return false
		}
		payload, csum = off+int(pkt[off+12]>>4)*4, off+16
	case 17: // UDP
		payload, csum = off+8, off+6
	case 1, 58: // ICMP, ICMPv6
		payload, csum = off+8, off+2
	default:
		return false
	}
	if payload >= len(pkt) || csum+2 > len(pkt) {
		return false
	}
	i := payload + rng.IntN(len(pkt)-payload)
	bit := byte(1) << rng.UintN(8)
	// The checksum sums 16-bit words from the transport header on; off is
	// even, so word boundaries are even offsets in pkt.
	w := i &^ 1
	old := word(pkt, w)
	pkt[i] ^= bit
	nw := word(pkt, w)
	hc := binary.BigEndian.Uint16(pkt[csum:])
	if proto == 17 && hc == 0 && pkt[0]>>4 == 4 {
		return true // IPv4 UDP without checksum
	}
	hc = csumUpdate(hc, old, nw)
	if proto == 17 && hc == 0 {
		hc = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[csum:], hc)
	return true
}

// word reads the 16-bit word at even offset w, zero-padding a final odd byte.
func word(b []byte, w int) uint16 {
	if w+1 < len(b) {
		return uint16(b[w])<<8 | uint16(b[w+1])
	}
	return uint16(b[w]) << 8
}

// csumUpdate is RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
func csumUpdate(hc, m, m2 uint16) uint16 {
	s := uint32(^hc) + uint32(^m) + uint32(m2)
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return ^uint16(s)
}
