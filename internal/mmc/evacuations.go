package mmc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferry-vm/ferry/internal/evacuation"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
)

// Evacuations: a host's or a site's VMs moved as one group. Package
// evacuation plans the group and decides, step by step, which of its
// migrations start and which are cancelled; this file is its driver on
// the leader — it feeds the steps the group's migration records, carries
// their decisions out through the same planning as any migration, and
// stores the group's record (a raft command). A new leader picks every
// running group up from its record where the last one left it.

// evacuationTick is how often the driver steps the running groups when
// nothing wakes it earlier (a quarter of evacuation.Handover: the next VM
// starts within that of when it should): an evacuation's request or
// cancel, and the end of one of a group's migrations (fleet.ended), do.
const evacuationTick = 100 * time.Millisecond

// startEvacuation plans the evacuation req asks for and stores it; the
// driver starts its first migrations at once.
func (s *Server) startEvacuation(req evacuation.Request, o migration.Options, by string) (evacuation.Record, error) {
	if err := o.Check(); err != nil {
		return evacuation.Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	pol := s.pol.current()
	req.HostMemMax, req.AntiAffinity = pol.HostMemMax, pol.AntiAffinity
	items, err := evacuation.Plan(req, s.evacuationHosts(), s.evacuationVMs())
	if errors.Is(err, evacuation.ErrBadRequest) {
		return evacuation.Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err != nil {
		return evacuation.Record{}, err
	}
	now := s.cfg.Now()
	r, err := s.st.CreateEvacuation(evacuation.Record{Scope: req.Scope, Source: req.Source, Target: req.Target, PerLink: req.PerLink,
		State: evacuation.Running, By: by, Options: o, Items: items, Created: now, Updated: now})
	if err != nil {
		return r, err
	}
	s.audit.add(store.AuditEntry{Actor: by, Action: "evacuation.start", Target: r.ID, Outcome: "ok",
		Detail: fmt.Sprintf("%s %s → %s: %d VMs, %d per link", r.Scope, r.Source, cmp.Or(r.Target, "any"), len(r.Items), r.PerLink)})
	s.metrics.evacStarted.Inc()
	s.log.Info("mmc: evacuation planned", "id", r.ID, "scope", r.Scope, "source", r.Source, "to", r.Target, "vms", len(r.Items))
	s.kickEvacuations()
	return r, nil
}

// evacuationHosts is the planner's view of the hosts.
func (s *Server) evacuationHosts() []evacuation.Host {
	var out []evacuation.Host
	for _, h := range s.hosts() {
		out = append(out, evacuation.Host{ID: h.ID, Site: h.Site, Online: h.Online, CPU: h.CPU, Mem: h.Mem, Cores: h.Cores, MemBytes: h.MemBytes})
	}
	return out
}

// evacuationVMs is the planner's view of the VMs: where the inventory
// places them, with the load their hosts report.
func (s *Server) evacuationVMs() []evacuation.VM {
	s.invMu.Lock()
	defer s.invMu.Unlock()
	var out []evacuation.VM
	for _, v := range s.inv.VMs() {
		if v.Host == "" {
			continue
		}
		out = append(out, evacuation.VM{ID: v.Name, Host: v.Host, Running: v.State == string(hypervisor.StateRunning),
			CPU: v.CPU, VCPUs: v.VCPUs, Memory: v.Memory, Dirty: v.Dirty, Busy: s.inv.Migrating(v.Name)})
	}
	return out
}

// cancelEvacuation records an administrator's cancel; the driver
// carries it out.
func (s *Server) cancelEvacuation(id, by string) (evacuation.Record, error) {
	r, err := s.st.CancelEvacuation(id, s.cfg.Now())
	if errors.Is(err, store.ErrConflict) {
		return r, conflict{err}
	}
	if err != nil {
		return r, err
	}
	s.audit.add(store.AuditEntry{Actor: by, Action: "evacuation.cancel", Target: id, Outcome: "ok"})
	s.kickEvacuations()
	return r, nil
}

func (s *Server) kickEvacuations() {
	select {
	case s.evacKick <- struct{}{}:
	default:
	}
}

// runEvacuations steps the running groups until ctx ends (the
// leadership with it).
func (s *Server) runEvacuations(ctx context.Context) {
	t := time.NewTicker(evacuationTick)
	defer t.Stop()
	// A new leader first looks through every migration record for the
	// groups' migrations: the last leader may have started one it did
	// not get to record (evacuation.Step adopts it). After that a step
	// reads only the records its groups name, until a write of a group
	// fails and leaves the same doubt.
	scan := true
	for {
		scan = s.stepEvacuations(scan)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.evacKick:
		}
	}
}

// stepEvacuations takes every running group one step; scan reads every
// migration record rather than only those the groups name. It returns
// whether the next step must scan.
func (s *Server) stepEvacuations(scan bool) bool {
	groups, err := s.st.Evacuations()
	if err != nil {
		s.log.Warn("mmc: reading evacuations", "err", err)
		return scan
	}
	groups = slices.DeleteFunc(groups, func(r evacuation.Record) bool { return !r.State.Open() })
	if len(groups) == 0 {
		return false
	}
	var found []migration.Record
	if scan {
		all, err := s.st.Migrations()
		if err != nil {
			s.log.Warn("mmc: reading migrations for evacuations", "err", err)
			return true
		}
		found = slices.DeleteFunc(all, func(m migration.Record) bool { return m.Group == "" })
	} else {
		for _, r := range groups {
			for _, it := range r.Items {
				if it.State != evacuation.Moving {
					continue
				}
				m, err := s.st.Migration(it.Migration)
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					s.log.Warn("mmc: reading an evacuation's migration", "id", r.ID, "migration", it.Migration, "err", err)
					return false
				}
				if err == nil {
					found = append(found, m)
				}
			}
		}
	}
	byGroup := map[string][]evacuation.Migration{}
	records := map[string]migration.Record{}
	for _, m := range found {
		em := evacuation.FromRecord(m)
		if live := s.orch.live(m.ID); live != nil {
			em.EndsAt = live.EndsAt
		}
		byGroup[m.Group] = append(byGroup[m.Group], em)
		records[m.ID] = m
	}
	next := false
	for _, r := range groups {
		if !s.stepEvacuation(r, byGroup[r.ID], records) {
			next = true
		}
	}
	return next
}

// stepEvacuation takes group r one step; false means its record could
// not be written (the next step must look for migrations it started).
func (s *Server) stepEvacuation(r evacuation.Record, migs []evacuation.Migration, records map[string]migration.Record) bool {
	now := s.cfg.Now()
	next, act, changed := evacuation.Step(r, migs, now)
	for _, id := range act.Cancel {
		if records[id].CancelRequested {
			continue
		}
		if _, err := s.requestCancel(id, "evacuation "+r.ID); err != nil && !errors.Is(err, ErrConflict) {
			s.log.Warn("mmc: evacuation could not cancel a migration", "id", r.ID, "migration", id, "err", err)
		}
	}
	for k, i := range act.Start {
		it := next.Items[i]
		reason := fmt.Sprintf("evacuation %s of %s %s", r.ID, r.Scope, r.Source)
		m, err := s.planGroupMigration(it.VM, it.To, reason, "evacuation", r.ID, r.Options, act.StartAt[k])
		if err != nil {
			next.Refused(i, err.Error(), now)
		} else {
			next.Started(i, m.ID, now)
		}
		changed = true
	}
	if !changed {
		return true
	}
	stored, err := s.st.UpdateEvacuation(next, r.Version)
	switch {
	case errors.Is(err, store.ErrStale), errors.Is(err, replica.ErrOutcomeUnknown):
		// A cancel landed meanwhile, or the write's fate is unknown: the
		// next step reads the record again (and adopts any migration
		// started here that the record does not name).
		s.kickEvacuations()
		return false
	case err != nil:
		s.log.Warn("mmc: evacuation record", "id", r.ID, "err", err)
		return false
	}
	if !stored.State.Open() {
		s.metrics.evacEnded.WithLabelValues(string(stored.State)).Inc()
		sum := evacuation.Summarize(stored, nil, now)
		s.audit.add(store.AuditEntry{Actor: "evacuation", Action: "evacuation.end", Target: stored.ID, Outcome: string(stored.State),
			Detail: fmt.Sprintf("%d moved, %d not moved, %d cancelled in %s", sum.Completed, sum.Failed, sum.Cancelled, time.Duration(sum.TotalMS)*time.Millisecond)})
		s.log.Info("mmc: evacuation ended", "id", stored.ID, "state", stored.State, "moved", sum.Completed, "not_moved", sum.Failed, "total_ms", sum.TotalMS)
	}
	return true
}

// evacuations lists the groups in the order they were created.
func (s *Server) evacuations() ([]evacuation.Record, error) {
	all, err := s.st.Evacuations()
	slices.SortFunc(all, func(a, b evacuation.Record) int { return bySequence(a.ID, b.ID) })
	return all, err
}

// progressOf is the live progress of the group's open migrations.
func (s *Server) progressOf(r evacuation.Record) map[string]float64 {
	out := map[string]float64{}
	for _, it := range r.Items {
		if it.State != evacuation.Moving {
			continue
		}
		if live := s.orch.live(it.Migration); live != nil {
			out[it.Migration] = live.Progress
		} else if m, err := s.st.Migration(it.Migration); err == nil {
			out[it.Migration] = m.Progress
		}
	}
	return out
}
