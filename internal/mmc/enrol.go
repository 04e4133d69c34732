package mmc

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// firstMessageTimeout bounds how long a session may stay silent after its
// handshake.
const firstMessageTimeout = 10 * time.Second

// serveEnrol handles a session of a key that is unknown, pending, or
// approved but not yet in possession of its registration code. Such a
// session may only enrol: any other message ends it.
func (s *Server) serveEnrol(ctx context.Context, c *sudp.Conn, id string, pub [32]byte) {
	req, kind, err := message.First[message.EnrolRequest](ctx, c, message.TypeEnrolRequest, firstMessageTimeout)
	if err != nil {
		if kind != "" {
			s.badInput(c, "key:"+id, "enrol."+kind, err)
		}
		return
	}
	req.Facts = req.Facts.Normalize()
	now := s.cfg.Now()

	a, err := s.st.Agent(id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		a, err = s.newEnrolment(c, id, pub, req, now)
		if err != nil {
			return // answered and audited
		}
	case err != nil:
		s.log.Error("mmc: store", "err", err)
		return
	default:
		// A known key: remember this handshake, so that after a restart a
		// recording of it is still a replay.
		if t := c.Session().PeerTime; t.After(a.LastHandshake) {
			if a, err = s.st.UpdateAgent(id, func(a *store.Agent) error { a.LastHandshake = t; return nil }); err != nil {
				return
			}
			s.setAgent(a)
		}
	}

	// Wait for a decision while the agent stays connected; it reconnects
	// and asks again if the session drops.
	for {
		switch a.State {
		case store.StateApproved:
			if len(a.PendingCode) != identity.CodeLen {
				refuse(ctx, c, CodeProtocol, "already enrolled")
				return
			}
			s.deliverCode(ctx, c, a)
			return
		case store.StateRejected, store.StateRevoked:
			_ = message.Send(ctx, c, message.TypeEnrolReply, message.EnrolReply{State: string(a.State), AgentID: a.ID, Reason: "enrolment " + string(a.State)})
			return
		}
		if err := message.Send(ctx, c, message.TypeEnrolReply, message.EnrolReply{State: string(store.StatePending), AgentID: a.ID, Facts: a.Facts}); err != nil {
			return
		}
		wake := s.waitDecision(a.ID)
		select {
		case <-wake:
		case <-c.Done():
			return
		case <-ctx.Done():
			return
		}
		if a, err = s.st.Agent(id); err != nil {
			return
		}
	}
}

// newEnrolment records a new agent: pending, or approved at once with a
// valid join token. Nothing is stored for a request with a bad token.
func (s *Server) newEnrolment(c *sudp.Conn, id string, pub [32]byte, req message.EnrolRequest, now time.Time) (store.Agent, error) {
	src := c.RemoteAddr()
	a := store.Agent{
		ID: id, PublicKey: pub, Name: firstNonEmpty(req.Name, req.Facts.Hostname), Site: firstNonEmpty(req.Site, "default"),
		State: store.StatePending, Facts: req.Facts, LastFacts: req.Facts, EnrolledAt: now, EnrolAddr: src.String(),
		LastHandshake: c.Session().PeerTime,
	}
	var decidedBy string
	if req.Token != "" {
		tid, err := s.checkToken(req.Token, src.Addr(), now)
		if err != nil {
			s.metrics.tokenFailures.Inc()
			s.audit.add(store.AuditEntry{Actor: "key:" + id, Action: "enrol.token", Target: tid, Source: src.String(), Outcome: "denied", Detail: err.Error()})
			refuse(context.Background(), c, CodeProtocol, "join token not accepted")
			return a, err
		}
		decidedBy = "token:" + tid
	}
	if err := s.st.PutAgent(a); err != nil {
		s.log.Error("mmc: store", "err", err)
		return a, err
	}
	s.setAgent(a)
	s.metrics.enrolments.Inc()
	s.audit.add(store.AuditEntry{Actor: "key:" + id, Action: "enrol.request", Target: id, Source: src.String(), Outcome: "ok",
		Detail: fmt.Sprintf("hostname=%s name=%s site=%s ips=%s macs=%s disk=%s", a.Facts.Hostname, a.Name, a.Site,
			strings.Join(a.Facts.IPs, ","), strings.Join(a.Facts.MACs, ","), a.Facts.DiskID)})
	s.log.Info("mmc: enrolment request", "agent", id, "hostname", a.Facts.Hostname, "from", src.String())
	if decidedBy != "" {
		return s.decide(id, store.StateApproved, decidedBy, src.String())
	}
	return a, nil
}

// checkToken validates and consumes a join token, throttled per source.
func (s *Server) checkToken(tok string, src netip.Addr, now time.Time) (string, error) {
	tid, secret, err := identity.ParseToken(tok)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	ok := s.tokenRL.Allow(now, src)
	s.mu.Unlock()
	if !ok {
		s.metrics.throttled.Inc()
		return tid, errors.New("too many token attempts from this source")
	}
	if _, err := s.st.UseToken(tid, secret, now); err != nil {
		return tid, err
	}
	return tid, nil
}

// deliverCode sends an approved agent its registration code and waits for
// the agent to confirm it stored it; only then does the MMC forget M and
// switch the key to full sessions.
func (s *Server) deliverCode(ctx context.Context, c *sudp.Conn, a store.Agent) {
	err := message.Send(ctx, c, message.TypeEnrolReply, message.EnrolReply{State: string(store.StateApproved), AgentID: a.ID, Code: a.PendingCode, Facts: a.Facts})
	if err != nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, firstMessageTimeout)
	env, err := message.Receive(rctx, c)
	cancel()
	if err != nil || env.Type != message.TypeEnrolAck {
		return // the agent will come back for it
	}
	a, err = s.st.UpdateAgent(a.ID, func(a *store.Agent) error {
		clear(a.PendingCode)
		a.PendingCode = nil
		return nil
	})
	if err != nil {
		s.log.Error("mmc: store", "err", err)
		return
	}
	s.setAgent(a)
	s.audit.add(store.AuditEntry{Actor: "agent:" + a.ID, Action: "enrol.code-delivered", Target: a.ID, Source: c.RemoteAddr().String(), Outcome: "ok"})
}

// decide records an administrator's (or a token's) decision and wakes the
// agent's enrolment session, if one is waiting.
func (s *Server) decide(id string, to store.AgentState, by, source string) (store.Agent, error) {
	now := s.cfg.Now()
	var code identity.Code
	a, err := s.st.UpdateAgent(id, func(a *store.Agent) error {
		switch {
		case to == store.StateApproved && a.State == store.StatePending:
			var err error
			if code, err = identity.NewCode(s.cfg.Rand); err != nil {
				return err
			}
			a.PSK = identity.DerivePSK(code, s.clusterID, a.Facts)
			a.ReauthKey = identity.DeriveReauthKey(code, s.clusterID)
			a.AgentIDDigest = agentIDDigest(code, a.Facts)
			a.PendingCode = append([]byte(nil), code[:]...)
		case to == store.StateRejected && a.State == store.StatePending:
		case to == store.StateRevoked && a.State != store.StateRejected:
			clear(a.PSK[:])
			clear(a.ReauthKey[:])
			clear(a.PendingCode)
			a.PendingCode = nil
		default:
			return fmt.Errorf("%w: agent %s is %s", ErrConflict, id, a.State)
		}
		a.State, a.DecidedAt, a.DecidedBy = to, now, by
		return nil
	})
	clear(code[:])
	if err != nil {
		return a, err
	}
	s.setAgent(a)
	s.audit.add(store.AuditEntry{Actor: actorOf(by), Action: "agent." + verbOf(to), Target: id, Source: source, Outcome: "ok", Detail: "by " + by})
	s.log.Info("mmc: agent "+verbOf(to), "agent", id, "by", by)
	s.mu.Lock()
	if w, ok := s.waiters[id]; ok {
		close(w)
		delete(s.waiters, id)
	}
	sess := s.sessions[id]
	s.mu.Unlock()
	if to == store.StateRevoked && sess != nil {
		sess.end(CodeRevoked, "agent revoked")
	}
	return a, nil
}

// ErrConflict is a decision that does not apply to the agent's state.
var ErrConflict = errors.New("mmc: conflict")

func (s *Server) waitDecision(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.waiters[id]
	if !ok {
		w = make(chan struct{})
		s.waiters[id] = w
	}
	return w
}

// agentIDDigest is SHA-256 of the paper's Agent_Id = M | IP | MAC | disk-id.
func agentIDDigest(m identity.Code, f identity.Facts) [32]byte {
	h := sha256.New()
	h.Write(m[:])
	h.Write([]byte("|" + strings.Join(f.IPs, ",") + "|" + strings.Join(f.MACs, ",") + "|" + f.DiskID))
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func verbOf(s store.AgentState) string {
	switch s {
	case store.StateApproved:
		return "approve"
	case store.StateRejected:
		return "reject"
	case store.StateRevoked:
		return "revoke"
	}
	return string(s)
}

func actorOf(by string) string {
	if strings.HasPrefix(by, "token:") {
		return by
	}
	return "admin"
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
