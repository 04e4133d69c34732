package mmc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/ferry-vm/ferry/internal/inventory"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
)

// The MMC's side of the inventory (package inventory): it mirrors the
// store's VM records and migrations into it, feeds it every report, and
// acts on what it finds — alarms, and the one-time adoption of records
// from before placements existed.

// Event kinds the inventory raises (besides inventory.KindUnknown and
// KindMisplaced).
const (
	// kindUnmanaged: an agent holding VMs was revoked (one alarm per
	// revocation, naming the host and how many VMs).
	kindUnmanaged = "vm-unmanaged"
	// kindAdopted: a legacy record was placed by its first report (a
	// log entry, not an alarm).
	kindAdopted = "vm-adopted"
)

// loadInventory mirrors the stored VM records and migrations into the
// inventory (after loadAgents: a migration from before agent ids is
// resolved by host name).
func (s *Server) loadInventory() error {
	vms, err := s.st.VMs()
	if err != nil {
		return err
	}
	ms, err := s.st.Migrations()
	if err != nil {
		return err
	}
	unplaced := 0
	s.invMu.Lock()
	for _, v := range vms {
		s.inv.SetVM(placementOf(v))
		if !v.Placed() {
			unplaced++
		}
	}
	s.invMu.Unlock()
	for _, m := range ms {
		s.noteMigration(m)
	}
	if unplaced > 0 {
		s.log.Warn("mmc: VM records without a placement (written before the inventory); each is placed by the first report of the one host that holds it",
			"count", unplaced)
	}
	return nil
}

func placementOf(v store.VM) inventory.Placement {
	return inventory.Placement{VM: v.Name, Agent: v.Agent, VCPUs: v.Spec.VCPUs, Memory: v.Spec.Memory}
}

// setVM mirrors a stored VM record.
func (s *Server) setVM(v store.VM) {
	s.invMu.Lock()
	s.inv.SetVM(placementOf(v))
	s.invMu.Unlock()
}

// refreshVM mirrors VM name's record as the store now has it (after a
// write that may have changed it, or a refused one).
func (s *Server) refreshVM(name string) {
	v, err := s.st.VM(name)
	s.invMu.Lock()
	defer s.invMu.Unlock()
	switch {
	case err == nil:
		s.inv.SetVM(placementOf(v))
	case errors.Is(err, store.ErrNotFound):
		s.inv.DeleteVM(name)
	default:
		s.log.Error("mmc: reading a VM record", "vm", name, "err", err)
	}
}

// migrationAgents are the agents of m's source and destination: the
// recorded ones, or for a record from before agent ids the approved
// holders of the names.
func (s *Server) migrationAgents(m migration.Record) (from, to string) {
	from, to = m.FromAgent, m.ToAgent
	if from == "" {
		from, _ = s.reg.holder(m.From)
	}
	if to == "" {
		to, _ = s.reg.holder(m.To)
	}
	return from, to
}

// agentFor is the agent m's orders for host go to.
func (s *Server) agentFor(m migration.Record, host string) string {
	from, to := m.FromAgent, m.ToAgent
	switch {
	case host == m.From && from != "":
		return from
	case host == m.To && to != "":
		return to
	}
	return ""
}

// noteMigration mirrors what a migration record (as stored) makes
// expected, and the placement its commit may have moved.
func (s *Server) noteMigration(m migration.Record) {
	from, to := s.migrationAgents(m)
	im := inventory.Migration{ID: m.ID, VM: m.VM, FromAgent: from, ToAgent: to, Open: m.State.Open()}
	for _, c := range m.Cleanup {
		_, host, ok := migration.ParseCleanup(c)
		if !ok {
			continue
		}
		switch {
		case host == m.From && from != "":
			im.Cleanup = append(im.Cleanup, from)
		case host == m.To && to != "":
			im.Cleanup = append(im.Cleanup, to)
		}
	}
	s.invMu.Lock()
	s.inv.SetMigration(im)
	s.invMu.Unlock()
}

// invMirror keeps the inventory's view of the agents in step with the
// registry's (registryMirror): whether each is managed (a revoked agent's
// VMs are listed unmanaged) and online.
type invMirror struct{ s *Server }

func (m invMirror) agentChanged(a store.Agent) {
	m.s.invMu.Lock()
	m.s.inv.SetAgent(inventory.Agent{ID: a.ID, Host: a.Name, Site: a.Site, Managed: a.State == store.StateApproved})
	m.s.invMu.Unlock()
}

func (m invMirror) agentRemoved(id string) {
	m.s.invMu.Lock()
	m.s.inv.DeleteAgent(id)
	m.s.invMu.Unlock()
}

func (m invMirror) onlineChanged(id string, online bool) {
	m.s.invMu.Lock()
	m.s.inv.SetOnline(id, online)
	m.s.invMu.Unlock()
}

// sessionFor is the session orders go to: the recorded agent's if there
// is one, else (records from before agent ids) the host name's holder's.
func (s *Server) sessionFor(agent, host string) *session {
	if agent != "" {
		return s.reg.session(agent)
	}
	return s.reg.sessionByHost(host)
}

// actOn sends an action to the recorded agent (or host, see sessionFor).
func (s *Server) actOn(ctx context.Context, agent, host string, a message.Action) (message.ActionResult, error) {
	ss := s.sessionFor(agent, host)
	if ss == nil {
		return message.ActionResult{}, fmt.Errorf("%w: %s", ErrHostOffline, firstNonEmpty(host, agent))
	}
	return s.actSession(ctx, ss, a)
}

// observe checks an agent's report against the inventory and acts on
// what it finds. It runs on the session's loop.
func (s *Server) observe(ss *session, r *message.Report) {
	obs := make([]inventory.Observation, 0, len(r.VMs))
	for _, v := range r.VMs {
		o := inventory.Observation{VM: v.VM.ID, State: string(v.VM.State), CPU: v.Stats.CPU, Net: v.Stats.NetTx + v.Stats.NetRx,
			Dirty: v.Stats.Dirty, VCPUs: v.VM.VCPUs, Memory: v.VM.Memory}
		if v.Stats.MemTotal > 0 {
			o.Mem = float64(v.Stats.MemUsed) / float64(v.Stats.MemTotal)
		}
		obs = append(obs, o)
	}
	s.invMu.Lock()
	findings := s.inv.Observe(ss.id, obs)
	s.invMu.Unlock()
	written, more := 0, 0
	for _, f := range findings {
		switch f.Kind {
		case inventory.KindUnknown, inventory.KindMisplaced:
			s.metrics.vmAlarms.WithLabelValues(f.Kind).Inc()
			if written == maxAlarmsPerReport {
				// A report may name thousands of VMs; each alarm is a
				// store write. Beyond the first few, one summary.
				more++
				continue
			}
			written++
			s.alarm(store.Event{Agent: f.Agent, Host: f.Host, Alarm: true, Level: "error", Kind: f.Kind, Message: f.Message()})
			s.log.Warn("mmc: ALARM "+f.Kind, "vm", f.VM, "agent", f.Agent, "host", f.Host, "placed_agent", f.PlacedAgent)
		case inventory.KindCleared:
			s.log.Info("mmc: VM report agrees with the record again", "vm", f.VM, "agent", f.Agent, "host", f.Host)
		case inventory.KindAdopt:
			s.adopt(f)
		}
	}
	if more > 0 {
		s.alarm(store.Event{Agent: ss.id, Host: ss.name, Alarm: true, Level: "error", Kind: inventory.KindUnknown,
			Message: fmt.Sprintf("%d more VMs reported by %s disagree with the inventory (not listed one by one)", more, ss.name)})
		s.log.Warn("mmc: ALARM more VMs disagree with the inventory", "agent", ss.id, "host", ss.name, "count", more)
	}
}

// maxAlarmsPerReport bounds the inventory alarms one report writes one by
// one; the rest are summed up in one.
const maxAlarmsPerReport = 8

// adopt places a legacy record on the agent that reported it, once: the
// store refuses it if anything placed the VM meanwhile.
func (s *Server) adopt(f inventory.Finding) {
	now := s.cfg.Now()
	v, err := s.st.AdoptVM(f.VM, f.Agent, now)
	if err != nil {
		s.log.Warn("mmc: adopting a VM record", "vm", f.VM, "agent", f.Agent, "err", err)
		s.refreshVM(f.VM)
		return
	}
	s.setVM(v)
	s.alarm(store.Event{Agent: f.Agent, Host: f.Host, Level: "info", Kind: kindAdopted, Message: f.Message()})
	s.audit.add(store.AuditEntry{Actor: "mmc", Action: "vm.adopt", Target: f.VM, Outcome: "ok",
		Detail: fmt.Sprintf("placed on host %s (agent %s), the first to report it", f.Host, f.Agent)})
	s.log.Info("mmc: VM record adopted", "vm", f.VM, "agent", f.Agent, "host", f.Host)
}

// revoked raises the one alarm a revocation of an agent holding VMs
// gets: they stay in the inventory, unmanaged (no order reaches them).
func (s *Server) revoked(a store.Agent) {
	s.invMu.Lock()
	vms := s.inv.PlacedOn(a.ID)
	s.invMu.Unlock()
	if len(vms) == 0 {
		return
	}
	msg := fmt.Sprintf("agent %s (host %s) revoked: %d VM(s) no longer managed (%s); listed as unmanaged until deleted",
		a.ID, a.Name, len(vms), strings.Join(vms, ", "))
	s.metrics.vmAlarms.WithLabelValues(kindUnmanaged).Inc()
	s.alarm(store.Event{Agent: a.ID, Host: a.Name, Alarm: true, Level: "error", Kind: kindUnmanaged, Message: msg})
	s.log.Warn("mmc: ALARM "+msg, "agent", a.ID, "host", a.Name, "vms", len(vms))
}

// alarm stores an MMC event (an alarm if e.Alarm).
func (s *Server) alarm(e store.Event) {
	e.Time = s.cfg.Now()
	if _, err := s.storeEvent(e); err != nil {
		s.log.Error("mmc: storing an event", "kind", e.Kind, "err", err)
	}
}

// alarmKinds are the alarm kinds counted by name in
// ferry_mmc_alarms_total; an agent names its own kinds, and any other
// counts as "other" (a label per agent-chosen string would let one agent
// grow the metrics without bound).
var alarmKinds = []string{"vm-stopped", "clock-offset", "facts-changed", "host-name-taken", "protocol-mismatch",
	inventory.KindUnknown, inventory.KindMisplaced, kindUnmanaged, kindEventsDropped}

// storeEvent stores an event (every event goes through here) and counts
// a new alarm.
func (s *Server) storeEvent(e store.Event) (bool, error) {
	fresh, err := s.st.AddEvent(e)
	if err == nil && fresh && e.Alarm {
		kind := "other"
		if slices.Contains(alarmKinds, e.Kind) {
			kind = e.Kind
		}
		s.metrics.alarms.WithLabelValues(kind).Inc()
	}
	return fresh, err
}

// vmsView lists the inventory's VMs.
func (s *Server) vmsView() []inventory.VM {
	s.invMu.Lock()
	defer s.invMu.Unlock()
	return s.inv.VMs()
}

// vmView is one VM's view.
func (s *Server) vmView(name string) (inventory.VM, bool) {
	s.invMu.Lock()
	defer s.invMu.Unlock()
	return s.inv.VM(name)
}
