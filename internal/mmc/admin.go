package mmc

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/board"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/console"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/inventory"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/policy"
	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// maxBody bounds request bodies of the admin API.
const maxBody = 1 << 20

func (s *Server) adminHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(sudp.NewCollector(s.ep, prometheus.Labels{"role": "mmc"}))
	reg.MustRegister(s.Collectors()...)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// Probes for a load balancer or an orchestrator: no token, no secret.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.handleReady)
	// Every member answers; only the leader serves (forward.go).
	route := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.auth(s.leaderOnly(h).ServeHTTP)) }
	mux.HandleFunc("GET /v1/cluster/self", s.auth(s.handleClusterSelf))
	route("GET /v1/cluster/members", s.handleClusterMembers)
	route("POST /v1/cluster/join-tokens", s.handleCreateMMCJoinToken)
	route("DELETE /v1/cluster/members/{id}", s.handleRemoveMember)
	route("POST /v1/cluster/leadership", s.handleTransferLeadership)
	route("GET /v1/cluster/snapshot", s.handleSnapshot)
	route("GET /v1/agents", s.handleAgents)
	route("GET /v1/agents/{id}", s.handleAgent)
	route("POST /v1/agents/{id}/{action}", s.handleAgentAction)
	route("POST /v1/tokens", s.handleCreateToken)
	route("GET /v1/tokens", s.handleTokens)
	route("POST /v1/tokens/{id}/revoke", s.handleRevokeToken)
	route("GET /v1/audit", s.handleAudit)
	route("GET /v1/hosts", s.handleHosts)
	route("GET /v1/migrations", s.handleMigrations)
	route("GET /v1/migrations/{id}", s.handleMigration)
	route("POST /v1/migrations", s.handleMigrate)
	route("POST /v1/migrations/{id}/cancel", s.handleCancelMigration)
	route("POST /v1/migrations/{id}/bandwidth", s.handleMigrationBandwidth)
	route("GET /v1/evacuations", s.handleEvacuations)
	route("GET /v1/evacuations/{id}", s.handleEvacuation)
	route("POST /v1/evacuations", s.handleEvacuate)
	route("POST /v1/evacuations/{id}/cancel", s.handleCancelEvacuation)
	route("GET /v1/logs", s.handleEvents(false))
	route("GET /v1/alarms", s.handleEvents(true))
	route("POST /v1/alarms/{seq}/ack", s.handleAckAlarm)
	route("GET /v1/policy", s.handleGetPolicy)
	route("PUT /v1/policy", s.handleSetPolicy)
	route("GET /v1/policy/decisions", s.handleDecisions)
	route("GET /v1/policy/status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.pol.status()) })
	route("GET /v1/vms", s.handleVMs)
	route("POST /v1/vms", s.handleCreateVM)
	route("DELETE /v1/vms/{id}", s.handleDeleteVM)
	route("POST /v1/vms/{id}/workload", s.handleSetWorkload)
	route("GET /v1/board", s.handleBoardTopics)
	route("GET /v1/board/entries", s.handleBoardEntries)
	// The web console: a client of the routes above (package console).
	con := console.New(console.Config{
		API: mux, Token: s.adminTok, Secure: s.adminTLS != nil, Now: s.cfg.Now, Logger: s.log,
		Audit: func(action, outcome, source, detail string) {
			// A refusal is an unauthenticated party's: "unknown" puts it
			// under the audit's per-source throttle, so a loop of bad
			// requests cannot flood the (replicated) log.
			actor := "console"
			if outcome != "ok" {
				actor = "unknown"
			}
			s.audit.add(store.AuditEntry{Actor: actor, Action: action, Source: source, Outcome: outcome, Detail: detail})
		},
	})
	mux.Handle(console.Prefix, con.Handler())
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, console.Prefix, http.StatusSeeOther)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

func (s *Server) serveAdmin(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		// TLS handshake failures (scanners, clients without the CA) are
		// routine: debug level, not stderr noise.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("mmc: admin API: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// auth requires the admin bearer token, compared in constant time; every
// refusal is audited with the caller's address.
func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), s.adminTok) != 1 {
			s.audit.add(store.AuditEntry{Actor: "unknown", Action: "admin.auth", Target: r.Method + " " + r.URL.Path, Source: clientAddr(r), Outcome: "denied"})
			w.Header().Set("WWW-Authenticate", `Bearer realm="ferry"`)
			writeErr(w, http.StatusUnauthorized, "missing or wrong admin token (see DATA_DIR/admin.token)")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h(w, r)
	}
}

func (s *Server) view(a store.Agent) api.Agent {
	v := api.Agent{
		ID: a.ID, Hostname: a.Facts.Hostname, Name: a.Name, Site: a.Site, State: string(a.State),
		Online: s.reg.online(a.ID), PublicKey: handshake.EncodeKey(a.PublicKey), Facts: a.Facts, LastFacts: a.LastFacts,
		EnrolledAt: a.EnrolledAt, EnrolAddr: a.EnrolAddr, DecidedBy: a.DecidedBy, LastAddr: a.LastAddr, Refusal: a.Refusal,
		Version: a.Version, Protocol: a.Protocol, VersionSkew: a.Version != "" && a.Version != s.cfg.Version,
	}
	if !a.DecidedAt.IsZero() {
		t := a.DecidedAt
		v.DecidedAt = &t
	}
	if !a.LastSeen.IsZero() {
		t := a.LastSeen
		v.LastSeen = &t
	}
	return v
}

func (s *Server) handleAgents(w http.ResponseWriter, r *http.Request) {
	state := r.URL.Query().Get("state")
	switch store.AgentState(state) {
	case "", store.StatePending, store.StateApproved, store.StateRejected, store.StateRevoked:
	default:
		writeErr(w, http.StatusBadRequest, "state must be pending, approved, rejected or revoked")
		return
	}
	agents, err := s.st.Agents()
	if err != nil {
		writeInternal(w, err)
		return
	}
	out := []api.Agent{}
	for _, a := range agents {
		if state == "" || string(a.State) == state {
			out = append(out, s.view(a))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleAgent(w http.ResponseWriter, r *http.Request) {
	a, err := s.st.Agent(r.PathValue("id"))
	if err != nil {
		writeStoreErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.view(a))
}

func (s *Server) handleAgentAction(w http.ResponseWriter, r *http.Request) {
	to, ok := map[string]store.AgentState{"approve": store.StateApproved, "reject": store.StateRejected, "revoke": store.StateRevoked}[r.PathValue("action")]
	if !ok {
		writeErr(w, http.StatusNotFound, "action must be approve, reject or revoke")
		return
	}
	a, err := s.decide(r.PathValue("id"), to, "admin", clientAddr(r))
	if err != nil {
		writeStoreErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.view(a))
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	ttl, ok := tokenTTL(req.TTL, 30*24*time.Hour)
	if !ok {
		writeErr(w, http.StatusBadRequest, "ttl must be a duration between 1s and 720h, e.g. 1h")
		return
	}
	if req.Uses == 0 {
		req.Uses = 1
	}
	if req.Uses < 0 || req.Uses > 10000 {
		writeErr(w, http.StatusBadRequest, "uses must be between 1 and 10000")
		return
	}
	tok, t, err := s.mintToken(ttl, req.Uses, "")
	if err != nil {
		writeInternal(w, err)
		return
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "token.create", Target: t.ID, Source: clientAddr(r), Outcome: "ok",
		Detail: fmt.Sprintf("ttl=%v uses=%d", ttl, req.Uses)})
	writeJSON(w, http.StatusCreated, api.Token{Token: tok, ID: t.ID, Expires: t.Expires, Uses: req.Uses})
}

// tokenTTL parses a requested token lifetime: empty is an hour; else a
// duration in (0, max].
func tokenTTL(v string, max time.Duration) (time.Duration, bool) {
	if v == "" {
		return time.Hour, true
	}
	d, err := time.ParseDuration(v)
	return d, err == nil && d > 0 && d <= max
}

// mintToken creates and stores a join token for uses admissions of the
// given purpose; the secret is returned once, only its hash stored.
func (s *Server) mintToken(ttl time.Duration, uses int, purpose string) (string, store.Token, error) {
	tok, id, hash, err := identity.NewToken(s.cfg.Rand)
	if err != nil {
		return "", store.Token{}, err
	}
	now := s.cfg.Now()
	t := store.Token{ID: id, Hash: hash, Created: now, Expires: now.Add(ttl), UsesLeft: uses, CreatedBy: "admin", Purpose: purpose}
	return tok, t, s.st.PutToken(t)
}

// apiToken is a token as listed: its hash stays in the store.
func apiToken(t store.Token, now time.Time) api.TokenInfo {
	v := api.TokenInfo{ID: t.ID, Created: t.Created, Expires: t.Expires, UsesLeft: t.UsesLeft, Used: t.Used, CreatedBy: t.CreatedBy,
		RevokedBy: t.RevokedBy, Purpose: cmp.Or(t.Purpose, "agent")}
	switch {
	case !t.Revoked.IsZero():
		v.State = "revoked"
		r := t.Revoked
		v.Revoked = &r
	case !now.Before(t.Expires):
		v.State = "expired"
	case t.UsesLeft <= 0:
		v.State = "used-up"
	default:
		v.State = "active"
	}
	return v
}

func (s *Server) handleTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := s.st.Tokens()
	if err != nil {
		writeInternal(w, err)
		return
	}
	now := s.cfg.Now()
	out := make([]api.TokenInfo, 0, len(toks))
	for _, t := range toks {
		out = append(out, apiToken(t, now))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	now := s.cfg.Now()
	t, err := s.st.RevokeToken(id, "admin", now)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeErr(w, http.StatusNotFound, "no such token")
		return
	case errors.Is(err, store.ErrConflict):
		writeErr(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		writeInternal(w, err)
		return
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "token.revoke", Target: id, Source: clientAddr(r), Outcome: "ok",
		Detail: fmt.Sprintf("%d use(s) left, expiring %s", t.UsesLeft, t.Expires.Format(time.RFC3339))})
	writeJSON(w, http.StatusOK, apiToken(t, now))
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	after, limit, ok := paging(w, r)
	if !ok {
		return
	}
	list := s.st.Audit
	if newest, ok := newestFirst(w, r); !ok {
		return
	} else if newest {
		list = s.st.AuditNewest
	}
	entries, err := list(after, limit)
	if err != nil {
		writeInternal(w, err)
		return
	}
	out := make([]api.AuditEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, api.AuditEntry(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// newestFirst reads ?order=newest|oldest (default oldest: a reader that
// follows a log pages forward with after); on bad input it answers 400
// and returns ok false.
func newestFirst(w http.ResponseWriter, r *http.Request) (newest, ok bool) {
	switch r.URL.Query().Get("order") {
	case "", "oldest":
		return false, true
	case "newest":
		return true, true
	}
	writeErr(w, http.StatusBadRequest, "order must be newest or oldest")
	return false, false
}

// paging reads ?after=N&limit=M (default limit 1000, at most 100000); on
// bad input it answers 400 and returns ok false.
func paging(w http.ResponseWriter, r *http.Request) (after uint64, limit int, ok bool) {
	q := r.URL.Query()
	after, err1 := parseUint(q.Get("after"), 0)
	l, err2 := parseUint(q.Get("limit"), 1000)
	if err1 != nil || err2 != nil || l > 100000 {
		writeErr(w, http.StatusBadRequest, "after and limit must be non-negative integers (limit ≤ 100000)")
		return 0, 0, false
	}
	if l == 0 {
		l = 1000
	}
	return after, int(l), true
}

func parseUint(s string, def uint64) (uint64, error) {
	if s == "" {
		return def, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, api.Error{Error: msg})
}

// writeInternal answers an error the caller did not expect: a write
// that met a leadership change is the cluster's (503, or 503 with its
// outcome unknown), anything else 500.
func writeInternal(w http.ResponseWriter, err error) {
	if errors.Is(err, replica.ErrNotLeader) || errors.Is(err, replica.ErrOutcomeUnknown) {
		writeClusterErr(w, err)
		return
	}
	writeErr(w, http.StatusInternalServerError, err.Error())
}

func writeStoreErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeErr(w, http.StatusNotFound, "no such agent")
	case errors.Is(err, ErrConflict), errors.Is(err, store.ErrConflict):
		writeErr(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrInvalid):
		writeErr(w, http.StatusBadRequest, err.Error())
	default:
		writeInternal(w, err)
	}
}

// The API's types are made here, at the edge, from the MMC's own views.

func apiHost(h hostView) api.Host {
	out := api.Host{ID: h.ID, Agent: h.Agent, Site: h.Site, Online: h.Online, CPU: h.CPU, Mem: h.Mem, Net: h.Net,
		SwapIn: h.SwapIn, SwapOut: h.SwapOut, Cores: h.Cores, MemBytes: h.MemBytes, VMs: h.VMs,
		PolicyVersion: h.PolicyVersion, PolicyLag: h.PolicyLag}
	if !h.ReportedAt.IsZero() {
		t := h.ReportedAt
		out.ReportedAt = &t
	}
	return out
}

func apiVM(v inventory.VM) api.VM {
	return api.VM{ID: v.Name, Host: v.Host, State: v.State, CPU: v.CPU, Mem: v.Mem, Net: v.Net, Dirty: v.Dirty,
		VCPUs: v.VCPUs, Memory: v.Memory}
}

func (s *Server) handleHosts(w http.ResponseWriter, r *http.Request) {
	hosts := s.hosts()
	out := make([]api.Host, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, apiHost(h))
	}
	writeJSON(w, http.StatusOK, out)
}

// handleVMs lists the inventory: every VM the MMC has a record of, on the
// host it places it on, with the state that host reports (or unknown,
// unmanaged, unplaced: see package inventory).
func (s *Server) handleVMs(w http.ResponseWriter, r *http.Request) {
	vms := s.vmsView()
	out := make([]api.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, apiVM(v))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleCreateVM(w http.ResponseWriter, r *http.Request) {
	var req api.VMCreate
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	if err := hypervisor.CheckName(req.Name); err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	wl, err := hypervisor.ParseWorkload(req.Workload)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Memory == 0 {
		req.Memory = 256 << 20
	}
	if req.VCPUs == 0 {
		req.VCPUs = 1
	}
	if req.VCPUs < 0 || req.VCPUs > 256 || req.Memory > 1<<40 {
		writeErr(w, http.StatusBadRequest, "vcpus must be 1–256 and memory at most 1 TiB")
		return
	}
	if len(req.Disks) > 16 || len(req.NICs) > 16 {
		writeErr(w, http.StatusBadRequest, "at most 16 disks and 16 NICs")
		return
	}
	s.invMu.Lock()
	reporters := s.inv.Reporters(req.Name)
	s.invMu.Unlock()
	if len(reporters) > 0 {
		// Not on record (the store refuses those), but a host runs one.
		writeErr(w, http.StatusConflict, "a VM named "+req.Name+" already exists (reported by a host; see ferry ctl alarms)")
		return
	}
	agent, ok := s.reg.holder(req.Host)
	if !ok || s.reg.session(agent) == nil {
		writeActErr(w, fmt.Errorf("%w: %s", ErrHostOffline, req.Host))
		return
	}
	spec := hypervisor.Spec{Name: req.Name, Memory: req.Memory, VCPUs: req.VCPUs, Workload: wl,
		Machine: req.Machine, Kernel: req.Kernel, Disks: req.Disks, NICs: req.NICs}
	// The record first, placed on the agent the order goes to: of two
	// creations of one name the store lets one through, and the other
	// sends no order.
	rec, err := s.st.CreateVM(store.VM{Name: req.Name, Agent: agent, Spec: spec, Created: s.cfg.Now()})
	if errors.Is(err, store.ErrVMExists) {
		writeErr(w, http.StatusConflict, "a VM named "+req.Name+" already exists")
		return
	}
	if err != nil {
		writeInternal(w, err)
		return
	}
	s.setVM(rec)
	res, err := s.actOn(r.Context(), agent, req.Host, message.Action{Op: "vm.create", Spec: &spec})
	if err != nil {
		// Not created: the record goes (if still the one written here).
		if derr := s.st.DeleteVM(req.Name, agent); derr != nil {
			s.log.Error("mmc: removing the record of a VM not created", "vm", req.Name, "err", derr)
		}
		s.refreshVM(req.Name)
		writeActErr(w, err)
		return
	}
	if res.VM != nil && len(res.VM.Disks) == len(spec.Disks) && len(spec.Disks) > 0 {
		spec.Disks = res.VM.Disks // with the sizes the driver found
		if rec, err = s.st.DefineVM(req.Name, agent, spec); err != nil {
			s.log.Error("mmc: storing a VM's disk sizes", "vm", spec.Name, "err", err)
		} else {
			s.setVM(rec)
		}
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "vm.create", Target: req.Name, Source: clientAddr(r), Outcome: "ok", Detail: "host " + req.Host + " (agent " + agent + ")"})
	id := req.Name
	if res.VM != nil {
		id = res.VM.ID
	}
	writeJSON(w, http.StatusCreated, api.Created{ID: id})
}

// handleDeleteVM sends the delete order to the agent the record places
// the VM on, then deletes the record. A VM no agent manages (its agent
// revoked, or a record never placed) has no one to order: its record is
// forgotten, and the administrator told that nothing was destroyed.
func (s *Server) handleDeleteVM(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	v, ok := s.vmView(id)
	if !ok {
		writeErr(w, http.StatusNotFound, "no such VM in the inventory")
		return
	}
	s.invMu.Lock()
	migrating := s.inv.Migrating(id)
	s.invMu.Unlock()
	if migrating {
		writeErr(w, http.StatusConflict, "VM "+id+" has a migration open or not cleaned up yet; delete it once that ended")
		return
	}
	if v.State == inventory.StateUnmanaged || v.State == inventory.StateUnplaced {
		if err := s.st.DeleteVM(id, v.Agent); err != nil {
			s.refreshVM(id)
			writeStoreErr(w, err)
			return
		}
		s.refreshVM(id)
		s.audit.add(store.AuditEntry{Actor: "admin", Action: "vm.forget", Target: id, Source: clientAddr(r), Outcome: "ok",
			Detail: fmt.Sprintf("record removed; VM %s (host %q) not destroyed: no managed agent holds it", v.State, v.Host)})
		writeJSON(w, http.StatusOK, api.Created{ID: id})
		return
	}
	if _, err := s.actOn(r.Context(), v.Agent, v.Host, message.Action{Op: "vm.delete", VM: id}); err != nil {
		writeActErr(w, err)
		return
	}
	if err := s.st.DeleteVM(id, v.Agent); err != nil {
		s.log.Error("mmc: deleting a VM record", "vm", id, "err", err)
	}
	s.refreshVM(id)
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "vm.delete", Target: id, Source: clientAddr(r), Outcome: "ok", Detail: "host " + v.Host + " (agent " + v.Agent + ")"})
	writeJSON(w, http.StatusOK, api.Created{ID: id})
}

// handleSetWorkload changes a simulated VM's scripted load (the demo's
// way to provoke an SLA violation; real drivers refuse it).
func (s *Server) handleSetWorkload(w http.ResponseWriter, r *http.Request) {
	var req api.WorkloadRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	wl, err := hypervisor.ParseWorkload(req.Workload)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	id := r.PathValue("id")
	v, ok := s.vmView(id)
	if !ok {
		writeErr(w, http.StatusNotFound, "no such VM in the inventory")
		return
	}
	if _, err := s.actOn(r.Context(), v.Agent, v.Host, message.Action{Op: "vm.set-workload", VM: id, Workload: &wl}); err != nil {
		writeActErr(w, err)
		return
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "vm.set-workload", Target: id, Source: clientAddr(r), Outcome: "ok", Detail: req.Workload})
	writeJSON(w, http.StatusOK, api.Created{ID: id})
}

func writeActErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrHostOffline):
		writeErr(w, http.StatusNotFound, err.Error())
	default:
		writeErr(w, http.StatusBadGateway, err.Error())
	}
}

func (s *Server) handleGetPolicy(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.pol.current())
}

func (s *Server) handleSetPolicy(w http.ResponseWriter, r *http.Request) {
	var p policy.Policy
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed policy: "+err.Error())
		return
	}
	p, err := s.setPolicy(p, clientAddr(r))
	switch {
	case errors.Is(err, store.ErrStale):
		writeErr(w, http.StatusConflict, "the policy changed meanwhile; read it again and retry: "+err.Error())
		return
	case errors.Is(err, replica.ErrNotLeader), errors.Is(err, replica.ErrOutcomeUnknown):
		writeClusterErr(w, err)
		return
	case err != nil:
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) handleBoardTopics(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.board.Topics())
}

func (s *Server) handleBoardEntries(w http.ResponseWriter, r *http.Request) {
	topic := r.URL.Query().Get("topic")
	if topic == "" {
		writeErr(w, http.StatusBadRequest, "topic is required")
		return
	}
	after, _, ok := paging(w, r)
	if !ok {
		return
	}
	entries, err := s.board.Read("", topic, after)
	if err != nil {
		writeErr(w, http.StatusNotFound, err.Error())
		return
	}
	out := make([]api.BoardEntry, 0, len(entries))
	for _, e := range entries {
		body, _ := board.Decode(e.Kind, e.Body) // checked when posted
		out = append(out, api.BoardEntry{Seq: e.Seq, Time: e.Time, From: e.From, Kind: e.Kind, Body: body})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleDecisions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.pol.decisions.list())
}

func (s *Server) handleEvents(alarms bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		after, limit, ok := paging(w, r)
		if !ok {
			return
		}
		list := s.st.Events
		if newest, ok := newestFirst(w, r); !ok {
			return
		} else if newest {
			list = s.st.EventsNewest
		}
		evs, err := list(after, limit, alarms)
		if err != nil {
			writeInternal(w, err)
			return
		}
		out := make([]api.Event, 0, len(evs))
		for _, e := range evs {
			out = append(out, api.Event(e))
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func (s *Server) handleAckAlarm(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		writeErr(w, http.StatusBadRequest, "an alarm is named by its number (seq), a positive integer")
		return
	}
	e, err := s.st.AckAlarm(seq, "admin", s.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeErr(w, http.StatusNotFound, fmt.Sprintf("no event %d (pruned, or never stored)", seq))
		return
	case errors.Is(err, store.ErrNotAlarm):
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("event %d is a log line, not an alarm", seq))
		return
	case err != nil:
		writeInternal(w, err)
		return
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "alarm.ack", Target: strconv.FormatUint(seq, 10), Source: clientAddr(r), Outcome: "ok", Detail: e.Kind})
	writeJSON(w, http.StatusOK, api.Event(e))
}

func (s *Server) handleMigrations(w http.ResponseWriter, r *http.Request) {
	ms, err := s.migrations()
	if err != nil {
		writeInternal(w, err)
		return
	}
	// ?limit=N: the newest N only (the console's live view asks every
	// second; months of records need not cross the wire each time).
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n <= 0 {
			writeErr(w, http.StatusBadRequest, "limit must be a positive integer")
			return
		}
		ms = ms[max(0, len(ms)-n):]
	}
	out := make([]api.Migration, 0, len(ms))
	for _, m := range ms {
		out = append(out, s.apiMigration(m))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleMigration(w http.ResponseWriter, r *http.Request) {
	m, err := s.st.Migration(r.PathValue("id"))
	if err != nil {
		writeMigErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.apiMigration(m))
}

// apiMigration is a record as the API shows it, with the live progress
// of a transfer in flight.
func (s *Server) apiMigration(m migration.Record) api.Migration {
	live := s.orch.live(m.ID)
	if live != nil {
		m.Progress = max(m.Progress, live.Progress)
	}
	return api.Migration{Record: m, Live: live}
}

func (s *Server) handleMigrate(w http.ResponseWriter, r *http.Request) {
	var req api.MigrateRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	if req.VM == "" || req.To == "" {
		writeErr(w, http.StatusBadRequest, "vm and to are required")
		return
	}
	m, err := s.planMigration(req.VM, req.To, "requested by an administrator", "admin", req.Options)
	if err != nil {
		writeMigErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.Created{ID: m.ID})
}

func (s *Server) handleCancelMigration(w http.ResponseWriter, r *http.Request) {
	m, err := s.cancelMigration(r.Context(), r.PathValue("id"), "admin")
	if err != nil {
		writeMigErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.apiMigration(m))
}

func (s *Server) handleMigrationBandwidth(w http.ResponseWriter, r *http.Request) {
	var req api.BandwidthRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	if req.MaxBandwidth == nil || *req.MaxBandwidth < 0 {
		writeErr(w, http.StatusBadRequest, "max_bandwidth (bytes/s, 0 for no cap) is required and not negative")
		return
	}
	m, err := s.setMigrationRate(r.PathValue("id"), *req.MaxBandwidth, "admin")
	if err != nil {
		writeMigErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.apiMigration(m))
}

func writeMigErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, ErrHostOffline):
		writeErr(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrConflict):
		writeErr(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrInvalid):
		writeErr(w, http.StatusBadRequest, err.Error())
	default:
		writeInternal(w, err)
	}
}
