package mmc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
)

// The cluster's admin endpoints (`ferry ctl mmcs …`). All but
// /v1/cluster/self run on the leader (forward.go); self is each member's
// own view of itself, which the leader asks every member for when it
// lists them.

// memberStatusTimeout bounds the leader's wait for a member's status: a
// member that does not answer in time is listed as unreachable.
const memberStatusTimeout = time.Second

// selfStatus is this member as it sees itself.
func (s *Server) selfStatus() api.MMCMember {
	n := s.repl.node
	m := api.MMCMember{ID: s.repl.id, Address: string(s.repl.addr), Admin: s.AdminURL(), Term: n.Term(), AppliedIndex: n.AppliedIndex()}
	switch n.State() {
	case raft.Leader:
		m.State = "leader"
	case raft.Candidate:
		m.State = "candidate"
	case raft.Follower:
		m.State = "follower"
		if lc := n.LastContact(); !lc.IsZero() {
			ms := time.Since(lc).Milliseconds()
			m.LastContactMS = &ms
		}
	default:
		m.State = "unreachable"
	}
	return m
}

func (s *Server) handleClusterSelf(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.selfStatus())
}

// handleClusterMembers lists the configuration's members with each one's
// own status (asked over its admin stream, in parallel).
func (s *Server) handleClusterMembers(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	servers, _, err := s.repl.node.Configuration(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	recs, err := s.st.Members()
	if err != nil {
		writeInternal(w, err)
		return
	}
	admin := map[string]string{}
	for _, m := range recs {
		admin[m.ID] = m.Admin
	}
	out := make([]api.MMCMember, len(servers))
	var wg sync.WaitGroup
	for i, sv := range servers {
		base := api.MMCMember{ID: string(sv.ID), Address: string(sv.Address), Admin: admin[string(sv.ID)], Voter: sv.Suffrage == raft.Voter}
		if string(sv.ID) == s.repl.id {
			st := s.selfStatus()
			st.Voter = base.Voter
			out[i] = st
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = s.memberStatus(ctx, sv.Address, base)
		}()
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b api.MMCMember) int {
		switch {
		case a.State == "leader" && b.State != "leader":
			return -1
		case b.State == "leader" && a.State != "leader":
			return 1
		}
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	writeJSON(w, http.StatusOK, out)
}

// memberStatus asks the member at addr for its own status.
func (s *Server) memberStatus(ctx context.Context, addr raft.ServerAddress, base api.MMCMember) api.MMCMember {
	unreachable := func(err error) api.MMCMember {
		base.State, base.Error = "unreachable", err.Error()
		return base
	}
	ctx, cancel := context.WithTimeout(ctx, memberStatusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://mmc/v1/cluster/self", nil)
	if err != nil {
		return unreachable(err)
	}
	req.Header.Set("Authorization", "Bearer "+string(s.adminTok))
	resp, err := s.forwarder(addr).Do(req)
	if err != nil {
		return unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return unreachable(fmt.Errorf("status %d", resp.StatusCode))
	}
	var got api.MMCMember
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 64<<10)).Decode(&got); err != nil {
		return unreachable(err)
	}
	if got.ID != base.ID {
		return unreachable(fmt.Errorf("the member at %s says it is %q", addr, got.ID))
	}
	// The configuration, not the member, says whether it votes and
	// where it is.
	got.Voter, got.Address = base.Voter, base.Address
	if got.Admin == "" {
		got.Admin = base.Admin
	}
	return got
}

func (s *Server) handleCreateMMCJoinToken(w http.ResponseWriter, r *http.Request) {
	var req api.JoinTokenRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	ttl, ok := tokenTTL(req.TTL, 7*24*time.Hour)
	if !ok {
		writeErr(w, http.StatusBadRequest, "ttl must be a duration between 1s and 168h, e.g. 1h")
		return
	}
	tok, t, err := s.mintToken(ttl, 1, store.PurposeMMC)
	if err != nil {
		writeStoreErr(w, err)
		return
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "mmc.join-token", Target: t.ID, Source: clientAddr(r), Outcome: "ok",
		Detail: fmt.Sprintf("ttl=%v", ttl)})
	writeJSON(w, http.StatusCreated, api.JoinToken{Token: tok, ID: t.ID, Expires: t.Expires})
}

// handleRemoveMember takes a member out of the configuration, then off
// the record (its key gets no more raft streams).
func (s *Server) handleRemoveMember(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	servers, _, err := s.repl.node.Configuration(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if !slices.ContainsFunc(servers, func(sv raft.Server) bool { return string(sv.ID) == id }) {
		// Out of the configuration already (a removal whose outcome
		// was unknown did commit): finish it by removing the record.
		recs, err := s.st.Members()
		if err == nil && slices.ContainsFunc(recs, func(m store.Member) bool { return m.ID == id }) {
			if err := s.st.RemoveMember(id); err != nil {
				writeClusterErr(w, err)
				return
			}
			s.dirty.markMembers()
			writeJSON(w, http.StatusOK, struct{}{})
			return
		}
		writeErr(w, http.StatusNotFound, "no such member")
		return
	}
	if len(servers) == 1 {
		writeErr(w, http.StatusConflict, "the cluster's last member cannot be removed")
		return
	}
	if err := s.repl.node.RemoveServer(ctx, raft.ServerID(id)); err != nil {
		writeClusterErr(w, err)
		return
	}
	if id != s.repl.id {
		// A leader that removed itself is no longer one: the next leader
		// has the record removed when it syncs (the configuration is
		// the authority).
		if err := s.st.RemoveMember(id); err != nil {
			s.log.Warn("mmc: removing a member's record", "member", id, "err", err)
		}
	}
	s.dirty.markMembers()
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "mmc.remove", Target: id, Source: clientAddr(r), Outcome: "ok"})
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleTransferLeadership hands the leadership to another voter and
// answers with the new leader once this member knows it.
func (s *Server) handleTransferLeadership(w http.ResponseWriter, r *http.Request) {
	var req api.LeadershipRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	var addr raft.ServerAddress
	if req.ID != "" {
		servers, _, err := s.repl.node.Configuration(ctx)
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		i := slices.IndexFunc(servers, func(sv raft.Server) bool { return string(sv.ID) == req.ID })
		switch {
		case i < 0:
			writeErr(w, http.StatusNotFound, "no such member")
			return
		case servers[i].Suffrage != raft.Voter:
			writeErr(w, http.StatusConflict, "that member does not vote")
			return
		case req.ID == s.repl.id:
			writeJSON(w, http.StatusOK, api.LeadershipResult{Leader: s.repl.id})
			return
		}
		addr = servers[i].Address
	}
	if err := s.repl.node.LeadershipTransfer(ctx, raft.ServerID(req.ID), addr); err != nil {
		writeClusterErr(w, err)
		return
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, id := s.repl.node.Leader(); id != "" && string(id) != s.repl.id {
			s.audit.add(store.AuditEntry{Actor: "admin", Action: "mmc.transfer-leadership", Target: string(id), Source: clientAddr(r), Outcome: "ok"})
			writeJSON(w, http.StatusOK, api.LeadershipResult{Leader: string(id)})
			return
		}
		select {
		case <-ctx.Done():
			writeErr(w, http.StatusGatewayTimeout, "the leadership was handed over but no new leader is known yet")
			return
		case <-tick.C:
		}
	}
}

func writeClusterErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, replica.ErrNotLeader):
		w.Header().Set("Retry-After", "1")
		writeErr(w, http.StatusServiceUnavailable, err.Error()+"; retry")
	case errors.Is(err, replica.ErrOutcomeUnknown):
		// 504 like a forward abandoned mid-way: 503 says "not done".
		writeErr(w, http.StatusGatewayTimeout, err.Error()+": check, then retry")
	case errors.Is(err, context.DeadlineExceeded):
		writeErr(w, http.StatusGatewayTimeout, err.Error())
	default:
		writeErr(w, http.StatusInternalServerError, err.Error())
	}
}

// handleReady is /readyz: 200 while this member can serve the admin API
// and agents — it leads, or it knows the leader to forward to and send
// agents to — and 503 with the reason otherwise (an election under way,
// a member cut off from the majority).
func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	if s.repl == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: starting\n"))
		return
	}
	switch leader, _ := s.repl.node.Leader(); {
	case s.leading.Load():
		_, _ = w.Write([]byte("ready: leader\n"))
	case leader != "" && leader != s.repl.addr:
		_, _ = w.Write([]byte("ready: follower of " + string(leader) + "\n"))
	default:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: no leader known (an election, or this member is cut off from the majority)\n"))
	}
}
