package wanlab

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/ferry-vm/ferry/internal/wanlab/nat"
)

// LinkOptions are the per-direction link settings a Spec can carry, in the
// order the CLI lists them. Values are strings as an operator types them
// ("25ms", "1%", "100mbit", "64KiB" or "50ms" for a queue); the emulator
// parses them with the link package.
var LinkOptions = []string{"delay", "jitter", "loss", "rate", "queue", "reorder", "duplicate", "corrupt", "seed"}

// Spec describes a lab: the WAN link (a profile, then options for both
// directions, then per-direction overrides) and optional NAT routers.
type Spec struct {
	Profile string            `json:"profile,omitempty"`
	Both    map[string]string `json:"both,omitempty"` // applied to a→b and b→a
	AB      map[string]string `json:"ab,omitempty"`   // a→b only, after Both
	BA      map[string]string `json:"ba,omitempty"`   // b→a only, after Both
	NATA    nat.Mode          `json:"nat_a,omitempty"`
	NATB    nat.Mode          `json:"nat_b,omitempty"`
	// Hub adds a public namespace in the middle of the WAN (see hubNetns).
	Hub bool `json:"hub,omitempty"`
}

// Direction returns the options of one direction ("ab" or "ba") in the
// order they apply: Both, then the override.
func (s Spec) Direction(dir string) map[string]string {
	out := map[string]string{}
	for k, v := range s.Both {
		out[k] = v
	}
	over := s.AB
	if dir == "ba" {
		over = s.BA
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

// checkKeys rejects option names the emulator does not know.
func (s Spec) checkKeys() error {
	known := map[string]bool{}
	for _, k := range LinkOptions {
		known[k] = true
	}
	for _, m := range []map[string]string{s.Both, s.AB, s.BA} {
		var bad []string
		for k := range m {
			if !known[k] {
				bad = append(bad, k)
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			return fmt.Errorf("unknown link option(s) %s (known: %s)", strings.Join(bad, ", "), strings.Join(LinkOptions, ", "))
		}
	}
	return nil
}

// Site names: site 0 is "a", site 1 is "b"; they are the two ends of the WAN.
var siteNames = [2]string{"a", "b"}

// MaxLabs is how many labs can exist at once (two /24s of 198.18.0.0/16 each).
const MaxLabs = 128

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,19}$`)

// ValidName reports whether name can name a lab: 1–20 letters, digits, '-'
// or '_', starting with a letter or digit.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid lab name %q: use 1-20 letters, digits, '-' or '_'", name)
	}
	return nil
}

// Namespace names derived from the lab name alone, so that Down can remove
// a lab whose state file is lost.
func siteNetns(name string, site int) string   { return name + "-" + siteNames[site] }
func routerNetns(name string, site int) string { return name + "-r" + siteNames[site] }
func hubNetns(name string) string              { return name + "-hub" }

// allNetns lists every namespace a lab may own.
func allNetns(name string) []string {
	return []string{siteNetns(name, 0), siteNetns(name, 1), routerNetns(name, 0), routerNetns(name, 1), hubNetns(name)}
}

// Interface names inside the namespaces (never in the root namespace).
const (
	wanIf       = "wan0" // the TUN device, in the site or its router
	siteLANIf   = "eth0" // the site's end of the veth to its router
	routerLANIf = "lan0" // the router's end
)

// Addressing, all within 198.18.0.0/15 (RFC 2544). Lab i uses
//
//	198.18.(2i+s).0/24  public (WAN) side of site s: .1 is on wan0
//	198.19.(2i+s).0/24  private LAN behind site s's NAT router:
//	                    .1 router (lan0), .2 site (eth0)
//
//	198.51.100.(i+1)    the hub (--hub), one address of TEST-NET-2
//	                    (RFC 5737): 198.18.0.0/15 is used up by the above
//
// so up to 128 labs coexist with distinct addresses.
func wanPrefix(idx, site int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(2*idx + site), 0}), 24)
}

func wanAddr(idx, site int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(2*idx + site), 1})
}

func lanAddr(idx, site, host int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte(2*idx + site), byte(host)})
}

// hubAddr is lab idx's hub address; its WAN route is the /32.
func hubAddr(idx int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 51, 100, byte(idx + 1)})
}
