// Package policy is the MMC's migration policy engine, written sans-I/O:
// it is fed samples of host and VM load (with the time they were taken)
// and answers with migration decisions. It owns the SLA thresholds of the
// paper (VM network traffic above Up, VM CPU above a level, the host
// swapping out), hysteresis (a violation must last a window), a per-VM
// cool-down, a global cap on concurrent migrations, and the choice of the
// destination (capacity after the move, load, site preference,
// anti-affinity). Every decision carries its reason.
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Modes.
const (
	ModeOff    = "off"     // evaluate nothing
	ModeDryRun = "dry-run" // recommend only
	ModeAuto   = "auto"    // migrate
)

// Site preferences for destinations.
const (
	SiteAny   = "any"
	SiteSame  = "same"  // prefer the VM's own site
	SiteOther = "other" // prefer another site (move load across data centres)
)

// SLA holds the violation thresholds; zero disables a threshold.
type SLA struct {
	NetUp       float64 `json:"net_up"`        // VM network bytes/s above which it violates (the paper's Up)
	CPU         float64 `json:"cpu"`           // VM CPU use (0–1 of its vCPUs) above which it violates
	HostSwapOut float64 `json:"host_swap_out"` // host swap-out bytes/s above which its largest VM is moved
}

// Policy is the versioned configuration an administrator sets.
type Policy struct {
	Version       uint64         `json:"version"`
	Mode          string         `json:"mode"`
	Window        Duration       `json:"window"`         // a violation must last this long (default 30s)
	Cooldown      Duration       `json:"cooldown"`       // per VM, after a migration (default 10m)
	MaxConcurrent int            `json:"max_concurrent"` // migrations at once (default 1)
	SLA           SLA            `json:"sla"`
	PerVM         map[string]SLA `json:"per_vm,omitempty"`
	Site          string         `json:"site_preference"`
	// Destination capacity: after the move the host's CPU and memory use
	// must stay at or below these fractions (default 0.8).
	HostCPUMax   float64    `json:"host_cpu_max"`
	HostMemMax   float64    `json:"host_mem_max"`
	AntiAffinity [][]string `json:"anti_affinity,omitempty"` // VMs in one group never share a host
	// Postcopy lets the migrations the policy plans switch to post-copy
	// when pre-copy has not converged (as ferry ctl migrate --postcopy).
	Postcopy bool `json:"postcopy,omitempty"`
}

// Duration is a time.Duration that reads and writes as "30s" in JSON.
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Default is the policy in force before an administrator sets one.
func Default() Policy {
	return Policy{Mode: ModeDryRun, Window: Duration(30 * time.Second), Cooldown: Duration(10 * time.Minute), MaxConcurrent: 1,
		SLA: SLA{CPU: 0.9}, Site: SiteAny, HostCPUMax: 0.8, HostMemMax: 0.8}
}

// Validate checks a policy and fills defaults for zero fields.
func (p *Policy) Validate() error {
	d := Default()
	switch p.Mode {
	case "":
		p.Mode = d.Mode
	case ModeOff, ModeDryRun, ModeAuto:
	default:
		return fmt.Errorf("policy: mode %q: want off, dry-run or auto", p.Mode)
	}
	switch p.Site {
	case "":
		p.Site = SiteAny
	case SiteAny, SiteSame, SiteOther:
	default:
		return fmt.Errorf("policy: site_preference %q: want any, same or other", p.Site)
	}
	if p.Window < 0 || p.Cooldown < 0 || p.MaxConcurrent < 0 {
		return errors.New("policy: window, cooldown and max_concurrent must not be negative")
	}
	if p.Window == 0 {
		p.Window = d.Window
	}
	if p.Cooldown == 0 {
		p.Cooldown = d.Cooldown
	}
	if p.MaxConcurrent == 0 {
		p.MaxConcurrent = d.MaxConcurrent
	}
	for _, f := range []*float64{&p.HostCPUMax, &p.HostMemMax} {
		if *f < 0 || *f > 1 {
			return errors.New("policy: host_cpu_max and host_mem_max are fractions 0–1")
		}
		if *f == 0 {
			*f = 0.8
		}
	}
	for _, s := range append([]SLA{p.SLA}, mapValues(p.PerVM)...) {
		if s.NetUp < 0 || s.CPU < 0 || s.CPU > 1 || s.HostSwapOut < 0 {
			return errors.New("policy: SLA thresholds must be non-negative (cpu at most 1)")
		}
	}
	return nil
}

func mapValues(m map[string]SLA) []SLA {
	out := make([]SLA, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// Host and VM are the engine's view of a sample.
type Host struct {
	ID, Site string
	Online   bool
	CPU, Mem float64 // 0–1
	SwapOut  float64 // bytes/s
	Cores    int
	MemBytes uint64
}

// VM is one VM in a sample.
type VM struct {
	ID, Host string
	Running  bool
	CPU      float64 // 0–1 of its vCPUs
	VCPUs    int
	Memory   uint64
	Net      float64 // bytes/s
}

// Sample is the cluster's load at one moment.
type Sample struct {
	At    time.Time
	Hosts []Host
	VMs   []VM
}

// Decision is one migration the engine wants (or recommends, in dry-run).
type Decision struct {
	VM, From, To string
	Reason       string
	Auto         bool // false: a recommendation only
}

// Held is a VM that violates its SLA and is not moved now, with why: an
// operator asking "why did nothing happen?" gets these.
type Held struct {
	VM, Host string
	Kind     string // HeldWindow, HeldCooldown, HeldCap or HeldNoRoom
	Reason   string
}

// Why a violating VM is held back.
const (
	HeldWindow   = "window"   // the violation has not lasted the window yet
	HeldCooldown = "cooldown" // it moved less than the cool-down ago
	HeldCap      = "cap"      // max_concurrent migrations are in flight or decided
	HeldNoRoom   = "no-room"  // no host qualifies as its destination
)

// HeldKinds lists every Held.Kind.
var HeldKinds = []string{HeldWindow, HeldCooldown, HeldCap, HeldNoRoom}

// Evaluation is what one sample leads to: the decisions, and the
// violating VMs held back.
type Evaluation struct {
	Decisions []Decision
	Held      []Held
}

// Engine holds the hysteresis, cool-down and in-flight state between
// samples. It is not safe for concurrent use.
type Engine struct {
	p        Policy
	since    map[string]time.Time // VM → start of its current violation
	lastMove map[string]time.Time // VM → when its last migration started
	inFlight map[string]bool
}

// New returns an engine for p (validated).
func New(p Policy) (*Engine, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Engine{p: p, since: map[string]time.Time{}, lastMove: map[string]time.Time{}, inFlight: map[string]bool{}}, nil
}

// SetPolicy replaces the policy; violation history is kept.
func (e *Engine) SetPolicy(p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	e.p = p
	return nil
}

// Policy returns the policy in force.
func (e *Engine) Policy() Policy { return e.p }

// Started records that a migration of vm began (by decision or by hand):
// it counts against the cap and starts the VM's cool-down.
func (e *Engine) Started(vm string, at time.Time) {
	e.inFlight[vm] = true
	e.lastMove[vm] = at
	delete(e.since, vm)
}

// Finished records that vm's migration ended (any outcome).
func (e *Engine) Finished(vm string) { delete(e.inFlight, vm) }

func (e *Engine) sla(vm string) SLA {
	if s, ok := e.p.PerVM[vm]; ok {
		return s
	}
	return e.p.SLA
}

// violation says why vm violates its SLA in s, or "".
func (e *Engine) violation(v VM, h Host, largestOnHost bool) string {
	sla := e.sla(v.ID)
	switch {
	case sla.NetUp > 0 && v.Net > sla.NetUp:
		return fmt.Sprintf("network %.1f MB/s above Up %.1f MB/s", v.Net/1e6, sla.NetUp/1e6)
	case sla.CPU > 0 && v.CPU > sla.CPU:
		return fmt.Sprintf("CPU %.0f%% above %.0f%%", 100*v.CPU, 100*sla.CPU)
	case sla.HostSwapOut > 0 && h.SwapOut > sla.HostSwapOut && largestOnHost:
		return fmt.Sprintf("host %s swapping out %.1f MB/s (above %.1f MB/s); largest VM on it", h.ID, h.SwapOut/1e6, sla.HostSwapOut/1e6)
	}
	return ""
}

// Observe feeds one sample and returns the decisions it leads to. In auto
// mode the caller starts each migration and reports it with Started.
func (e *Engine) Observe(s Sample) []Decision { return e.Evaluate(s).Decisions }

// Evaluate is Observe that also says which violating VMs it held back
// and why (not sustained for the window yet, in cool-down, the cap on
// concurrent migrations, no host with room).
func (e *Engine) Evaluate(s Sample) Evaluation {
	if e.p.Mode == ModeOff {
		clear(e.since)
		return Evaluation{}
	}
	var held []Held
	hold := func(v VM, kind, format string, args ...any) {
		held = append(held, Held{VM: v.ID, Host: v.Host, Kind: kind, Reason: fmt.Sprintf(format, args...)})
	}
	hosts := make(map[string]Host, len(s.Hosts))
	for _, h := range s.Hosts {
		hosts[h.ID] = h
	}
	largest := map[string]string{} // host → its largest running VM
	for _, v := range s.VMs {
		if cur, ok := largest[v.Host]; !ok || v.Memory > vmByID(s.VMs, cur).Memory {
			largest[v.Host] = v.ID
		}
	}
	type cand struct {
		v      VM
		reason string
		for_   time.Duration
	}
	var cands []cand
	seen := map[string]bool{}
	for _, v := range s.VMs {
		seen[v.ID] = true
		h, ok := hosts[v.Host]
		if !ok || !v.Running || e.inFlight[v.ID] {
			delete(e.since, v.ID)
			continue
		}
		why := e.violation(v, h, largest[v.Host] == v.ID)
		if why == "" {
			delete(e.since, v.ID)
			continue
		}
		start, ok := e.since[v.ID]
		if !ok {
			e.since[v.ID] = s.At
			start = s.At
		}
		lasted := s.At.Sub(start)
		if lasted < time.Duration(e.p.Window) {
			// Hysteresis: not sustained yet.
			hold(v, HeldWindow, "%s for %v of the %v window", why, lasted.Round(time.Second), time.Duration(e.p.Window))
			continue
		}
		if last, ok := e.lastMove[v.ID]; ok && s.At.Sub(last) < time.Duration(e.p.Cooldown) {
			hold(v, HeldCooldown, "%s, but in cool-down until %s (its last migration started %v ago; cool-down %v)", why,
				last.Add(time.Duration(e.p.Cooldown)).UTC().Format(time.TimeOnly), s.At.Sub(last).Round(time.Second), time.Duration(e.p.Cooldown))
			continue
		}
		cands = append(cands, cand{v, why, lasted})
	}
	for id := range e.since {
		if !seen[id] {
			delete(e.since, id)
		}
	}
	// The longest-suffering first.
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Or(cmp.Compare(b.for_, a.for_), cmp.Compare(a.v.ID, b.v.ID)) })
	var out []Decision
	free := e.p.MaxConcurrent - len(e.inFlight)
	planned := map[string]Host{} // destination load including this round's decisions
	for _, c := range cands {
		if len(out) >= free {
			hold(c.v, HeldCap, "%s for %v, but %d migrations are in flight or decided (max_concurrent %d)", c.reason, c.for_.Round(time.Second), len(e.inFlight)+len(out), e.p.MaxConcurrent)
			continue
		}
		to, ok, why := e.destination(c.v, hosts, s.VMs, planned)
		if !ok {
			hold(c.v, HeldNoRoom, "%s for %v, but no host has room: %s", c.reason, c.for_.Round(time.Second), why)
			continue
		}
		out = append(out, Decision{VM: c.v.ID, From: c.v.Host, To: to.ID, Auto: e.p.Mode == ModeAuto,
			Reason: fmt.Sprintf("%s for %v; %s has room (CPU %.0f%%, memory %.0f%% after the move)", c.reason, c.for_.Round(time.Second), to.ID, 100*to.CPU, 100*to.Mem)})
	}
	slices.SortFunc(held, func(a, b Held) int { return cmp.Compare(a.VM, b.VM) })
	return Evaluation{Decisions: out, Held: held}
}

func vmByID(vms []VM, id string) VM {
	for _, v := range vms {
		if v.ID == id {
			return v
		}
	}
	return VM{}
}

// destination picks the host that will be least loaded after taking v,
// among online hosts other than v's that stay within capacity and do not
// hold a VM of v's anti-affinity group; the site preference breaks ties
// of equal rank first.
//
// When no host qualifies, why says what ruled each one out.
func (e *Engine) destination(v VM, hosts map[string]Host, vms []VM, planned map[string]Host) (best Host, found bool, why string) {
	src := hosts[v.Host]
	bestRank, bestLoad := 0, 0.0
	var ruledOut []string
	ids := slices.Sorted(maps.Keys(hosts))
	for _, id := range ids {
		h := hosts[id]
		if p, ok := planned[h.ID]; ok {
			h = p
		}
		switch {
		case h.ID == v.Host:
			continue
		case !h.Online:
			ruledOut = append(ruledOut, h.ID+" offline")
			continue
		case h.Cores <= 0 || h.MemBytes == 0:
			ruledOut = append(ruledOut, h.ID+" has not reported its capacity")
			continue
		case e.conflicts(v.ID, h.ID, vms):
			ruledOut = append(ruledOut, h.ID+" holds a VM of its anti-affinity group")
			continue
		}
		after := h
		after.CPU += v.CPU * float64(max(v.VCPUs, 1)) / float64(h.Cores)
		after.Mem += float64(v.Memory) / float64(h.MemBytes)
		if after.CPU > e.p.HostCPUMax || after.Mem > e.p.HostMemMax {
			ruledOut = append(ruledOut, fmt.Sprintf("%s would reach CPU %.0f%%, memory %.0f%% (max %.0f%%, %.0f%%)",
				h.ID, 100*after.CPU, 100*after.Mem, 100*e.p.HostCPUMax, 100*e.p.HostMemMax))
			continue
		}
		rank := 1
		switch {
		case e.p.Site == SiteSame && h.Site == src.Site, e.p.Site == SiteOther && h.Site != src.Site:
			rank = 0
		}
		load := max(after.CPU, after.Mem)
		if !found || rank < bestRank || (rank == bestRank && (load < bestLoad || (load == bestLoad && h.ID < best.ID))) {
			best, bestRank, bestLoad, found = after, rank, load, true
		}
	}
	if found {
		planned[best.ID] = best
		return best, true, ""
	}
	if len(ruledOut) == 0 {
		return best, false, "it is the only host"
	}
	return best, false, strings.Join(ruledOut, "; ")
}

// conflicts reports whether host holds a VM that must not share a host
// with vm.
func (e *Engine) conflicts(vm, host string, vms []VM) bool {
	for _, g := range e.p.AntiAffinity {
		if !slices.Contains(g, vm) {
			continue
		}
		for _, other := range vms {
			if other.ID != vm && other.Host == host && slices.Contains(g, other.ID) {
				return true
			}
		}
	}
	return false
}
