package mmc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/message"
)

// actionTimeout bounds how long the MMC waits for an agent to carry out an
// action (starting a VM process included).
const actionTimeout = 30 * time.Second

// ErrHostOffline is an action for a host without a live session.
var ErrHostOffline = errors.New("mmc: host offline")

// sessionByHost finds the live session of the host named name: the
// session of the one approved agent holding that name (hostAgent), never
// of another agent that claims it.
func (s *Server) sessionByHost(name string) *session {
	s.mu.RLock()
	defer s.mu.RUnlock()
	pub, ok := s.hostAgent[name]
	if !ok {
		return nil
	}
	e := s.byKey[pub]
	if e == nil {
		return nil
	}
	return s.sessions[e.id]
}

// act sends an action to a host's agent and waits for its result.
func (s *Server) act(ctx context.Context, host string, a message.Action) (message.ActionResult, error) {
	ss := s.sessionByHost(host)
	if ss == nil {
		return message.ActionResult{}, fmt.Errorf("%w: %s", ErrHostOffline, host)
	}
	return s.actSession(ctx, ss, a)
}

// actSession sends an action on a session and waits for its result.
func (s *Server) actSession(ctx context.Context, ss *session, a message.Action) (message.ActionResult, error) {
	host := ss.name
	ch := make(chan message.ActionResult, 1)
	ss.mu.Lock()
	ss.nextID++
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
	if err := message.Send(ctx, ss.c, a); err != nil {
		return message.ActionResult{}, fmt.Errorf("mmc: send %s to %s: %w", a.Op, host, err)
	}
	select {
	case r := <-ch:
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

// hosts lists approved agents as hosts, with their latest report.
//
// It reads the in-memory snapshot (byKey, kept in step with the store by
// setAgent), not the store: the policy engine calls it every few seconds,
// and a store scan decodes every agent record (12% of the MMC's CPU at
// 1 000 agents).
func (s *Server) hosts() []api.Host {
	s.policyMu.Lock()
	current := s.engine.Policy().Version
	s.policyMu.Unlock()
	type holder struct {
		id, name, site string
		ss             *session
	}
	s.mu.RLock()
	agents := make([]holder, 0, len(s.hostAgent))
	for name, pub := range s.hostAgent {
		if e := s.byKey[pub]; e != nil {
			agents = append(agents, holder{e.id, name, e.site, s.sessions[e.id]})
		}
	}
	s.mu.RUnlock()
	out := make([]api.Host, 0, len(agents))
	for _, a := range agents {
		h := api.Host{ID: a.name, Agent: a.id, Site: a.site}
		if ss := a.ss; ss != nil {
			h.Online = true
			ss.mu.Lock()
			h.PolicyVersion = ss.policyAck
			h.PolicyLag = ss.policyAck < current
			if r := ss.report; r != nil {
				h.CPU, h.Mem, h.Net = r.Host.CPU, r.Host.Mem, r.Host.Net
				h.SwapIn, h.SwapOut, h.Cores, h.MemBytes = r.Host.SwapIn, r.Host.SwapOut, r.Host.Cores, r.Host.MemSize
				h.VMs = len(r.VMs)
				t := ss.reportAt
				h.ReportedAt = &t
			}
			ss.mu.Unlock()
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b api.Host) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// vms lists the VMs of every online host's latest report.
func (s *Server) vms() []api.VM {
	s.mu.RLock()
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.RUnlock()
	out := []api.VM{}
	for _, ss := range sessions {
		ss.mu.Lock()
		if r := ss.report; r != nil {
			for _, v := range r.VMs {
				vm := api.VM{ID: v.VM.ID, Host: ss.name, State: string(v.VM.State), CPU: v.Stats.CPU,
					Net: v.Stats.NetTx + v.Stats.NetRx, VCPUs: v.VM.VCPUs, Memory: v.VM.Memory, Dirty: v.Stats.Dirty}
				if v.Stats.MemTotal > 0 {
					vm.Mem = float64(v.Stats.MemUsed) / float64(v.Stats.MemTotal)
				}
				out = append(out, vm)
			}
		}
		ss.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b api.VM) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// hostOfVM finds which online host reports VM id.
func (s *Server) hostOfVM(id string) (string, bool) {
	for _, v := range s.vms() {
		if v.ID == id {
			return v.Host, true
		}
	}
	return "", false
}
