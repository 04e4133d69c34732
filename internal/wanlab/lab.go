// Package wanlab builds emulated WANs on one machine: two sites (network
// namespaces NAME-a and NAME-b) joined by a link that a user-space emulator
// process shapes between two TUN devices, optionally with a NAT router
// (namespace NAME-ra / NAME-rb, nftables, see package nat) in front of a
// site, and optionally a hub (NAME-hub): a public place in the middle of the
// WAN, half the link away from each site, where an MMC or a relay runs while
// both sites sit behind NATs.
//
// Up creates the namespaces, starts the emulator as a detached child
// (`wanlab run NAME`) and returns once the link carries packets; Down
// removes everything and works after a crash; Status reports addresses and
// the link's live counters. Nothing is created in the root namespace.
package wanlab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/nat"
	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

// ErrExists is returned by Up for a name that is already in use.
var ErrExists = errors.New("lab already exists")

// ErrNotFound is returned by Status for a lab that does not exist.
var ErrNotFound = errors.New("no such lab")

// ReadyTimeout bounds how long Up waits for the emulator.
var ReadyTimeout = 15 * time.Second

// CheckEnv reports why the lab cannot run here (not root, missing tools),
// or nil. needNAT also requires nft.
func CheckEnv(needNAT bool) error {
	if os.Geteuid() != 0 {
		return errors.New("wanlab needs root (it creates network namespaces and TUN devices): run it with sudo")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("wanlab needs the ip command (apt-get install iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("wanlab needs /dev/net/tun: %v", err)
	}
	if needNAT {
		if _, err := exec.LookPath("nft"); err != nil {
			return errors.New("NAT routers need the nft command (apt-get install nftables)")
		}
	}
	return nil
}

// Up creates the lab name and returns once its WAN link is running.
func Up(ctx context.Context, name string, spec Spec) (err error) {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := CheckEnv(spec.NATA != nat.None || spec.NATB != nat.None); err != nil {
		return err
	}
	if err := spec.checkKeys(); err != nil {
		return err
	}
	if err := ValidateSpec(spec); err != nil {
		return err
	}
	st, err := reserve(name, spec)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if derr := Down(name); derr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
			}
		}
	}()
	if err := buildTopology(st); err != nil {
		return err
	}
	return startEmulator(ctx, st)
}

// reserve checks that name is free, picks a lab index and writes the state
// file, all under the root lock.
func reserve(name string, spec Spec) (*State, error) {
	unlock, err := lockRoot()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(labDir(name)); err == nil {
		return nil, fmt.Errorf("%w: %s (remove it with: wanlab down %s)", ErrExists, name, name)
	}
	for _, ns := range allNetns(name) {
		if netns.Exists(ns) {
			return nil, fmt.Errorf("%w: network namespace %s exists (remove it with: wanlab down %s)", ErrExists, ns, name)
		}
	}
	if pids := emulatorPids(name); len(pids) > 0 {
		return nil, fmt.Errorf("%w: emulator process %v still runs (wanlab down %s)", ErrExists, pids, name)
	}
	idx, err := freeIndex()
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(labDir(name), 0o755); err != nil {
		return nil, err
	}
	st := newState(name, idx, spec)
	if err := st.write(); err != nil {
		return nil, err
	}
	return st, nil
}

// buildTopology creates the namespaces, veths and NATs; the emulator adds
// the wan0 devices.
func buildTopology(st *State) error {
	for _, s := range st.Sites {
		if err := netns.Add(s.Netns); err != nil {
			return err
		}
		if s.NAT == nat.None {
			continue
		}
		r := s.Router
		if err := netns.Add(r); err != nil {
			return err
		}
		// Both ends are created directly inside their namespaces, so no
		// interface ever appears in the root namespace.
		steps := [][]string{
			{"link", "add", routerLANIf, "netns", r, "type", "veth", "peer", "name", siteLANIf, "netns", s.Netns},
			{"-n", r, "addr", "add", s.RouterLAN + "/24", "dev", routerLANIf},
			{"-n", r, "link", "set", routerLANIf, "up"},
			{"-n", s.Netns, "addr", "add", s.Addr + "/24", "dev", siteLANIf},
			{"-n", s.Netns, "link", "set", siteLANIf, "up"},
			{"-n", s.Netns, "route", "add", "default", "via", s.RouterLAN},
		}
		for _, args := range steps {
			if err := netns.IP(args...); err != nil {
				return err
			}
		}
		if err := netns.Exec(r, nil, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
		inside, err := netip.ParseAddr(s.Addr)
		if err != nil {
			return err
		}
		if err := nat.Apply(r, s.NAT, wanIf, inside); err != nil {
			return err
		}
	}
	if st.Hub != nil {
		return netns.Add(st.Hub.Netns)
	}
	return nil
}

// wanPort is one end of the emulated WAN: the namespace holding a wan0, its
// address there and the prefix the emulator routes to it.
type wanPort struct {
	name   string // "a", "b" or "hub", as in stats.json
	netns  string
	addr   string
	prefix string
}

// Port indices of the emulator: the two sites, then the hub if any.
const (
	portA   = 0
	portB   = 1
	portHub = 2
)

// wanPorts lists the lab's WAN ends in port order.
func (st *State) wanPorts() []wanPort {
	var ps []wanPort
	for _, s := range st.Sites {
		ps = append(ps, wanPort{name: s.Name, netns: s.WANNetns, addr: s.PublicAddr, prefix: s.WANPrefix})
	}
	if st.Hub != nil {
		ps = append(ps, wanPort{name: "hub", netns: st.Hub.Netns, addr: st.Hub.Addr, prefix: st.Hub.WANPrefix})
	}
	return ps
}

// configureWAN gives port i's wan0 (already opened by the emulator) its
// address and a route to every other port's prefix.
func configureWAN(ports []wanPort, i int) error {
	me := ports[i]
	steps := [][]string{
		{"-n", me.netns, "link", "set", wanIf, "mtu", "1500", "txqueuelen", "4096", "up"},
		{"-n", me.netns, "addr", "add", me.addr + "/32", "dev", wanIf},
	}
	for j, peer := range ports {
		if j != i {
			steps = append(steps, []string{"-n", me.netns, "route", "add", peer.prefix, "dev", wanIf, "src", me.addr})
		}
	}
	for _, args := range steps {
		if err := netns.IP(args...); err != nil {
			return err
		}
	}
	return nil
}

// ChildEnv names the environment variable that makes a process the
// emulator of a lab (see MaybeRunChild).
const ChildEnv = "FERRY_WANLAB_RUN"

const readyFD = 3 // the child's end of the ready pipe

// startEmulator re-executes this binary as `… run NAME`, detached, and
// waits for it to report that the link is up.
func startEmulator(ctx context.Context, st *State) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(labDir(st.Name), logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	cmd := exec.Command(self, "run", st.Name)
	cmd.Env = append(os.Environ(), ChildEnv+"="+st.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return fmt.Errorf("starting the emulator: %w", err)
	}
	go cmd.Wait() // reap it if it exits while this process lives (tests)
	st.PID = cmd.Process.Pid
	st.PIDStart = startTime(st.PID)
	if err := st.write(); err != nil {
		return err
	}

	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(pr).ReadString('\n')
		ch <- result{strings.TrimSpace(line), err}
	}()
	timer := time.NewTimer(ReadyTimeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		if r.line == "ready" {
			return nil
		}
		msg := strings.TrimPrefix(r.line, "error: ")
		if msg == "" {
			msg = "emulator exited before it was ready"
		}
		return fmt.Errorf("%s%s", msg, logTail(st.Name))
	case <-timer.C:
		return fmt.Errorf("emulator not ready after %v%s", ReadyTimeout, logTail(st.Name))
	case <-ctx.Done():
		return ctx.Err()
	}
}

func logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(labDir(name), logFile))
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return "\nemulator log:\n" + s
}

// Down removes the lab: it stops the emulator and any process left in the
// lab's namespaces, deletes the namespaces (and with them every veth, TUN
// and nftables table) and the state directory. It is idempotent and does
// not depend on the state file: every name derives from the lab name.
func Down(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("wanlab needs root to remove a lab: run it with sudo")
	}
	var errs []error
	pids := emulatorPids(name)
	if st, err := readState(name); err == nil && (sameProcess(st.PID, st.PIDStart) || isEmulator(st.PID, name)) {
		pids = appendUnique(pids, st.PID)
	}
	for _, ns := range allNetns(name) {
		nsPids, err := netns.Pids(ns)
		if err != nil {
			errs = append(errs, err)
		}
		for _, p := range nsPids {
			pids = appendUnique(pids, p)
		}
	}
	if err := killAll(pids); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range allNetns(name) {
		if err := netns.Delete(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(labDir(name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// StatusInfo is what `wanlab status NAME --json` prints.
type StatusInfo struct {
	Name    string     `json:"name"`
	Index   int        `json:"index"`
	Sites   []SiteInfo `json:"sites"`
	Link    LinkStatus `json:"link"`
	PID     int        `json:"pid"`
	Running bool       `json:"running"`
	Spec    Spec       `json:"spec"`
	Created time.Time  `json:"created"`
	// Hub is the public place in the middle of the WAN (up --hub), nil
	// without one.
	Hub *HubInfo `json:"hub,omitempty"`
}

// HubInfo describes the hub: its namespace and its (public) address, which
// both sites reach over the WAN.
type HubInfo struct {
	Netns string `json:"netns"`
	Addr  string `json:"addr"`
}

// SiteInfo describes one site; Sites[0] and Sites[1] are the two ends of
// the WAN link.
type SiteInfo struct {
	Name          string `json:"name"`
	Netns         string `json:"netns"`
	Addr          string `json:"addr"`
	PublicAddr    string `json:"public_addr"`
	NAT           string `json:"nat,omitempty"`
	RouterNetns   string `json:"router_netns,omitempty"`
	RouterLANAddr string `json:"router_lan_addr,omitempty"`
}

// LinkStatus holds the emulator's last stats snapshot: per-direction
// counters and configuration as the emulator wrote them.
type LinkStatus struct {
	AB json.RawMessage `json:"ab,omitempty"`
	BA json.RawMessage `json:"ba,omitempty"`
	// Hub holds the counters of the hub's links ("a_hub", "hub_a",
	// "b_hub", "hub_b"), with a hub.
	Hub     json.RawMessage `json:"hub,omitempty"`
	Config  json.RawMessage `json:"config,omitempty"`
	Forward json.RawMessage `json:"forward,omitempty"`
	Updated time.Time       `json:"updated"`
}

// Status reports the lab's addresses and the link's live counters.
func Status(name string) (*StatusInfo, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	st, err := readState(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	info := &StatusInfo{Name: st.Name, Index: st.Index, PID: st.PID, Spec: st.Spec, Created: st.Created}
	info.Running = st.PID > 0 && isEmulator(st.PID, name)
	for _, s := range st.Sites {
		info.Sites = append(info.Sites, SiteInfo{
			Name: s.Name, Netns: s.Netns, Addr: s.Addr, PublicAddr: s.PublicAddr,
			NAT: string(s.NAT), RouterNetns: s.Router, RouterLANAddr: s.RouterLAN,
		})
	}
	if st.Hub != nil {
		info.Hub = &HubInfo{Netns: st.Hub.Netns, Addr: st.Hub.Addr}
	}
	if b, err := os.ReadFile(filepath.Join(labDir(name), statsFile)); err == nil {
		_ = json.Unmarshal(b, &info.Link)
	}
	return info, nil
}
