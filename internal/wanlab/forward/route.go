package forward

import (
	"encoding/binary"
	"net/netip"
)

// RouteByDest returns a Route that sends an IPv4 packet to the port whose
// prefix (prefixes[port]) holds its destination address, the longest such
// prefix winning; packets of other IP versions, truncated headers and
// destinations outside every prefix get -1 (dropped). IPv6 prefixes are
// ignored: the lab's WAN is IPv4 (the kernel's IPv6 router solicitations on
// the TUN devices have nowhere to go).
func RouteByDest(prefixes []netip.Prefix) Route {
	type entry struct {
		net, mask uint32
		bits      int
		port      int
	}
	var table []entry
	for port, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		a := p.Addr().As4()
		mask := uint32(0)
		if p.Bits() > 0 {
			mask = ^uint32(0) << (32 - p.Bits())
		}
		table = append(table, entry{net: binary.BigEndian.Uint32(a[:]), mask: mask, bits: p.Bits(), port: port})
	}
	return func(_ int, pkt []byte) int {
		if len(pkt) < 20 || pkt[0]>>4 != 4 {
			return -1
		}
		dst := binary.BigEndian.Uint32(pkt[16:20])
		port, bits := -1, -1
		for _, e := range table {
			if dst&e.mask == e.net && e.bits > bits {
				port, bits = e.port, e.bits
			}
		}
		return port
	}
}
