// Package nat installs a NAT router's rules in a router namespace with
// nftables. Each mode is one behaviour of RFC 4787, for UDP, with one host
// behind the router:
//
//   - EIM, "restricted cone": endpoint-independent mapping with
//     address-dependent filtering. Outbound packets are masqueraded; the
//     kernel keeps the private source port whenever the resulting tuple is
//     unique (with one inside host: always), so one socket appears under the
//     same public address:port to every destination. Linux's conntrack alone
//     would then accept inbound packets only from the exact remote
//     address:port the socket sent to (port-restricted filtering); this mode
//     widens that to the remote address: every outbound UDP packet records
//     (remote IP, inside port) in the dynamic set "contacted" (entries expire
//     ContactTimeout after the last such packet), and a new inbound UDP flow
//     from a recorded IP, from any port, to the recorded public port is
//     DNATed to the inside host on that port. Why: with port-restricted
//     filtering a peer behind a symmetric NAT can never punch to an EIM
//     peer with one UDP port (its packets come from a port nobody was
//     told); with address-dependent filtering its own dial passes once the
//     EIM side sent one packet to its IP, which is what Ferry's direct path
//     relies on (docs/WANLAB.md, "NAT").
//   - PortRestricted: plain `masquerade` — endpoint-independent mapping,
//     address-and-port-dependent filtering (conntrack). Inbound packets pass
//     only from a remote address:port the inside socket sent to.
//   - Symmetric, `masquerade fully-random`: every new flow gets a randomly
//     drawn public port (NF_NAT_RANGE_PROTO_RANDOM_FULLY), so one socket
//     talking to two destinations gets two different public ports —
//     endpoint-dependent mapping, with conntrack's address-and-port-dependent
//     filtering: the NAT that defeats simple hole punching unless the other
//     side's filter lets any port of its address through (EIM above).
//     (`masquerade random` is similar but derives the port from a hash of the
//     tuple; `persistent` only matters with several public addresses.)
//
// Non-UDP traffic gets masquerade and conntrack in every mode.
package nat

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

// Mode is the NAT behaviour of a router.
type Mode string

// NAT behaviours.
const (
	None           Mode = ""
	EIM            Mode = "eim"
	PortRestricted Mode = "port-restricted"
	Symmetric      Mode = "symmetric"
)

// TableName is the nftables table (family ip) the router's rules live in.
const TableName = "wanlab_nat"

// ContactTimeout is how long after the inside host's last UDP packet to a
// remote IP an EIM router still lets that IP's packets in from any port:
// conntrack's UDP stream timeout (nf_conntrack_udp_timeout_stream), so the
// address filter lives as long as the mapping of an answered flow does.
const ContactTimeout = 120 * time.Second

// ParseMode accepts "", "none", "eim" (also "cone", "restricted-cone",
// "endpoint-independent"), "port-restricted" and "symmetric" (also "sym",
// "random").
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "none", "off":
		return None, nil
	case "eim", "cone", "restricted-cone", "endpoint-independent":
		return EIM, nil
	case "port-restricted", "port-restricted-cone":
		return PortRestricted, nil
	case "symmetric", "sym", "random":
		return Symmetric, nil
	}
	return None, fmt.Errorf("unknown NAT type %q (want eim, port-restricted or symmetric)", s)
}

// Ruleset returns the nft script of a router whose WAN interface is wan and
// whose one inside host is inside.
func Ruleset(m Mode, wan string, inside netip.Addr) (string, error) {
	switch m {
	case PortRestricted:
		return masqueradeOnly(wan, "masquerade"), nil
	case Symmetric:
		return masqueradeOnly(wan, "masquerade fully-random"), nil
	case EIM:
		if !inside.Is4() {
			return "", fmt.Errorf("nat: eim needs the inside host's IPv4 address, not %v", inside)
		}
		// forward (filter) sees outbound packets before SNAT, with the inside
		// port — masquerade keeps it, see the package doc. prerouting (nat)
		// runs for the first packet of a flow only, so established flows
		// are conntrack's as before. filter_in drops a packet from an IP
		// the host has not contacted before conntrack sees it (priority
		// raw): otherwise that packet (a peer's punch overtaking the host's
		// first packet to it) would leave an unreplied conntrack entry
		// with no DNAT, which every later packet of that flow would follow
		// to the router's own stack — the filter must not remember what it
		// refused, as RFC 4787's does not.
		return fmt.Sprintf(`table ip %[1]s {
	set contacted {
		type ipv4_addr . inet_service
		flags dynamic,timeout
		timeout %[4]ds
		size 65536
	}
	chain filter_in {
		type filter hook prerouting priority raw; policy accept;
		iifname %[2]q meta l4proto udp ip saddr . udp dport != @contacted drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		oifname %[2]q meta l4proto udp update @contacted { ip daddr . udp sport }
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname %[2]q meta l4proto udp ip saddr . udp dport @contacted dnat to %[3]s
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %[2]q masquerade
	}
}
`, TableName, wan, inside, int(ContactTimeout/time.Second)), nil
	}
	return "", fmt.Errorf("nat: no ruleset for mode %q", m)
}

func masqueradeOnly(wan, stmt string) string {
	return fmt.Sprintf(`table ip %s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %q %s
	}
}
`, TableName, wan, stmt)
}

// Apply installs the NAT in the namespace ns, for traffic leaving through
// the interface wan (which need not exist yet) from the inside host.
func Apply(ns string, m Mode, wan string, inside netip.Addr) error {
	rs, err := Ruleset(m, wan, inside)
	if err != nil {
		return err
	}
	return netns.Exec(ns, []byte(rs), "nft", "-f", "-")
}
