package mmc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ferry-vm/ferry/internal/api"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/policy"
	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
)

// decisionLog keeps the policy engine's recent decisions for the API.
type decisionLog struct {
	mu  sync.Mutex
	buf []DecisionRecord
}

// DecisionRecord is one decision with when it was made and what came of it.
type DecisionRecord struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
	Mode   string    `json:"mode"`   // dry-run or auto
	Action string    `json:"action"` // recommended, started, or why not
}

const decisionLogSize = 200

func (l *decisionLog) add(r DecisionRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, r)
	if len(l.buf) > decisionLogSize {
		l.buf = l.buf[len(l.buf)-decisionLogSize:]
	}
}

func (l *decisionLog) list() []DecisionRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]DecisionRecord{}, l.buf...)
}

// policyLoop owns the policy engine (internal/policy, pure): the policy
// in force and its stored versions, the migrations the engine counts as
// in flight, and its recent decisions. Its lock is the engine's only one.
type policyLoop struct {
	st *store.Store

	mu        sync.Mutex
	engine    *policy.Engine
	decisions decisionLog
	// last is the latest evaluation's outcome, for "why nothing moved".
	last api.PolicyStatus
}

// newPolicyLoop puts the stored policy (or the default) in force.
func newPolicyLoop(st *store.Store) (*policyLoop, error) {
	p := policy.Default()
	doc, err := st.Policy()
	if err != nil {
		return nil, err
	}
	if doc != nil {
		if err := json.Unmarshal(doc, &p); err != nil {
			return nil, fmt.Errorf("mmc: stored policy: %w", err)
		}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("mmc: stored policy: %w", err)
		}
	}
	e, err := policy.New(p)
	if err != nil {
		return nil, err
	}
	return &policyLoop{st: st, engine: e}, nil
}

// current is the policy in force.
func (l *policyLoop) current() policy.Policy {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.engine.Policy()
}

// set validates p, gives it the next version, stores it and puts it in
// force; it returns the policy and its stored document.
func (l *policyLoop) set(p policy.Policy) (policy.Policy, []byte, error) {
	if err := p.Validate(); err != nil {
		return p, nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	p.Version = l.engine.Policy().Version + 1
	doc, err := json.Marshal(p)
	if err != nil {
		return p, nil, err
	}
	if err := l.st.PutPolicy(doc); err != nil {
		if errors.Is(err, store.ErrStale) || errors.Is(err, replica.ErrOutcomeUnknown) {
			// The stored policy is not the one in force here (a write
			// whose outcome was unknown did commit): take the stored
			// one, so that the next attempt builds on it.
			if stored, lerr := loadPolicy(l.st); lerr == nil {
				_ = l.engine.SetPolicy(stored)
			}
		}
		return p, nil, err
	}
	return p, doc, l.engine.SetPolicy(p)
}

// loadPolicy reads the stored policy (the default if none was set).
func loadPolicy(st *store.Store) (policy.Policy, error) {
	p := policy.Default()
	doc, err := st.Policy()
	if err != nil || doc == nil {
		return p, err
	}
	if err := json.Unmarshal(doc, &p); err != nil {
		return p, fmt.Errorf("mmc: stored policy: %w", err)
	}
	return p, p.Validate()
}

// started and finished keep the engine's count of migrations in flight
// (its cap and cool-downs).
func (l *policyLoop) started(vm string, at time.Time) {
	l.mu.Lock()
	l.engine.Started(vm, at)
	l.mu.Unlock()
}

func (l *policyLoop) finished(vm string) {
	l.mu.Lock()
	l.engine.Finished(vm)
	l.mu.Unlock()
}

// observe runs the engine on a sample; it returns its decisions and the
// policy they were made under, and keeps what it held back and why.
func (l *policyLoop) observe(smp policy.Sample) ([]policy.Decision, policy.Policy) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ev := l.engine.Evaluate(smp)
	p := l.engine.Policy()
	st := api.PolicyStatus{EvaluatedAt: smp.At, Mode: p.Mode, Decided: len(ev.Decisions), Held: []api.PolicyHeld{}}
	for _, h := range ev.Held {
		st.Held = append(st.Held, api.PolicyHeld{VM: h.VM, Host: h.Host, Kind: h.Kind, Reason: h.Reason})
	}
	l.last = st
	return ev.Decisions, p
}

// decisionOutcome is a decision's action as a metric label.
func decisionOutcome(action string) string {
	switch {
	case action == "recommended":
		return "recommended"
	case strings.HasPrefix(action, "migration "):
		return "planned"
	}
	return "not-planned"
}

// status is the latest evaluation's outcome.
func (l *policyLoop) status() api.PolicyStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.last
	st.Held = slices.Clone(st.Held)
	if st.Mode == "" {
		st.Mode = l.engine.Policy().Mode
	}
	return st
}

// setPolicy puts p in force and pushes it to every agent.
func (s *Server) setPolicy(p policy.Policy, by string) (policy.Policy, error) {
	p, doc, err := s.pol.set(p)
	if err != nil {
		return p, err
	}
	// Push to every agent, outside the engine's lock: a slow agent must
	// not hold up the engine or the API.
	for _, ss := range s.reg.live() {
		s.pushPolicyDoc(context.Background(), ss, p.Version, doc)
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "policy.set", Target: fmt.Sprintf("v%d", p.Version), Source: by, Outcome: "ok", Detail: string(doc)})
	return p, nil
}

// sample turns the MMC's model — its host views and its inventory, whose
// VMs are where the MMC placed them, with the load their hosts report —
// into the policy engine's input. Only a VM its placed host reports
// running counts as running (an unknown, unmanaged or unplaced VM is
// never moved by policy).
func (s *Server) sample(now time.Time) policy.Sample {
	hosts := s.hosts()
	smp := policy.Sample{At: now}
	for _, h := range hosts {
		smp.Hosts = append(smp.Hosts, policy.Host{ID: h.ID, Site: h.Site, Online: h.Online, CPU: h.CPU, Mem: h.Mem,
			SwapOut: h.SwapOut, Cores: h.Cores, MemBytes: h.MemBytes})
	}
	for _, v := range s.vmsView() {
		if v.Host == "" {
			continue
		}
		smp.VMs = append(smp.VMs, policy.VM{ID: v.Name, Host: v.Host, Running: v.State == string(hypervisor.StateRunning),
			CPU: v.CPU, VCPUs: v.VCPUs, Memory: v.Memory, Net: v.Net})
	}
	return smp
}

// runPolicy evaluates the policy every interval until ctx ends.
func (s *Server) runPolicy(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		decisions, pol := s.pol.observe(s.sample(now))
		mode := pol.Mode
		held := map[string]int{}
		for _, h := range s.pol.status().Held {
			held[h.Kind]++
		}
		for _, k := range policy.HeldKinds {
			s.metrics.policyHeld.WithLabelValues(k).Set(float64(held[k]))
		}
		for _, d := range decisions {
			rec := DecisionRecord{Time: now, VM: d.VM, From: d.From, To: d.To, Reason: d.Reason, Mode: mode, Action: "recommended"}
			if d.Auto {
				if m, err := s.planMigration(d.VM, d.To, d.Reason, "policy", migration.Options{AllowPostcopy: pol.Postcopy}); err != nil {
					rec.Action = "not planned: " + err.Error()
				} else {
					rec.Action = "migration " + m.ID + " planned"
				}
			}
			s.pol.decisions.add(rec)
			s.metrics.policyDecisions.WithLabelValues(mode, decisionOutcome(rec.Action)).Inc()
			s.log.Info("policy: decision", "vm", d.VM, "from", d.From, "to", d.To, "mode", mode, "action", rec.Action, "reason", d.Reason)
			s.audit.add(store.AuditEntry{Actor: "policy", Action: "policy.decision", Target: d.VM, Outcome: "ok",
				Detail: fmt.Sprintf("%s → %s (%s, %s): %s", d.From, d.To, mode, rec.Action, d.Reason)})
		}
	}
}

// pushPolicy sends the policy in force to one agent session.
func (s *Server) pushPolicy(ctx context.Context, ss *session) {
	p := s.pol.current()
	doc, err := json.Marshal(p)
	if err != nil {
		return
	}
	s.pushPolicyDoc(ctx, ss, p.Version, doc)
}

func (s *Server) pushPolicyDoc(ctx context.Context, ss *session, version uint64, doc []byte) {
	if err := ss.send(ctx, message.Policy{Version: version, Doc: doc}); err != nil {
		s.log.Debug("mmc: policy push", "agent", ss.id, "err", err)
	}
}

// reload puts the stored policy back in force with a fresh engine (a new
// leader: the previous one's counts of migrations in flight are rebuilt
// by the orchestrator as it resumes them).
func (l *policyLoop) reload() error {
	fresh, err := newPolicyLoop(l.st)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.engine = fresh.engine
	return nil
}
