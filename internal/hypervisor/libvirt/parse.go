package libvirt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Pure functions over what libvirt says: connection URIs, domain and
// capabilities XML, typed parameters. No I/O here.

// Default libvirtd sockets.
const (
	systemSocket = "/run/libvirt/libvirt-sock"
)

// target is where a driver's libvirt connection goes: the daemon's Unix
// socket and the URI opened on it.
type target struct {
	Socket string
	Open   golibvirt.ConnectURI // what ConnectOpen is sent: "qemu:///system"
}

// parseURI reads --libvirt-uri: qemu:///system (the default), or
// qemu+unix:///system?socket=PATH for a daemon on another socket. A
// remote transport (qemu+ssh, qemu+tcp, qemu+tls) is refused: the agent
// runs on the host whose domains it manages. A session URI needs its
// socket named (it lives under the user's runtime directory).
func parseURI(s string) (target, error) {
	if s == "" {
		s = "qemu:///system"
	}
	if len(s) > 1024 {
		return target{}, errors.New("libvirt: URI too long")
	}
	u, err := url.Parse(s)
	if err != nil {
		return target{}, fmt.Errorf("libvirt: URI %q: %w", s, err)
	}
	if u.Scheme != "qemu" && u.Scheme != "qemu+unix" {
		return target{}, fmt.Errorf("libvirt: URI %q: want qemu:///system or qemu+unix:///system?socket=PATH (the agent manages its own host's libvirtd)", s)
	}
	if u.Host != "" || u.User != nil {
		return target{}, fmt.Errorf("libvirt: URI %q names a remote host; the agent manages its own host's libvirtd", s)
	}
	if u.Path != "/system" && u.Path != "/session" {
		return target{}, fmt.Errorf("libvirt: URI %q: path must be /system or /session", s)
	}
	t := target{Open: golibvirt.ConnectURI("qemu://" + u.Path)}
	q := u.Query()
	for k := range q {
		if k != "socket" {
			return target{}, fmt.Errorf("libvirt: URI %q: unsupported parameter %q", s, k)
		}
	}
	t.Socket = q.Get("socket")
	switch {
	case t.Socket == "" && u.Path == "/system":
		t.Socket = systemSocket
	case t.Socket == "":
		return target{}, fmt.Errorf("libvirt: URI %q: a session daemon's socket must be named (?socket=PATH)", s)
	case !strings.HasPrefix(t.Socket, "/"):
		return target{}, fmt.Errorf("libvirt: URI %q: socket path must be absolute", s)
	}
	return t, nil
}

// domainXML is the part of a domain's XML Ferry reads.
type domainXML struct {
	Name    string `xml:"name"`
	Devices struct {
		Disks []struct {
			Type   string `xml:"type,attr"`
			Device string `xml:"device,attr"`
			Driver struct {
				Type string `xml:"type,attr"`
			} `xml:"driver"`
			Source struct {
				File string `xml:"file,attr"`
				Dev  string `xml:"dev,attr"`
			} `xml:"source"`
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			ReadOnly  *struct{} `xml:"readonly"`
			Shareable *struct{} `xml:"shareable"`
		} `xml:"disk"`
	} `xml:"devices"`
}

// maxXML bounds the XML Ferry parses from libvirt.
const maxXML = 4 << 20

// parseDisks lists a domain's writable disks (file or block device
// backed, device="disk"): the ones a migration of a VM on local storage
// copies. shared marks them on shared storage.
func parseDisks(doc string, shared bool) ([]hypervisor.Disk, error) {
	if len(doc) > maxXML {
		return nil, errors.New("libvirt: domain XML too large")
	}
	var d domainXML
	if err := xml.Unmarshal([]byte(doc), &d); err != nil {
		return nil, fmt.Errorf("libvirt: domain XML: %w", err)
	}
	var out []hypervisor.Disk
	for _, dk := range d.Devices.Disks {
		if dk.Device != "" && dk.Device != "disk" || dk.ReadOnly != nil || dk.Shareable != nil {
			continue
		}
		path := dk.Source.File
		if dk.Type == "block" {
			path = dk.Source.Dev
		}
		if path == "" || (dk.Type != "file" && dk.Type != "block") {
			continue
		}
		out = append(out, hypervisor.Disk{Path: path, Format: dk.Driver.Type, Shared: shared})
	}
	return out, nil
}

// capsXML is the part of libvirt's capabilities XML Ferry reads.
type capsXML struct {
	Host struct {
		SecModels []struct {
			Model      string `xml:"model"`
			BaseLabels []struct {
				Type  string `xml:"type,attr"`
				Label string `xml:",chardata"`
			} `xml:"baselabel"`
		} `xml:"secmodel"`
	} `xml:"host"`
}

// qemuIDs is the user and group QEMU runs as under libvirt's DAC
// security driver ("+64055:+64055"), from the capabilities XML; ok is
// false when the driver is not in use (QEMU runs as root).
func qemuIDs(caps string) (uid, gid int, ok bool, err error) {
	if len(caps) > maxXML {
		return 0, 0, false, errors.New("libvirt: capabilities XML too large")
	}
	var c capsXML
	if err := xml.Unmarshal([]byte(caps), &c); err != nil {
		return 0, 0, false, fmt.Errorf("libvirt: capabilities XML: %w", err)
	}
	for _, m := range c.Host.SecModels {
		if m.Model != "dac" {
			continue
		}
		for _, b := range m.BaseLabels {
			if b.Type != "qemu" && b.Type != "kvm" {
				continue
			}
			u, g, found := strings.Cut(strings.TrimSpace(b.Label), ":")
			if !found {
				return 0, 0, false, fmt.Errorf("libvirt: DAC label %q", b.Label)
			}
			uid, err1 := strconv.ParseUint(strings.TrimPrefix(u, "+"), 10, 31)
			gid, err2 := strconv.ParseUint(strings.TrimPrefix(g, "+"), 10, 31)
			if err1 != nil || err2 != nil {
				return 0, 0, false, fmt.Errorf("libvirt: DAC label %q", b.Label)
			}
			return int(uid), int(gid), true, nil
		}
	}
	return 0, 0, false, nil
}

// params holds typed parameters by name (the last of a repeated name).
type params map[string]any

func paramsOf(ps []golibvirt.TypedParam) params {
	m := make(params, len(ps))
	for _, p := range ps {
		m[p.Field] = p.Value.I
	}
	return m
}

// u64 is parameter k as an unsigned number (0 if absent or not a number).
func (p params) u64(k string) uint64 {
	switch v := p[k].(type) {
	case uint64:
		return v
	case int64:
		return uint64(max(v, 0))
	case uint32:
		return uint64(v)
	case int32:
		return uint64(max(v, 0))
	case float64:
		if v > 0 {
			return uint64(v)
		}
	}
	return 0
}

func (p params) has(k string) bool { _, ok := p[k]; return ok }

// jobStatus reads libvirt's migration job statistics (virDomainGetJobStats
// field names) into a MigrationStatus's figures; the state is the
// caller's.
func jobStatus(p params) hypervisor.MigrationStatus {
	var st hypervisor.MigrationStatus
	st.Total = p.u64("memory_total")
	st.Remaining = p.u64("memory_remaining")
	st.Transferred = p.u64("memory_processed")
	st.StreamBytes = p.u64("data_processed")
	st.Round = int(p.u64("memory_iteration"))
	page := p.u64("memory_page_size")
	if page == 0 {
		page = 4096
	}
	st.ZeroPages = p.u64("memory_constant")
	st.DirtyRate = float64(p.u64("memory_dirty_rate") * page)
	st.Rate = float64(p.u64("memory_bps"))
	if st.Rate == 0 {
		st.Rate = float64(p.u64("data_bps"))
	}
	// Disks copied over NBD count in data_*, memory only in memory_*:
	// a VM's disks are copied before its memory, so until they are,
	// what remains is the disks'.
	if dr := p.u64("disk_remaining"); dr > 0 {
		st.Remaining += dr
	}
	st.ExpectedDowntime = hypervisor.ExpectedDowntime(st.Remaining, st.Rate)
	st.Throttle = float64(p.u64("auto_converge_throttle")) / 100
	return st
}

// sample is one reading of a domain's counters (virConnectGetAllDomainStats).
type sample struct {
	CPUTime        uint64 // ns, all vCPUs
	VCPUs          int
	MemRSS, MemMax uint64 // bytes
	MemCurrent     uint64
	NetRx, NetTx   uint64 // bytes, all interfaces
}

// maxNICs bounds the interfaces read from one domain's statistics.
const maxNICs = 64

func sampleOf(p params) sample {
	s := sample{
		CPUTime:    p.u64("cpu.time"),
		VCPUs:      int(min(p.u64("vcpu.current"), 1<<16)),
		MemRSS:     p.u64("balloon.rss") << 10,
		MemMax:     p.u64("balloon.maximum") << 10,
		MemCurrent: p.u64("balloon.current") << 10,
	}
	n := min(p.u64("net.count"), maxNICs)
	for i := uint64(0); i < n; i++ {
		k := "net." + strconv.FormatUint(i, 10)
		s.NetRx += p.u64(k + ".rx.bytes")
		s.NetTx += p.u64(k + ".tx.bytes")
	}
	return s
}

// rates turns two samples dt seconds apart into Stats (the first reading
// of a domain has no rates: prev is nil).
func rates(prev *sample, cur sample, dt float64) hypervisor.Stats {
	st := hypervisor.Stats{MemTotal: cur.MemMax, MemUsed: min(cur.MemRSS, cur.MemMax)}
	if st.MemTotal == 0 {
		st.MemTotal = cur.MemCurrent
	}
	if prev == nil || dt <= 0 {
		return st
	}
	if cur.CPUTime >= prev.CPUTime && cur.VCPUs > 0 {
		st.CPU = min(float64(cur.CPUTime-prev.CPUTime)/1e9/dt/float64(cur.VCPUs), 1)
	}
	if cur.NetRx >= prev.NetRx {
		st.NetRx = float64(cur.NetRx-prev.NetRx) / dt
	}
	if cur.NetTx >= prev.NetTx {
		st.NetTx = float64(cur.NetTx-prev.NetTx) / dt
	}
	return st
}

// stateOf maps libvirt's domain state and reason to the CLI's.
func stateOf(state, reason int32) hypervisor.State {
	switch golibvirt.DomainState(state) {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked:
		return hypervisor.StateRunning
	case golibvirt.DomainPaused:
		switch golibvirt.DomainPausedReason(reason) {
		case golibvirt.DomainPausedMigration, golibvirt.DomainPausedPostcopy, golibvirt.DomainPausedPostcopyFailed:
			return hypervisor.StateMigrating
		}
		return hypervisor.StatePaused
	case golibvirt.DomainPmsuspended:
		return hypervisor.StatePaused
	}
	return hypervisor.StateStopped // shut off, shutdown, crashed, no state
}
