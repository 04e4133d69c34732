// Package inventory is the MMC's picture of its VMs: where each one is
// (the placement the MMC records — the agent whose host holds it) and
// what the agents say about it (their latest reports). It is pure: no
// clock, no I/O, no goroutines, no locks; the MMC feeds it and holds it
// under its own mutex.
//
// The placement is the MMC's record, written to the store by VM life-cycle
// commands and committed migrations and mirrored here (SetVM, DeleteVM).
// A report is an observation checked against it (Observe): a VM the
// inventory does not know, or one it places on another agent, is an
// alarm — raised once per (VM, agent) until a report clears it — and
// never moves the record. What a migration makes expected is exempt: its
// destination holds the incoming copy while it is open, its source the
// paused copy until the source is told to destroy it (also while a
// cleanup for either host is pending), and a report or two after the
// migration ended, for a report already on its way when it ended.
package inventory

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Alarm and finding kinds.
const (
	// KindUnknown: an agent reports a VM the inventory has no record of.
	KindUnknown = "vm-unknown"
	// KindMisplaced: an agent reports a VM the inventory places on
	// another agent.
	KindMisplaced = "vm-misplaced"
	// KindAdopt: a record from before placements existed is reported by
	// the one agent that holds it: the MMC places it there (once, by a
	// store command conditional on "not placed yet"). Not an alarm.
	KindAdopt = "vm-adopt"
	// KindCleared: an alarm of this (VM, agent) no longer holds (its
	// latest report agrees with the record, or lacks the VM). Not an
	// alarm.
	KindCleared = "vm-cleared"
)

// States of a VM in the views, besides the hypervisor's (running,
// paused, migrating, stopped), which are what the placed host reports.
const (
	// StateUnknown: the VM's host is offline, has not reported since it
	// came online, or its latest report lacks the VM.
	StateUnknown = "unknown"
	// StateUnmanaged: the VM's agent is no longer approved (revoked):
	// the MMC can give it no order. The record stays until an
	// administrator deletes it.
	StateUnmanaged = "unmanaged"
	// StateUnplaced: a record from before placements existed, not yet
	// adopted by its host's agent.
	StateUnplaced = "unplaced"
)

// LingerReports is how many more reports of a VM an agent may send after
// the migration that made its copy expected ended (outcome recorded, no
// cleanup left) before the copy is judged like any other: a report the
// agent built before it destroyed the copy may still be on its way.
const LingerReports = 2

// Placement is a VM's record as the inventory needs it.
type Placement struct {
	VM     string
	Agent  string // "" for a record not placed yet (see KindAdopt)
	VCPUs  int
	Memory uint64
}

// Agent is an agent as the inventory needs it: the host name it holds,
// whether the MMC manages it (approved) and whether it is online.
type Agent struct {
	ID, Host, Site string
	Managed        bool
	Online         bool
}

// Observation is one VM in an agent's report.
type Observation struct {
	VM     string
	State  string
	CPU    float64 // 0–1 of its vCPUs
	Mem    float64 // 0–1 of its memory in use
	Net    float64 // bytes/s
	Dirty  float64 // bytes/s of memory written
	VCPUs  int
	Memory uint64
}

// Migration is what a migration record makes expected.
type Migration struct {
	ID, VM             string
	FromAgent, ToAgent string
	Open               bool
	// Cleanup lists the agents still to be told to drop their copy.
	Cleanup []string
}

// Finding is what Observe found about one VM reported by one agent.
type Finding struct {
	Kind  string
	VM    string
	Agent string
	Host  string // the reporting agent's host name
	// PlacedAgent/PlacedHost: where the record places the VM
	// (KindMisplaced).
	PlacedAgent, PlacedHost string
}

// Message is the finding as an operator reads it.
func (f Finding) Message() string {
	switch f.Kind {
	case KindUnknown:
		return fmt.Sprintf("host %s (agent %s) reports VM %s, which the MMC has no record of; the record is unchanged", f.Host, f.Agent, f.VM)
	case KindMisplaced:
		return fmt.Sprintf("host %s (agent %s) reports VM %s, which the MMC places on host %s (agent %s); the placement is unchanged",
			f.Host, f.Agent, f.VM, f.PlacedHost, f.PlacedAgent)
	case KindAdopt:
		return fmt.Sprintf("VM %s, on record from before placements, adopted by host %s (agent %s), the first to report it", f.VM, f.Host, f.Agent)
	case KindCleared:
		return fmt.Sprintf("host %s (agent %s) and the record agree again about VM %s", f.Host, f.Agent, f.VM)
	}
	return f.Kind + " " + f.VM
}

// VM is a VM as the views show it.
type VM struct {
	Name  string
	Agent string // "" if unplaced
	Host  string // the placed agent's host name
	Site  string
	State string
	CPU   float64
	Mem   float64
	Net   float64
	Dirty float64
	VCPUs int
	// Memory in bytes.
	Memory uint64
}

type key struct{ vm, agent string }

type agentState struct {
	Agent
	reported bool                   // a report since it came online
	report   map[string]Observation // latest report, by VM
}

// Inventory is the MMC's inventory. It is not safe for concurrent use.
type Inventory struct {
	vms        map[string]Placement
	agents     map[string]*agentState
	migrations map[string]Migration
	alarmed    map[key]string // (VM, agent) → the alarm raised and not cleared
	linger     map[key]int    // expected copies of ended migrations → reports left
}

// New returns an empty inventory.
func New() *Inventory {
	return &Inventory{vms: map[string]Placement{}, agents: map[string]*agentState{}, migrations: map[string]Migration{},
		alarmed: map[key]string{}, linger: map[key]int{}}
}

// SetVM records (or replaces) a VM's placement, as stored.
func (inv *Inventory) SetVM(p Placement) { inv.vms[p.VM] = p }

// DeleteVM forgets a VM, as deleted from the store.
func (inv *Inventory) DeleteVM(name string) { delete(inv.vms, name) }

// SetAgent records an agent's host name and whether it is managed; its
// online flag is SetOnline's.
func (inv *Inventory) SetAgent(a Agent) {
	cur := inv.agents[a.ID]
	if cur == nil {
		cur = &agentState{}
		inv.agents[a.ID] = cur
	}
	online := cur.Online
	cur.Agent = a
	cur.Online = online && a.Managed
}

// DeleteAgent forgets an agent whose record was deleted (a pending
// enrolment that expired: it never held VMs nor had a session).
func (inv *Inventory) DeleteAgent(id string) { delete(inv.agents, id) }

// SetOnline records that agent id's session started or ended. A new
// session starts with no report: until its first one, its VMs' state is
// unknown.
func (inv *Inventory) SetOnline(id string, online bool) {
	a := inv.agents[id]
	if a == nil {
		a = &agentState{Agent: Agent{ID: id}}
		inv.agents[id] = a
	}
	a.Online = online
	a.reported, a.report = false, nil
}

// SetMigration records what a migration (as stored) makes expected. The
// copies it stops expecting linger for LingerReports reports.
func (inv *Inventory) SetMigration(m Migration) {
	before := inv.expectedBy(m.ID)
	if m.Open || len(m.Cleanup) > 0 {
		inv.migrations[m.ID] = m
	} else {
		delete(inv.migrations, m.ID)
	}
	after := inv.expectedBy(m.ID)
	for k := range before {
		if !after[k] && !inv.expected(k) {
			inv.linger[k] = LingerReports
		}
	}
}

// expectedBy is the set of copies migration id makes expected.
func (inv *Inventory) expectedBy(id string) map[key]bool {
	out := map[key]bool{}
	m, ok := inv.migrations[id]
	if !ok {
		return out
	}
	if m.Open {
		for _, a := range []string{m.FromAgent, m.ToAgent} {
			if a != "" {
				out[key{m.VM, a}] = true
			}
		}
	}
	for _, a := range m.Cleanup {
		out[key{m.VM, a}] = true
	}
	return out
}

// expected reports whether some recorded migration expects k's copy.
func (inv *Inventory) expected(k key) bool {
	for id, m := range inv.migrations {
		if m.VM == k.vm && inv.expectedBy(id)[k] {
			return true
		}
	}
	return false
}

// migrating reports whether vm has a migration open or cleanups left.
func (inv *Inventory) migrating(vm string) bool {
	for _, m := range inv.migrations {
		if m.VM == vm {
			return true
		}
	}
	return false
}

// Observe checks agent's report against the record and keeps it as the
// agent's latest. It returns the alarms raised (once per VM and agent
// until cleared), the alarms cleared, and the adoptions due.
func (inv *Inventory) Observe(agent string, report []Observation) []Finding {
	a := inv.agents[agent]
	if a == nil {
		a = &agentState{Agent: Agent{ID: agent, Online: true}}
		inv.agents[agent] = a
	}
	a.reported = true
	a.report = make(map[string]Observation, len(report))
	for _, o := range report {
		a.report[o.VM] = o
	}
	var out []Finding
	names := make([]string, 0, len(a.report))
	for name := range a.report {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		k := key{name, agent}
		f := Finding{VM: name, Agent: agent, Host: a.Host}
		p, known := inv.vms[name]
		switch {
		case known && p.Agent == agent:
		case inv.expected(k):
		case inv.linger[k] > 0:
			inv.linger[k]--
			if inv.linger[k] == 0 {
				delete(inv.linger, k)
			}
			continue // neither raises nor clears: the copy is on its way out
		case !known:
			f.Kind = KindUnknown
		case p.Agent == "":
			if a.Managed && !inv.migrating(name) && inv.soleReporter(name, agent) {
				out = append(out, Finding{Kind: KindAdopt, VM: name, Agent: agent, Host: a.Host})
			}
			continue
		default:
			f.Kind, f.PlacedAgent = KindMisplaced, p.Agent
			if pa := inv.agents[p.Agent]; pa != nil {
				f.PlacedHost = pa.Host
			}
		}
		delete(inv.linger, k)
		if f.Kind == "" {
			if inv.alarmed[k] != "" {
				delete(inv.alarmed, k)
				f.Kind = KindCleared
				out = append(out, f)
			}
			continue
		}
		if inv.alarmed[k] != f.Kind {
			inv.alarmed[k] = f.Kind
			out = append(out, f)
		}
	}
	// What this agent no longer reports: its alarms clear, its
	// lingering copies are gone.
	for k := range inv.linger {
		if _, ok := a.report[k.vm]; k.agent == agent && !ok {
			delete(inv.linger, k)
		}
	}
	var cleared []Finding
	for k := range inv.alarmed {
		if _, ok := a.report[k.vm]; k.agent == agent && !ok {
			delete(inv.alarmed, k)
			cleared = append(cleared, Finding{Kind: KindCleared, VM: k.vm, Agent: agent, Host: a.Host})
		}
	}
	slices.SortFunc(cleared, func(x, y Finding) int { return strings.Compare(x.VM, y.VM) })
	return append(out, cleared...)
}

// soleReporter: no online agent but agent holds vm in its latest report.
func (inv *Inventory) soleReporter(vm, agent string) bool {
	for id, a := range inv.agents {
		if id == agent || !a.Online {
			continue
		}
		if _, ok := a.report[vm]; ok {
			return false
		}
	}
	return true
}

// Placement returns VM name's record.
func (inv *Inventory) Placement(name string) (Placement, bool) {
	p, ok := inv.vms[name]
	return p, ok
}

// Reporters lists the online agents whose latest report holds VM name.
func (inv *Inventory) Reporters(name string) []string {
	var out []string
	for id, a := range inv.agents {
		if _, ok := a.report[name]; ok && a.Online {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Reported returns what online agent's latest report says of VM name.
func (inv *Inventory) Reported(agent, name string) (Observation, bool) {
	a := inv.agents[agent]
	if a == nil || !a.Online {
		return Observation{}, false
	}
	o, ok := a.report[name]
	return o, ok
}

// PlacedOn lists the VMs placed on agent.
func (inv *Inventory) PlacedOn(agent string) []string {
	var out []string
	for name, p := range inv.vms {
		if p.Agent == agent {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// VMs lists the inventory's VMs, by name, each with the state its placed
// host reports (see the State constants for the others).
func (inv *Inventory) VMs() []VM {
	out := make([]VM, 0, len(inv.vms))
	for _, p := range inv.vms {
		out = append(out, inv.view(p))
	}
	slices.SortFunc(out, func(a, b VM) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// VM is one VM's view.
func (inv *Inventory) VM(name string) (VM, bool) {
	p, ok := inv.vms[name]
	if !ok {
		return VM{}, false
	}
	return inv.view(p), true
}

func (inv *Inventory) view(p Placement) VM {
	v := VM{Name: p.VM, Agent: p.Agent, VCPUs: p.VCPUs, Memory: p.Memory}
	if p.Agent == "" {
		v.State = StateUnplaced
		return v
	}
	a := inv.agents[p.Agent]
	if a != nil {
		v.Host, v.Site = a.Host, a.Site
	}
	switch {
	case a == nil || !a.Managed:
		v.State = StateUnmanaged
		return v
	case !a.Online || !a.reported:
		v.State = StateUnknown
		return v
	}
	o, ok := a.report[p.VM]
	if !ok {
		v.State = StateUnknown
		return v
	}
	v.State, v.CPU, v.Mem, v.Net, v.Dirty = o.State, o.CPU, o.Mem, o.Net, o.Dirty
	if v.VCPUs == 0 {
		v.VCPUs = o.VCPUs
	}
	if v.Memory == 0 {
		v.Memory = o.Memory
	}
	return v
}

// Agent returns what the inventory knows of agent id.
func (inv *Inventory) Agent(id string) (Agent, bool) {
	a := inv.agents[id]
	if a == nil {
		return Agent{}, false
	}
	return a.Agent, true
}

// OpenMigrations counts the migrations not yet at an outcome.
func (inv *Inventory) OpenMigrations() int {
	n := 0
	for _, m := range inv.migrations {
		if m.Open {
			n++
		}
	}
	return n
}

// Migrating reports whether VM name has a migration open or cleanups
// left (its copies on two hosts are expected meanwhile).
func (inv *Inventory) Migrating(name string) bool { return inv.migrating(name) }
