package mmc

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// Close codes (shared with agents in package message).
const (
	CodeRevoked      = message.CodeRevoked
	CodeReauthFailed = message.CodeReauthFailed
	CodeFactsChanged = message.CodeFactsChanged
	CodeProtocol     = message.CodeProtocol
	CodeReplaced     = message.CodeReplaced
)

// session is one live, authenticated agent session.
type session struct {
	id      string
	name    string // the host's name: its id in hosts list
	site    string
	c       *sudp.Conn
	hs      [32]byte // Noise handshake hash: re-auth answers are bound to it
	started time.Time
	once    sync.Once

	mu        sync.Mutex
	report    *message.Report // latest monitor report
	reportAt  time.Time
	nextID    uint64
	pending   map[uint64]chan message.ActionResult
	policyAck uint64        // policy version the agent acknowledged
	events    *agentEvents  // the agent's, shared with its other sessions
	welcomed  chan struct{} // closed once the Welcome is sent (send)
}

func (ss *session) end(code uint64, reason string) {
	ss.once.Do(func() { _ = ss.c.CloseWithError(code, reason) })
}

// errSessionGone is a send to a session that ended before its Welcome.
var errSessionGone = errors.New("mmc: the session ended")

// send sends msg once the agent has been sent its Welcome. The session is
// registered (and so reachable by orders, board relays, policy pushes)
// before the Welcome goes out, and each message rides its own stream: one
// sent earlier could overtake the Welcome, and the agent, which takes its
// first message for the Welcome, would end the session.
func (ss *session) send(ctx context.Context, msg message.Body) error {
	select {
	case <-ss.welcomed:
	case <-ss.c.Done():
		return errSessionGone
	case <-ctx.Done():
		return ctx.Err()
	}
	return message.Send(ctx, ss.c, msg)
}

// serveAgent runs an approved agent's session: Hello (facts check), then
// periodic re-authentication and clock probes until the session ends.
func (s *Server) serveAgent(ctx context.Context, c *sudp.Conn, id string) {
	src := c.RemoteAddr().String()
	pub := c.Session().PeerStatic
	a, err := s.st.Agent(id)
	if err != nil || a.State != store.StateApproved || a.PublicKey != pub {
		return // revoked between handshake and now
	}
	hello, kind, err := message.First[message.Hello](ctx, c, firstMessageTimeout)
	if err != nil {
		if kind != "" {
			s.badInput(c, "agent:"+id, "login."+kind, err)
		}
		return
	}
	if hello.Standby {
		s.serveStandby(ctx, c, id)
		return
	}
	if s.redirect(ctx, c) {
		return
	}
	if p := message.AgentProtocol(hello); p < message.MinProtocolVersion || p > message.ProtocolVersion {
		why := fmt.Sprintf("the agent speaks control protocol %d, this MMC (%s) %d–%d: upgrade the MMCs first, then the agents",
			p, s.cfg.Version, message.MinProtocolVersion, message.ProtocolVersion)
		s.metrics.refused.WithLabelValues("protocol").Inc()
		_, _ = s.storeEvent(store.Event{Time: s.cfg.Now(), Agent: id, Host: a.Name, Alarm: true, Level: "error", Kind: "protocol-mismatch",
			Message: fmt.Sprintf("login refused: %s (agent release %q)", why, hello.Version)})
		s.audit.add(store.AuditEntry{Actor: "agent:" + id, Action: "login.protocol", Target: id, Source: src, Outcome: "denied", Detail: why})
		s.log.Warn("mmc: agent speaks another control protocol; login refused", "agent", id, "protocol", p, "agent_version", hello.Version)
		refuse(ctx, c, CodeProtocol, why, false)
		return
	}
	ch := identity.Compare(a.Facts, hello.Facts)
	if len(ch.Stable) > 0 {
		what := strings.Join(ch.Stable, ", ")
		s.metrics.factAlarms.Inc()
		_, _ = s.storeEvent(store.Event{Time: s.cfg.Now(), Agent: id, Host: a.Name, Alarm: true, Level: "error", Kind: "facts-changed",
			Message: fmt.Sprintf("host facts changed at login from %s: %s", src, what)})
		s.log.Warn("mmc: ALARM host facts changed", "agent", id, "changed", what, "from", src)
		outcome := "denied"
		if s.cfg.AllowChangedFacts {
			outcome = "ok"
		}
		s.audit.add(store.AuditEntry{Actor: "agent:" + id, Action: "login.facts-changed", Target: id, Source: src, Outcome: outcome,
			Detail: fmt.Sprintf("changed: %s (enrolled disk=%s macs=%s; now disk=%s macs=%s)", what, a.Facts.DiskID, strings.Join(a.Facts.MACs, ","), hello.Facts.DiskID, strings.Join(hello.Facts.MACs, ","))})
		if !s.cfg.AllowChangedFacts {
			refuse(ctx, c, CodeFactsChanged, "host facts changed: "+what, false)
			return
		}
	}
	if len(ch.Volatile) > 0 {
		s.audit.add(store.AuditEntry{Actor: "agent:" + id, Action: "login.facts-updated", Target: id, Source: src, Outcome: "ok",
			Detail: "changed: " + strings.Join(ch.Volatile, ", ") + " ips=" + strings.Join(hello.Facts.IPs, ",")})
	}
	now := s.cfg.Now()
	a, err = s.st.AgentLoggedIn(store.AgentLogin{ID: id, Facts: hello.Facts.Normalize(), At: now, Addr: src, HandshakeAt: c.Session().PeerTime,
		Version: hello.Version, Protocol: message.AgentProtocol(hello)})
	if err != nil {
		return // no longer approved
	}
	s.reg.publish(a)
	ss := &session{id: id, name: a.Name, site: a.Site, c: c, hs: c.Session().HandshakeHash, started: now, pending: make(map[uint64]chan message.ActionResult), welcomed: make(chan struct{}), events: s.reg.eventsOf(pub, now)}
	// Register only if the agent is still approved, atomically with the
	// check (registry.register): a revocation either sees this session
	// (and decide ends it) or happened before (and we stop here).
	old, err := s.reg.register(pub, ss)
	switch {
	case errors.Is(err, errNotApproved):
		_ = c.CloseWithError(CodeRevoked, "agent revoked")
		return
	case errors.Is(err, errNotHolder):
		// Two approved agents of one name exist only in a database
		// written before approvals checked names: the first approved
		// keeps the host, and this one gets no session as that host.
		s.metrics.refused.WithLabelValues("name-taken").Inc()
		s.audit.add(store.AuditEntry{Actor: "agent:" + id, Action: "login.name-taken", Target: id, Source: src, Outcome: "denied",
			Detail: fmt.Sprintf("host name %q is held by another approved agent", a.Name)})
		refuse(ctx, c, CodeProtocol, nameTakenReason(a.Name), false)
		return
	}
	if old != nil {
		old.end(CodeReplaced, "replaced by a newer session")
	}
	defer func() {
		s.reg.unregister(ss)
		ss.end(0, "")
		s.metrics.online.Dec()
		s.log.Info("mmc: agent offline", "agent", id)
	}()
	s.metrics.online.Inc()
	s.metrics.logins.Inc()
	s.audit.add(store.AuditEntry{Actor: "agent:" + id, Action: "login", Target: id, Source: src, Outcome: "ok"})
	s.log.Info("mmc: agent online", "agent", id, "hostname", hello.Facts.Hostname, "from", src)
	if hello.Version != s.cfg.Version {
		s.log.Info("mmc: agent runs another release (same control protocol)", "agent", id, "agent_version", hello.Version, "mmc_version", s.cfg.Version)
	}
	if err := message.Send(ctx, c, message.Welcome{AgentID: id, Term: s.cfg.Cluster.Term(), Version: s.cfg.Version, Protocol: message.ProtocolVersion}); err != nil {
		return
	}
	close(ss.welcomed)
	s.sendMembers(ctx, c)
	s.pushPolicy(ctx, ss)
	s.sendOwedWithdrawals(ctx, ss)
	s.sessionLoop(ctx, ss, a.ReauthKey)
}

// sessionLoop multiplexes the agent's messages with the re-authentication
// schedule. A reader goroutine owned by this loop feeds it; it ends when
// the connection closes, which the loop guarantees on return.
func (s *Server) sessionLoop(ctx context.Context, ss *session, reauthKey [32]byte) {
	c := ss.c
	rd := message.NewReader(ctx, c)
	defer func() {
		ss.end(0, "")
		rd.Stop()
	}()

	ch := &challenger{key: reauthKey, hs: ss.hs}
	next := time.NewTimer(s.reauthDelay())
	defer next.Stop()
	deadline := time.NewTimer(time.Hour)
	deadline.Stop()
	defer deadline.Stop()
	handlers := s.agentHandlers(ss, ch, func() {
		deadline.Stop()
		next.Reset(s.reauthDelay())
	})
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.Done():
			return
		case <-rd.Done:
			return
		case <-next.C:
			msg, err := ch.next()
			if err != nil {
				return
			}
			if err := message.Send(ctx, c, msg); err != nil {
				return
			}
			deadline.Reset(s.cfg.ReauthTimeout)
		case <-deadline.C:
			s.reauthFailed(ss, "no answer within "+s.cfg.ReauthTimeout.String())
			return
		case e := <-rd.C:
			if err := handlers.Dispatch(ctx, e); err != nil {
				var bad *badMessage
				switch {
				case errors.As(err, &bad):
					s.badInput(c, "agent:"+ss.id, bad.action, bad.err)
				case errors.Is(err, message.ErrUnexpected):
					s.badInput(c, "agent:"+ss.id, "session.unexpected", err)
				case errors.Is(err, message.ErrMalformed):
					s.badInput(c, "agent:"+ss.id, "session.malformed", err)
				}
				return
			}
		}
	}
}

// badMessage ends a session for something no correct agent sends,
// audited and counted as action.
type badMessage struct {
	action string
	err    error
}

func (b *badMessage) Error() string { return b.action + ": " + b.err.Error() }

// errEnded: a handler ended the session itself (and said why).
var errEnded = errors.New("mmc: session ended")

// challenger is a session's re-authentication state: the outstanding
// challenge, if any.
type challenger struct {
	key         [32]byte
	hs          [32]byte
	seq         uint64
	nonce       [identity.NonceLen]byte
	outstanding bool
}

// next draws a fresh challenge.
func (c *challenger) next() (message.Challenge, error) {
	c.seq++
	if _, err := rand.Read(c.nonce[:]); err != nil {
		return message.Challenge{}, err
	}
	c.outstanding = true
	return message.Challenge{Seq: c.seq, Nonce: c.nonce[:]}, nil
}

// check verifies an answer to the outstanding challenge.
func (c *challenger) check(a message.ChallengeAnswer) bool {
	ok := c.outstanding && a.Seq == c.seq && identity.VerifyReauth(c.key, c.hs, c.seq, c.nonce, a.MAC)
	c.outstanding = false
	return ok
}

// agentHandlers is what an approved agent's session accepts; answered
// runs on every correct challenge answer. Every other message type ends
// the session as unexpected.
func (s *Server) agentHandlers(ss *session, ch *challenger, answered func()) message.Handlers {
	c := ss.c
	h := message.Handlers{}
	message.On(h, func(ctx context.Context, ans message.ChallengeAnswer) error {
		if !ch.check(ans) {
			s.reauthFailed(ss, "wrong answer")
			return errEnded
		}
		s.metrics.reauths.Inc()
		answered()
		return nil
	})
	message.On(h, func(ctx context.Context, r message.Report) error {
		ss.mu.Lock()
		ss.report, ss.reportAt = &r, s.cfg.Now()
		ss.mu.Unlock()
		s.metrics.reports.Inc()
		s.observe(ss, &r)
		return nil
	})
	message.On(h, func(ctx context.Context, r message.ActionResult) error {
		ss.mu.Lock()
		ch := ss.pending[r.ID]
		delete(ss.pending, r.ID)
		ss.mu.Unlock()
		if ch != nil {
			ch <- r // buffered: never blocks
		}
		return nil
	})
	message.On(h, func(ctx context.Context, a message.PolicyAck) error {
		ss.mu.Lock()
		ss.policyAck = a.Version
		ss.mu.Unlock()
		return nil
	})
	message.On(h, func(ctx context.Context, ev message.Event) error {
		now := s.cfg.Now()
		admitted, dropped := ss.events.take(now)
		if dropped > 0 {
			s.alarm(store.Event{Agent: ss.id, Host: ss.name, Alarm: true, Level: "warn", Kind: kindEventsDropped,
				Message: fmt.Sprintf("%d events from this agent dropped: more than %d a second (burst %d)", dropped, eventRate, eventBurst)})
		}
		if !admitted {
			s.metrics.eventsDropped.Inc()
			// Acknowledged all the same: an agent that resent what the
			// MMC refused would only flood again.
			return message.Send(ctx, c, message.EventAck{Seq: ev.Seq})
		}
		if _, err := s.storeEvent(store.Event{Time: s.cfg.Now(), AgentAt: time.Unix(0, ev.Time), Agent: ss.id, Host: ss.name,
			AgentSeq: ev.Seq, Alarm: ev.Alarm, Level: ev.Level, Kind: ev.Kind, Message: ev.Message}); err != nil {
			s.log.Error("mmc: storing an event", "err", err)
			return nil // not acknowledged: the agent resends it
		}
		return message.Send(ctx, c, message.EventAck{Seq: ev.Seq})
	})
	message.On(h, func(ctx context.Context, p message.BoardPost) error {
		if err := s.handlePost(ctx, ss, p); err != nil {
			return &badMessage{"board.post", err}
		}
		return nil
	})
	message.On(h, func(ctx context.Context, r message.BoardRead) error {
		if err := s.handleRead(ctx, ss, r); err != nil {
			return &badMessage{"board.read", err}
		}
		return nil
	})
	message.On(h, func(ctx context.Context, req message.TimeRequest) error {
		// T2: the request arrived (decoded) now.
		t2 := s.cfg.Now()
		return message.Send(ctx, c, message.TimeReply{T1: req.T1, T2: t2.UnixNano(), T3: s.cfg.Now().UnixNano()})
	})
	return h
}

func (s *Server) reauthFailed(ss *session, why string) {
	s.metrics.reauthFailures.Inc()
	s.audit.add(store.AuditEntry{Actor: "agent:" + ss.id, Action: "reauth.failed", Target: ss.id, Source: ss.c.RemoteAddr().String(), Outcome: "denied", Detail: why})
	s.log.Warn("mmc: re-authentication failed; ending session", "agent", ss.id, "why", why)
	ss.end(CodeReauthFailed, "re-authentication failed")
}

// reauthDelay draws the next challenge time uniformly from
// [ReauthMin, ReauthMax], so an observer cannot predict it.
func (s *Server) reauthDelay() time.Duration {
	span := int64(s.cfg.ReauthMax - s.cfg.ReauthMin)
	if span <= 0 {
		return s.cfg.ReauthMin
	}
	n, err := rand.Int(rand.Reader, big.NewInt(span+1))
	if err != nil {
		return s.cfg.ReauthMin
	}
	return s.cfg.ReauthMin + time.Duration(n.Int64())
}

// refuse tells the peer why it is being turned away, gives the message a
// moment to arrive (the peer closes on reading it), then closes with code.
func refuse(ctx context.Context, c *sudp.Conn, code uint64, reason string, retry bool) {
	_ = message.Send(ctx, c, message.Refused{Reason: reason, Retry: retry})
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	_ = c.CloseWithError(code, reason)
}

// badInput ends a session that sent something it should not have, and
// counts and audits it.
func (s *Server) badInput(c *sudp.Conn, actor, action string, err error) {
	s.metrics.badMessages.WithLabelValues(action).Inc()
	s.audit.add(store.AuditEntry{Actor: actor, Action: action, Source: c.RemoteAddr().String(), Outcome: "denied", Detail: err.Error()})
	_ = c.CloseWithError(CodeProtocol, "protocol error")
}
