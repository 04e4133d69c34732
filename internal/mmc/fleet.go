package mmc

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
)

// serverFleet is the rest of the MMC as the orchestrator sees it (fleet).
type serverFleet struct{ s *Server }

// order goes to the agent the record names for the host (the one that
// holds the copy), not to whoever holds the name now.
func (f serverFleet) order(ctx context.Context, rec migration.Record, host string, op migration.Op, o migration.Order) (*migration.Report, error) {
	r, err := f.s.actOn(ctx, f.s.agentFor(rec, host), host, message.Action{Op: string(op), Mig: &o})
	if err == nil && r.Mig == nil {
		err = fmt.Errorf("mmc: %s sent no migration report", host)
	}
	return r.Mig, err
}

func (f serverFleet) reachable(rec migration.Record, host string) bool {
	return f.s.sessionFor(f.s.agentFor(rec, host), host) != nil
}

func (f serverFleet) introduce(ctx context.Context, rec migration.Record, listener, dialer string) (srcRTT, dstRTT time.Duration, path, note string, err error) {
	s := f.s
	l, d := s.sessionFor(s.agentFor(rec, listener), listener), s.sessionFor(s.agentFor(rec, dialer), dialer)
	if l == nil || d == nil {
		err = fmt.Errorf("%w: both agents must be online to be introduced", ErrHostOffline)
	} else {
		path, note, err = s.IntroduceLink(ctx, migration.Topic(rec.ID), l.id, d.id)
	}
	rtt := func(agent, host string) time.Duration {
		if ss := s.sessionFor(agent, host); ss != nil {
			return ss.c.Stats().SmoothedRTT
		}
		return 0
	}
	return rtt(rec.FromAgent, rec.From), rtt(rec.ToAgent, rec.To), path, note, err
}

func (f serverFleet) upgrade(ctx context.Context, done <-chan struct{}, rec migration.Record, listener, dialer string, moved func(note string)) {
	s := f.s
	every := s.cfg.LinkUpgradeEvery
	if every <= 0 {
		every = DefaultLinkUpgradeEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-t.C:
		}
		l, d := s.sessionFor(s.agentFor(rec, listener), listener), s.sessionFor(s.agentFor(rec, dialer), dialer)
		if l == nil || d == nil {
			continue
		}
		if err := s.upgradeLink(ctx, migration.Topic(rec.ID), l, d); err != nil {
			s.log.Debug("mmc: the relayed link stays relayed", "migration", rec.ID, "err", err)
			continue
		}
		moved(fmt.Sprintf("relayed at first; moved to a direct path at %s", s.cfg.Now().UTC().Format(time.RFC3339)))
		return
	}
}

func (f serverFleet) note(ctx context.Context, topic, text string) {
	_ = f.s.postAsMMC(ctx, topic, board.KindNote, board.Note{Text: truncate(text)})
}

// env is what a planned migration's checks need from the MMC's view:
// whether its agents are online, the VM's definition if the source's
// agent reports the VM, and another host reporting it.
func (f serverFleet) env(m migration.Record) migration.Env {
	s := f.s
	from, _ := s.migrationAgents(m)
	e := migration.Env{SrcOnline: s.sessionFor(m.FromAgent, m.From) != nil, DstOnline: s.sessionFor(m.ToAgent, m.To) != nil}
	s.invMu.Lock()
	o, reported := s.inv.Reported(from, m.VM)
	var other string
	for _, a := range s.inv.Reporters(m.VM) {
		if a != from {
			other = a
			break
		}
	}
	if other != "" {
		if a, ok := s.inv.Agent(other); ok {
			other = a.Host
		}
	}
	s.invMu.Unlock()
	if reported {
		if def, err := s.st.VM(m.VM); err == nil {
			e.Spec = &def.Spec
		} else {
			e.Spec = &hypervisor.Spec{Name: m.VM, Memory: o.Memory, VCPUs: o.VCPUs}
		}
	}
	e.OtherHost = other
	return e
}

// resumed counts an open migration found at startup in the policy
// engine's in-flight migrations.
func (f serverFleet) resumed(m migration.Record) {
	f.s.pol.started(m.VM, m.Created)
}

// recorded mirrors a landed write in the inventory: a commit's write
// placed the VM on the destination's agent (in its transaction), and
// what the record expects of each host changed.
func (f serverFleet) recorded(m migration.Record) {
	f.s.noteMigration(m)
	f.s.refreshVM(m.VM)
	if m.Group != "" && (m.Armed() || m.State == migration.SwitchOver) {
		// Its link frees: the evacuation starts the next VM now.
		f.s.kickEvacuations()
	}
}

// ended closes a migration's books: the policy's in-flight count, the
// blackboard topic, the audit trail.
func (f serverFleet) ended(ctx context.Context, m migration.Record) {
	s := f.s
	s.pol.finished(m.VM)
	topic := migration.Topic(m.ID)
	s.releaseRelay(topic)
	_ = s.postAsMMC(ctx, topic, board.KindNote, board.Note{Text: "migration " + string(m.State)})
	s.board.Close(topic)
	detail := fmt.Sprintf("%s %s → %s", m.VM, m.From, m.To)
	s.metrics.migEnded.WithLabelValues(string(m.State)).Inc()
	if m.State == migration.Completed {
		s.metrics.migDuration.Observe(float64(m.TotalMS) / 1000)
		s.metrics.migDowntime.Observe(float64(m.DowntimeMS) / 1000)
		s.metrics.migBytes.Add(float64(m.BytesOnWire))
		detail += fmt.Sprintf(": total %d ms, downtime %d ms, %d bytes on the wire", m.TotalMS, m.DowntimeMS, m.BytesOnWire)
	} else if m.Error != "" {
		detail += ": " + m.Error
	}
	s.audit.add(store.AuditEntry{Actor: "orchestrator", Action: "migration." + string(m.State), Target: m.ID, Outcome: "ok", Detail: detail})
	if m.Group != "" {
		// Its evacuation starts the next queued VM now, not at its tick.
		s.kickEvacuations()
	}
}
