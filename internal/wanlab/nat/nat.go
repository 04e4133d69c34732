// Package nat installs a source NAT in a router namespace with nftables.
//
// Linux NAT is conntrack based: every flow (5-tuple) gets its own mapping,
// and inbound packets are only accepted for an existing conntrack entry.
// What differs between the rules is how the public port is chosen:
//
//   - EIM, `masquerade`: the kernel keeps the private source port whenever the
//     resulting tuple is unique. With one host behind the router, one local
//     socket therefore appears under the same public address:port to every
//     destination — endpoint-independent mapping (RFC 4787), with
//     address-and-port-dependent filtering ("port-restricted cone"). This is
//     the NAT that UDP hole punching succeeds through.
//   - Symmetric, `masquerade fully-random`: every new flow gets a randomly
//     drawn public port (NF_NAT_RANGE_PROTO_RANDOM_FULLY), so one socket talking
//     to two destinations gets two different public ports — endpoint-dependent
//     mapping, the NAT that defeats simple hole punching.
//     (`masquerade random` is similar but derives the port from a hash of the
//     tuple; `persistent` only matters with several public addresses.)
package nat

import (
	"fmt"

	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

// Mode is the NAT behaviour of a router.
type Mode string

// NAT behaviours.
const (
	None      Mode = ""
	EIM       Mode = "eim"
	Symmetric Mode = "symmetric"
)

// TableName is the nftables table (family ip) the router's rules live in.
const TableName = "wanlab_nat"

// ParseMode accepts "", "none", "eim" (also "cone", "full-cone") and
// "symmetric" (also "sym", "random").
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "none", "off":
		return None, nil
	case "eim", "cone", "port-restricted", "endpoint-independent":
		return EIM, nil
	case "symmetric", "sym", "random":
		return Symmetric, nil
	}
	return None, fmt.Errorf("unknown NAT type %q (want eim or symmetric)", s)
}

// Ruleset returns the nft script that masquerades everything leaving
// through the interface wan.
func Ruleset(m Mode, wan string) (string, error) {
	var stmt string
	switch m {
	case EIM:
		stmt = "masquerade"
	case Symmetric:
		stmt = "masquerade fully-random"
	default:
		return "", fmt.Errorf("nat: no ruleset for mode %q", m)
	}
	return fmt.Sprintf(`table ip %s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %q %s
	}
}
`, TableName, wan, stmt), nil
}

// Apply installs the NAT in the namespace ns, for traffic leaving through
// the interface wan (which need not exist yet).
func Apply(ns string, m Mode, wan string) error {
	rs, err := Ruleset(m, wan)
	if err != nil {
		return err
	}
	return netns.Exec(ns, []byte(rs), "nft", "-f", "-")
}
