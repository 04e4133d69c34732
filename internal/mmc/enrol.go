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
	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// firstMessageTimeout bounds how long a session may stay silent after its
// handshake.
const firstMessageTimeout = 10 * time.Second

// serveEnrol handles a session of a key that is unknown, pending, or
// approved but not yet in possession of its registration code. Such a
// session may only enrol: any other message ends it. The decisions are
// enrolSession's (enrolcore.go); this drives it with the connection, the
// store and the clock.
//
// An enrolment slot (MaxEnrolSessions) is held only while the request is
// read and recorded; a session waiting for a decision holds none, is the
// only waiting session of its key (a newer one replaces it), and lasts
// at most EnrolWait. So pending keys cannot keep honest hosts from
// enrolling, nor keep sessions open for ever.
func (s *Server) serveEnrol(ctx context.Context, c *sudp.Conn, id string, pub [32]byte) {
	// Enrolments and joins write to the store: the leader's work.
	if s.redirect(ctx, c) {
		return
	}
	select {
	case s.enrolSlots <- struct{}{}:
	default:
		s.metrics.refused.WithLabelValues("enrol-busy").Inc()
		refuse(ctx, c, CodeProtocol, "too many enrolments in progress; retry later", true)
		return
	}
	slot := true
	releaseSlot := func() {
		if slot {
			slot = false
			<-s.enrolSlots
		}
	}
	defer releaseSlot()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	m := newEnrolSession(pub, s.enrolLimits(), s.cfg.Now())
	rd := message.NewReader(ctx, c)
	defer rd.Stop()
	var wake <-chan struct{}
	unsubscribe := func() {}
	defer func() { unsubscribe() }()
	releaseWait := func() {}
	defer func() { releaseWait() }()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()

	var act enrolAction
	first := true // no message read yet: it may be an MMC's JoinRequest
	for {
		switch act.Op {
		case enrolLookup:
			// Subscribe before reading the state, so a decision made
			// between the read and the wait is not missed.
			unsubscribe()
			wake, unsubscribe = s.reg.subscribe(id)
			v, ok := s.enrolLookup(c, id, pub)
			if !ok {
				return
			}
			act = m.Record(v, s.cfg.Now())
			continue
		case enrolCreate:
			a, err := s.newEnrolment(c, id, pub, m.Request(), s.cfg.Now())
			if errors.Is(err, store.ErrNameTaken) {
				refuse(ctx, c, CodeProtocol, nameTakenReason(a.Name), false)
				return
			}
			if err != nil {
				return // answered and audited
			}
			act = m.Record(enrolView{Found: true, Agent: a}, s.cfg.Now())
			continue
		case enrolReply, enrolFinal:
			if err := message.Send(ctx, c, act.Reply); err != nil || act.Op == enrolFinal {
				return
			}
			if m.Waiting() && slot {
				releaseSlot()
				releaseWait = s.reg.claimEnrolWait(id, cancel)
			}
		case enrolRefuse:
			if act.Metric != "" {
				s.metrics.refused.WithLabelValues(act.Metric).Inc()
			}
			if act.Audit != "" {
				s.audit.add(store.AuditEntry{Actor: "key:" + id, Action: "enrol.request", Target: id, Source: c.RemoteAddr().String(), Outcome: "denied", Detail: act.Audit})
			}
			refuse(ctx, c, CodeProtocol, act.Reason, act.Retry)
			return
		case enrolBad:
			s.badInput(c, "key:"+id, act.Audit, act.Err)
			return
		case enrolConfirm:
			s.confirmCode(c, id, act.Code)
			return
		case enrolEnd:
			return
		}
		if m.Done() {
			return
		}
		wait := time.Hour // no deadline: only an event moves the session on
		if d := m.Deadline(); !d.IsZero() {
			wait = max(d.Sub(s.cfg.Now()), 0)
		}
		timer.Reset(wait)
		select {
		case e := <-rd.C:
			if first && e.Type == message.TypeJoinRequest {
				s.serveJoin(ctx, c, pub, e, rd)
				return
			}
			first = false
			act = m.Message(e, nil)
		case <-rd.Done:
			if err := rd.Err(); errors.Is(err, message.ErrMalformed) {
				act = m.Message(message.Envelope{}, err)
				continue
			}
			return // the agent went away; it comes back if it cares
		case <-wake:
			wake = nil
			act = m.Wake()
		case <-timer.C:
			act = m.Timeout(s.cfg.Now())
		case <-ctx.Done():
			return
		}
	}
}

// enrolLimits are the bounds of one enrolment session.
func (s *Server) enrolLimits() enrolLimits {
	return enrolLimits{MaxPending: s.cfg.MaxPending, Request: firstMessageTimeout, Wait: s.cfg.EnrolWait, Ack: firstMessageTimeout}
}

// enrolLookup reads the key's record for an enrolment session; ok is
// false if the store failed (logged).
func (s *Server) enrolLookup(c *sudp.Conn, id string, pub [32]byte) (enrolView, bool) {
	a, err := s.st.Agent(id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return enrolView{Pending: s.reg.pendingCount()}, true
	case err != nil:
		s.log.Error("mmc: store", "err", err)
		return enrolView{}, false
	}
	if t := c.Session().PeerTime; a.PublicKey == pub && t.After(a.LastHandshake) {
		// A known key: remember this handshake, so that after a restart
		// a recording of it is still a replay.
		if a, err = s.st.AgentHandshakeSeen(id, t); err != nil {
			return enrolView{}, false
		}
		s.reg.publish(a)
	}
	return enrolView{Found: true, Agent: a}, true
}

// newEnrolment records a new agent: pending, or approved at once with a
// valid join token. Nothing is stored for a request with a bad token (the
// limit of pending enrolments is the session core's to enforce, before).
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
		if errors.Is(err, replica.ErrNotLeader) || errors.Is(err, replica.ErrOutcomeUnknown) {
			// The leadership moved while the token's use committed: the
			// agent asks again (at the new leader). A use whose outcome
			// was unknown may have been spent.
			refuse(context.Background(), c, CodeProtocol, "the MMC leadership moved; retry", true)
			return a, err
		}
		if err != nil {
			s.metrics.tokenFailures.Inc()
			s.audit.add(store.AuditEntry{Actor: "key:" + id, Action: "enrol.token", Target: tid, Source: src.String(), Outcome: "denied", Detail: err.Error()})
			refuse(context.Background(), c, CodeProtocol, "join token not accepted", errors.Is(err, errThrottled))
			return a, err
		}
		decidedBy = "token:" + tid
	}
	if err := s.st.CreateAgent(a); err != nil {
		// A concurrent enrolment of the same key won the race.
		s.log.Info("mmc: enrolment", "agent", id, "err", err)
		return a, err
	}
	s.reg.publish(a)
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

var errThrottled = errors.New("too many token attempts from this source")

// checkToken validates and consumes a join token, throttled per source.
func (s *Server) checkToken(tok string, src netip.Addr, now time.Time) (string, error) {
	tid, secret, err := identity.ParseToken(tok)
	if err != nil {
		return "", err
	}
	s.tokenMu.Lock()
	ok := s.tokenRL.Allow(now, src)
	s.tokenMu.Unlock()
	if !ok {
		s.metrics.throttled.Inc()
		return tid, errThrottled
	}
	if _, err := s.st.UseToken(tid, secret, now); err != nil {
		return tid, err
	}
	return tid, nil
}

// confirmCode records that the agent confirmed it stored the code this
// session delivered; only then does the MMC forget M and switch the key
// to full sessions. Only that code is confirmed: a newer approval's code
// must not be wiped by a stale session.
func (s *Server) confirmCode(c *sudp.Conn, id string, code []byte) {
	defer clear(code)
	a, err := s.st.ConfirmCode(id, code)
	if err != nil {
		s.log.Error("mmc: store", "err", err)
		return
	}
	s.reg.publish(a)
	s.audit.add(store.AuditEntry{Actor: "agent:" + a.ID, Action: "enrol.code-delivered", Target: a.ID, Source: c.RemoteAddr().String(), Outcome: "ok"})
}

// decide records an administrator's (or a token's) decision and wakes the
// agent's enrolment session, if one is waiting. An approval is refused
// (store.ErrNameTaken) if another approved agent holds the agent's host
// name: the refusal is on the agent's record, raised as an alarm and
// audited, and the waiting enrolment session tells the agent why.
func (s *Server) decide(id string, to store.AgentState, by, source string) (store.Agent, error) {
	cmd := store.AgentDecide{ID: id, To: to, By: by, At: s.cfg.Now()}
	var code identity.Code
	defer clear(code[:])
	if to == store.StateApproved {
		// The credentials derive from the facts recorded at enrolment,
		// which no command changes afterwards.
		cur, err := s.st.Agent(id)
		if err != nil {
			return cur, err
		}
		if code, err = identity.NewCode(s.cfg.Rand); err != nil {
			return cur, err
		}
		cmd.Credentials = &store.AgentCredentials{
			PSK:           identity.DerivePSK(code, s.clusterID, cur.Facts),
			ReauthKey:     identity.DeriveReauthKey(code, s.clusterID),
			AgentIDDigest: agentIDDigest(code, cur.Facts),
			Code:          code[:],
		}
	}
	a, err := s.st.DecideAgent(cmd)
	if errors.Is(err, store.ErrNameTaken) {
		s.reg.publish(a)
		s.nameTaken(a, by, source)
		s.reg.wake(id)
		return a, err
	}
	if err != nil {
		return a, err
	}
	s.reg.publish(a)
	s.audit.add(store.AuditEntry{Actor: actorOf(by), Action: "agent." + verbOf(to), Target: id, Source: source, Outcome: "ok", Detail: "by " + by})
	s.log.Info("mmc: agent "+verbOf(to), "agent", id, "by", by)
	s.reg.wake(id)
	// After the publish: a session registered before the revocation is
	// found here, and none registers after it (registry.register).
	sess := s.reg.session(id)
	if to == store.StateRevoked && sess != nil {
		sess.end(CodeRevoked, "agent revoked")
	}
	if to == store.StateRevoked {
		// Once: the store refuses to revoke an agent twice.
		s.revoked(a)
		s.revokeLinks(a)
	}
	return a, nil
}

// nameTaken makes a refused approval visible: an alarm, an audit entry
// and a log line, each with the reason on the agent's record.
func (s *Server) nameTaken(a store.Agent, by, source string) {
	s.metrics.refused.WithLabelValues("name-taken").Inc()
	if _, err := s.storeEvent(store.Event{Time: s.cfg.Now(), Agent: a.ID, Host: a.Name, Alarm: true, Level: "error", Kind: "host-name-taken",
		Message: fmt.Sprintf("agent %s (hostname %s, enrolled from %s) not approved: %s", a.ID, a.Facts.Hostname, a.EnrolAddr, a.Refusal)}); err != nil {
		s.log.Error("mmc: storing an alarm", "err", err)
	}
	s.audit.add(store.AuditEntry{Actor: actorOf(by), Action: "agent.approve", Target: a.ID, Source: source, Outcome: "denied", Detail: a.Refusal})
	s.log.Warn("mmc: ALARM host name taken; agent not approved", "agent", a.ID, "name", a.Name, "by", by, "why", a.Refusal)
}

// nameTakenReason is what an agent refused for its name is told (not
// which agent holds the name).
func nameTakenReason(name string) string {
	return fmt.Sprintf("host name %q is held by another agent, so this agent is not approved; enrol with another --name, or ask the administrator (ferry ctl agents list shows the refusal)", name)
}

// ErrConflict is a decision that does not apply to the agent's state.
var ErrConflict = errors.New("mmc: conflict")

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
