package identity

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Facts are what an agent tells the MMC about its host when it enrols and
// at every login. They are not secrets — MAC addresses are visible on the
// LAN — but they let an administrator see which machine asks to join, and
// a change in the stable ones (a different disk or NIC behind the same
// key) reveals a copied data directory or a swapped host.
type Facts struct {
	Hostname  string   `cbor:"1,keyasint" json:"hostname"`
	IPs       []string `cbor:"2,keyasint" json:"ips"`
	MACs      []string `cbor:"3,keyasint" json:"macs"`
	MachineID string   `cbor:"4,keyasint" json:"machine_id"`
	DiskID    string   `cbor:"5,keyasint" json:"disk_id"`
}

// Normalize sorts and deduplicates the address lists and lower-cases MACs,
// so that two reports of one host compare equal.
func (f Facts) Normalize() Facts {
	norm := func(v []string, lower bool) []string {
		out := make([]string, 0, len(v))
		for _, s := range v {
			s = strings.TrimSpace(s)
			if lower {
				s = strings.ToLower(s)
			}
			if s != "" {
				out = append(out, s)
			}
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	f.IPs = norm(f.IPs, false)
	f.MACs = norm(f.MACs, true)
	f.Hostname = strings.TrimSpace(f.Hostname)
	f.MachineID = strings.TrimSpace(f.MachineID)
	f.DiskID = strings.TrimSpace(f.DiskID)
	return f
}

// Validate bounds what an enrolment may claim, so a hostile request cannot
// make the MMC store megabytes of "facts", and refuses anything an
// administrator's terminal could misrender: the facts are shown to the
// person deciding whether to trust the host, so a hostname carrying escape
// sequences (to paint over the screen as another host) is rejected, and
// addresses must parse.
func (f Facts) Validate() error {
	const maxField, maxList = 256, 64
	for _, s := range []string{f.Hostname, f.MachineID, f.DiskID} {
		if err := CheckLabel(s, maxField); err != nil {
			return err
		}
	}
	if len(f.IPs) > maxList || len(f.MACs) > maxList {
		return fmt.Errorf("identity: more than %d addresses", maxList)
	}
	for _, s := range f.IPs {
		if _, err := netip.ParseAddr(strings.TrimSpace(s)); err != nil {
			return fmt.Errorf("identity: IP address %q: %v", s, err)
		}
	}
	for _, s := range f.MACs {
		if _, err := net.ParseMAC(strings.TrimSpace(s)); err != nil || len(s) > 64 {
			return fmt.Errorf("identity: MAC address %q does not parse", s)
		}
	}
	if f.Hostname == "" {
		return fmt.Errorf("identity: hostname missing")
	}
	return nil
}

// CheckLabel accepts a string shown to administrators: at most max bytes of
// valid UTF-8 with printable characters only (no control characters, no
// terminal escape sequences).
func CheckLabel(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("identity: %d-byte field, limit %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return errors.New("identity: field is not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("identity: field contains the non-printable character %U", r)
		}
	}
	return nil
}

// Change says how a login's facts differ from the enrolled ones.
type Change struct {
	Stable   []string // names of stable facts that changed: "mac", "disk_id", "machine_id"
	Volatile []string // names of facts allowed to change: "ip", "hostname"
}

// Compare reports what differs between the enrolled facts and the current
// ones. MACs count as changed when no enrolled MAC is still present: adding
// a NIC is not an alarm, losing every known one is.
func Compare(enrolled, now Facts) Change {
	enrolled, now = enrolled.Normalize(), now.Normalize()
	var c Change
	if len(enrolled.MACs) > 0 && !overlaps(enrolled.MACs, now.MACs) {
		c.Stable = append(c.Stable, "mac")
	}
	if enrolled.DiskID != now.DiskID {
		c.Stable = append(c.Stable, "disk_id")
	}
	if enrolled.MachineID != now.MachineID {
		c.Stable = append(c.Stable, "machine_id")
	}
	if !slices.Equal(enrolled.IPs, now.IPs) {
		c.Volatile = append(c.Volatile, "ip")
	}
	if enrolled.Hostname != now.Hostname {
		c.Volatile = append(c.Volatile, "hostname")
	}
	return c
}

func overlaps(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// StableBinding is the byte string of stable facts mixed into the psk: the
// MACs and the disk id. The IP is left out on purpose: NAT and DHCP change it.
func (f Facts) StableBinding() []byte {
	f = f.Normalize()
	return []byte("mac=" + strings.Join(f.MACs, ",") + ";disk=" + f.DiskID)
}

// Overrides let tests and simulated hosts (several "hosts" on one machine)
// present distinct facts; empty fields are discovered.
type Overrides struct {
	Hostname  string
	MachineID string
	DiskID    string
	MACs      []string
}

// Discover collects this host's facts: hostname, global unicast addresses
// and hardware addresses of interfaces that are up, /etc/machine-id, and a
// disk id (the DMI product UUID or the root disk's serial when readable,
// else the machine id).
func Discover(o Overrides) (Facts, error) {
	var f Facts
	f.Hostname = o.Hostname
	if f.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return f, fmt.Errorf("identity: hostname: %w", err)
		}
		f.Hostname = h
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return f, fmt.Errorf("identity: interfaces: %w", err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		if len(ifc.HardwareAddr) == 6 {
			f.MACs = append(f.MACs, ifc.HardwareAddr.String())
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() {
				f.IPs = append(f.IPs, ipn.IP.String())
			}
		}
	}
	if len(o.MACs) > 0 {
		f.MACs = o.MACs
	}
	f.MachineID = o.MachineID
	if f.MachineID == "" {
		f.MachineID = readTrim("/etc/machine-id")
	}
	f.DiskID = o.DiskID
	if f.DiskID == "" {
		f.DiskID = firstNonEmpty(readTrim("/sys/class/dmi/id/product_uuid"), rootDiskSerial(), "machine-id:"+f.MachineID)
	}
	return f.Normalize(), nil
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// rootDiskSerial returns the serial of the first virtio or SCSI disk, if
// the kernel exposes one.
func rootDiskSerial() string {
	for _, p := range []string{"/sys/block/vda/serial", "/sys/block/sda/device/serial", "/sys/block/nvme0n1/device/serial"} {
		if s := readTrim(p); s != "" {
			return s
		}
	}
	return ""
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
