package wanlab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/internal/wanlab/nat"
)

// StateRoot holds one directory per lab: state.json (written by Up),
// stats.json (rewritten by the emulator every StatsInterval) and
// emulator.log (the emulator's stdout and stderr).
var StateRoot = "/run/ferry-wanlab"

// StatsInterval is how often the emulator rewrites stats.json.
const StatsInterval = 200 * time.Millisecond

const (
	stateFile = "state.json"
	statsFile = "stats.json"
	logFile   = "emulator.log"
	lockFile  = ".lock"
)

// State is what Up records about a lab.
type State struct {
	Name  string       `json:"name"`
	Index int          `json:"index"`
	Spec  Spec         `json:"spec"`
	Sites [2]SiteState `json:"sites"`
	Hub   *HubState    `json:"hub,omitempty"` // with Spec.Hub
	PID   int          `json:"pid,omitempty"`
	// PIDStart is the emulator's start time (/proc/PID/stat field 22), so
	// that Down recognises it even while it exits and never kills a process
	// that reused the pid.
	PIDStart uint64    `json:"pid_start,omitempty"`
	Created  time.Time `json:"created"`
}

// SiteState is one end of the WAN link.
type SiteState struct {
	Name  string `json:"name"`  // "a" or "b"
	Netns string `json:"netns"` // the site's namespace
	Addr  string `json:"addr"`  // the site's own address
	// PublicAddr is the address on the WAN side: the router's when the site
	// is behind a NAT, else Addr.
	PublicAddr string   `json:"public_addr"`
	NAT        nat.Mode `json:"nat,omitempty"`
	Router     string   `json:"router_netns,omitempty"` // the NAT router's namespace
	RouterLAN  string   `json:"router_lan_addr,omitempty"`
	WANNetns   string   `json:"wan_netns"` // the namespace holding wan0
	WANPrefix  string   `json:"wan_prefix"`
}

// HubState is the public place in the middle of the WAN: a namespace with a
// wan0 of its own, reachable from both sites' WAN sides.
type HubState struct {
	Netns     string `json:"netns"`
	Addr      string `json:"addr"`
	WANPrefix string `json:"wan_prefix"` // the /32 of Addr
}

func labDir(name string) string { return filepath.Join(StateRoot, name) }

func readState(name string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(labDir(name), stateFile))
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", stateFile, err)
	}
	return &st, nil
}

func (st *State) write() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(labDir(st.Name), stateFile), append(b, '\n'))
}

// writeFileAtomic replaces path so that readers never see a partial file.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// List returns the names of the labs that have a state directory.
func List() ([]string, error) {
	ents, err := os.ReadDir(StateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// lockRoot serialises index allocation and lab creation between processes.
func lockRoot() (unlock func(), err error) {
	if err := os.MkdirAll(StateRoot, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(StateRoot, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// freeIndex returns the lowest lab index no existing lab uses.
func freeIndex() (int, error) {
	names, err := List()
	if err != nil {
		return 0, err
	}
	used := map[int]bool{}
	for _, n := range names {
		if st, err := readState(n); err == nil {
			used[st.Index] = true
		}
	}
	for i := 0; i < MaxLabs; i++ {
		if !used[i] {
			return i, nil
		}
	}
	return 0, fmt.Errorf("all %d lab slots are in use (wanlab list; wanlab down NAME)", MaxLabs)
}

// newState fills in the names and addresses of a lab.
func newState(name string, idx int, spec Spec) *State {
	st := &State{Name: name, Index: idx, Spec: spec, Created: time.Now().UTC()}
	for s := range 2 {
		mode := spec.NATA
		if s == 1 {
			mode = spec.NATB
		}
		ss := SiteState{
			Name:       siteNames[s],
			Netns:      siteNetns(name, s),
			PublicAddr: wanAddr(idx, s).String(),
			WANPrefix:  wanPrefix(idx, s).String(),
			NAT:        mode,
		}
		if mode == nat.None {
			ss.Addr = ss.PublicAddr
			ss.WANNetns = ss.Netns
		} else {
			ss.Router = routerNetns(name, s)
			ss.WANNetns = ss.Router
			ss.Addr = lanAddr(idx, s, 2).String()
			ss.RouterLAN = lanAddr(idx, s, 1).String()
		}
		st.Sites[s] = ss
	}
	if spec.Hub {
		a := hubAddr(idx)
		st.Hub = &HubState{Netns: hubNetns(name), Addr: a.String(), WANPrefix: netip.PrefixFrom(a, 32).String()}
	}
	return st
}
