package mmc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
)

// actionTimeout bounds how long the MMC waits for an agent to carry out an
// action (starting a VM process included).
const actionTimeout = 30 * time.Second

// ErrHostOffline is an action for a host without a live session.
var ErrHostOffline = errors.New("mmc: host offline")

// actSession sends an action on a session and waits for its result.
func (s *Server) actSession(ctx context.Context, ss *session, a message.Action) (message.ActionResult, error) {
	host := ss.name
	ch := make(chan message.ActionResult, 1)
	ss.mu.Lock()
	ss.nextID++
	a = s.order(a)
	a.ID = ss.nextID
	ss.pending[a.ID] = ch
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		delete(ss.pending, a.ID)
		ss.mu.Unlock()
	}()
	// The timeout covers the send too: opening a message stream to a
	// peer that stopped reading has no deadline of its own.
	ctx, cancel := context.WithTimeout(ctx, actionTimeout)
	defer cancel()
	if err := ss.send(ctx, a); err != nil {
		return message.ActionResult{}, fmt.Errorf("mmc: send %s to %s: %w", a.Op, host, err)
	}
	select {
	case r := <-ch:
		if r.Fenced != 0 {
			// The agent obeys a newer leader: this MMC was deposed (the
			// raft slice steps down on it).
			s.metrics.ordersFenced.Inc()
			s.log.Warn("mmc: an agent refused an order: it obeys a newer leader", "agent", ss.id, "op", a.Op, "term", a.Term, "agent_term", r.Fenced)
		}
		if !r.OK {
			return r, fmt.Errorf("mmc: %s on %s: %s", a.Op, host, r.Error)
		}
		return r, nil
	case <-ss.c.Done():
		return message.ActionResult{}, fmt.Errorf("%w: %s went away during %s", ErrHostOffline, host, a.Op)
	case <-ctx.Done():
		return message.ActionResult{}, fmt.Errorf("mmc: %s on %s: %w", a.Op, host, ctx.Err())
	}
}

// hostView is a host as the MMC sees it: the approved agent holding the
// name, and its session's latest report. The policy engine and the API
// read it (admin.go turns it into api.Host).
type hostView struct {
	ID, Agent, Site string
	Online          bool
	CPU, Mem, Net   float64
	SwapIn, SwapOut float64
	Cores           int
	MemBytes        uint64
	VMs             int
	ReportedAt      time.Time
	PolicyVersion   uint64
	PolicyLag       bool
}

// hosts lists approved agents as hosts, with their latest report.
//
// It reads the registry's snapshot (kept in step with the store by
// publish), not the store: the policy engine calls it every few seconds,
// and a store scan decodes every agent record (12% of the MMC's CPU at
// 1 000 agents).
func (s *Server) hosts() []hostView {
	current := s.pol.current().Version
	agents := s.reg.holders()
	out := make([]hostView, 0, len(agents))
	for _, a := range agents {
		h := hostView{ID: a.name, Agent: a.id, Site: a.site}
		if ss := a.ss; ss != nil {
			h.Online = true
			ss.mu.Lock()
			h.PolicyVersion = ss.policyAck
			h.PolicyLag = ss.policyAck < current
			if r := ss.report; r != nil {
				h.CPU, h.Mem, h.Net = r.Host.CPU, r.Host.Mem, r.Host.Net
				h.SwapIn, h.SwapOut, h.Cores, h.MemBytes = r.Host.SwapIn, r.Host.SwapOut, r.Host.Cores, r.Host.MemSize
				h.VMs = len(r.VMs)
				h.ReportedAt = ss.reportAt
			}
			ss.mu.Unlock()
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b hostView) int { return strings.Compare(a.ID, b.ID) })
	return out
}
