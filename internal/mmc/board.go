package mmc

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/relay"
	"github.com/ferry-vm/ferry/internal/store"
)

// The blackboard at the MMC: agents post typed entries on the topics of
// the jobs they take part in; the MMC records them and relays them to the
// other members. Introductions put two agents in touch for a job.

// relayTimeout bounds delivering one entry to one member: a member whose
// connection is stuck must not stall the poster's session.
const relayTimeout = 2 * time.Second

// introTTL is how long an introduction's ticket admits a connection.
const introTTL = time.Minute

// handlePost records an agent's entry and relays it. A post on a closed or
// unknown topic is a race with the job ending (dropped); a post that no
// correct agent sends (not a member, unknown kind, bad body) is reported.
func (s *Server) handlePost(ctx context.Context, ss *session, p message.BoardPost) error {
	e, to, err := s.board.Post(ss.id, p.Topic, p.Kind, p.Body, s.cfg.Now())
	switch {
	case errors.Is(err, board.ErrClosed), errors.Is(err, board.ErrNoTopic):
		s.metrics.boardDropped.Inc()
		s.log.Debug("mmc: board post on a finished topic", "agent", ss.id, "topic", p.Topic, "kind", p.Kind)
		return nil
	case err != nil:
		return err
	}
	s.metrics.boardPosts.Inc()
	s.relay(ctx, p.Topic, e, to)
	if id, ok := strings.CutPrefix(p.Topic, "migration/"); ok && p.Kind == board.KindMigrationPhase {
		// Only the agents' own authenticated sessions speak for their
		// host; the machine checks the host's role in the migration.
		if v, err := board.Decode(p.Kind, p.Body); err == nil {
			ph := v.(board.MigrationPhase)
			s.orch.notify(id, migration.Posted{Host: ss.name, Role: ph.Role, Phase: ph.Phase})
		}
	}
	return nil
}

// postAsMMC records an entry from the MMC itself (e.g. orchestration
// decisions) and relays it to every member.
func (s *Server) postAsMMC(ctx context.Context, topic, kind string, v any) error {
	b, err := message.EncodeBody(v)
	if err != nil {
		return err
	}
	e, to, err := s.board.Post(board.MMC, topic, kind, b, s.cfg.Now())
	if err != nil {
		return err
	}
	s.relay(ctx, topic, e, to)
	return nil
}

func (s *Server) relay(ctx context.Context, topic string, e board.Entry, to []string) {
	msg := message.BoardEntry{Topic: topic, Seq: e.Seq, Time: e.Time.UnixNano(), From: e.From, Kind: e.Kind, Body: e.Body}
	for _, id := range to {
		ss := s.reg.session(id)
		if ss == nil {
			continue // offline: it reads the topic when it is back (BoardRead)
		}
		rctx, cancel := context.WithTimeout(ctx, relayTimeout)
		if err := ss.send(rctx, msg); err != nil {
			s.log.Debug("mmc: board relay failed", "to", id, "topic", topic, "err", err)
		}
		cancel()
	}
}

// handleRead answers a member's BoardRead with the entries it asked for.
func (s *Server) handleRead(ctx context.Context, ss *session, r message.BoardRead) error {
	entries, err := s.board.Read(ss.id, r.Topic, r.After)
	if errors.Is(err, board.ErrNoTopic) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := message.Send(ctx, ss.c, message.BoardEntry{Topic: r.Topic, Seq: e.Seq,
			Time: e.Time.UnixNano(), From: e.From, Kind: e.Kind, Body: e.Body}); err != nil {
			return err
		}
	}
	return nil
}

// Introduce puts two online agents in touch for the job named topic: it
// opens the topic with both as members, has listener expect one
// connection from dialer (a fresh one-time ticket as the handshake psk),
// then has dialer connect — both starting at one moment, so that the
// dialer's handshake and the listener's punches open their NATs for
// each other (package punch). It returns once dialer reports the connection
// up, or with the first failure.
func (s *Server) Introduce(ctx context.Context, topic, listener, dialer string) error {
	_, _, err := s.IntroduceLink(ctx, topic, listener, dialer)
	return err
}

// noDirectPath is a dialer's failure to reach the listener directly.
type noDirectPath struct{ err error }

func (e *noDirectPath) Error() string { return e.err.Error() }
func (e *noDirectPath) Unwrap() error { return e.err }

// viaRelay is a relay allocation an introduction runs the link through.
type viaRelay struct {
	al         relay.Allocation
	keyA, keyB [relay.KeySize]byte // the dialer's (side A) and the listener's bind keys
}

// IntroduceLink is Introduce, saying how the link runs: "direct", or —
// when the agents could not punch a direct path and this MMC runs a
// relay — "relayed", with why the direct path failed in note.
func (s *Server) IntroduceLink(ctx context.Context, topic, listener, dialer string) (path, note string, err error) {
	defer func() {
		if err != nil {
			path = "failed"
		}
		s.metrics.links.WithLabelValues(path).Inc()
		if err != nil {
			path = ""
		}
	}()
	err = s.introduce(ctx, topic, listener, dialer, nil)
	if err == nil {
		return "direct", "", nil
	}
	var nd *noDirectPath
	if s.linkRelay == nil || !errors.As(err, &nd) {
		return "", "", err
	}
	note = truncate(nd.Error())
	via := &viaRelay{}
	if via.al, via.keyA, via.keyB, err = s.allocateRelay(ctx, topic); err != nil {
		return "", note, fmt.Errorf("%w; and no relay: %w", nd, err)
	}
	defer clear(via.keyA[:])
	defer clear(via.keyB[:])
	_ = s.postAsMMC(ctx, topic, board.KindNote, board.Note{Text: truncate("no direct path (" + note + "); relaying")})
	if err = s.introduce(ctx, topic, listener, dialer, via); err != nil {
		s.releaseRelay(topic)
		return "", note, fmt.Errorf("%w; through the relay: %w", nd, err)
	}
	return "relayed", note, nil
}

// introduce carries out one introduction: direct (via nil: both punch),
// or through the relay allocation via.
func (s *Server) introduce(ctx context.Context, topic, listener, dialer string, via *viaRelay) error {
	release, err := s.introPairs.acquire(ctx, listener, dialer)
	if err != nil {
		return fmt.Errorf("mmc: introduce %s: waiting for another introduction of the same agents: %w", topic, err)
	}
	defer release()
	ls, ds := s.reg.session(listener), s.reg.session(dialer)
	if ls == nil || ds == nil {
		return fmt.Errorf("%w: both agents must be online to be introduced", ErrHostOffline)
	}
	var ticket [32]byte
	if _, err := rand.Read(ticket[:]); err != nil {
		return err
	}
	defer clear(ticket[:])
	now := s.cfg.Now()
	expires := now.Add(introTTL).UnixNano()
	lkey, dkey := ls.c.Session().PeerStatic, ds.c.Session().PeerStatic
	// Both start at once (package punch): each one's first packets open
	// its own NAT towards the other, whatever NATs they sit behind.
	punchAt, window := punchTiming(now, ls, ds)
	// Remembered before either is told: a revocation from now on
	// reaches the other (links.go).
	s.reg.intros.add(listener, dialer, s.cfg.Now())
	for _, k := range [][32]byte{lkey, dkey} {
		// A revocation published before the add above did not see
		// it: refuse to introduce a revoked agent.
		if e, ok := s.reg.lookup(k); !ok || e.state != store.StateApproved {
			return fmt.Errorf("%w: agent %s is not approved", ErrConflict, e.id)
		}
	}
	s.board.Open(topic, listener, dialer)
	_ = s.postAsMMC(ctx, topic, board.KindNote, board.Note{Text: fmt.Sprintf("introducing %s (%s) to %s (%s)", dialer, ds.name, listener, ls.name)})
	// The tickets travel only inside the two agents' authenticated,
	// encrypted sessions; the audit names the job, never the ticket.
	lin := &message.Introduction{Topic: topic, PeerID: dialer, PeerAddr: ds.c.RemoteAddr().String(), PeerKey: dkey[:], Ticket: ticket[:], Expires: expires,
		PunchAt: punchAt, Window: window}
	din := &message.Introduction{Topic: topic, PeerID: listener, PeerAddr: ls.c.RemoteAddr().String(), PeerKey: lkey[:], Ticket: ticket[:], Expires: expires,
		PunchAt: punchAt, Window: window}
	how := "direct"
	if via != nil {
		how = "relayed"
		lin.PunchAt, lin.Window, din.PunchAt, din.Window = 0, 0, 0, 0
		lin.RelayAddr, lin.RelayAlloc, lin.RelayKey = via.al.AddrB.String(), uint64(via.al.ID), via.keyB[:]
		din.RelayAddr, din.RelayAlloc, din.RelayKey = via.al.AddrA.String(), uint64(via.al.ID), via.keyA[:]
	}
	expected := func() error {
		if _, err := s.actSession(ctx, ls, message.Action{Op: "peer.expect", Intro: lin}); err != nil {
			return fmt.Errorf("mmc: introduce %s: %s cannot expect %s: %w", topic, listener, dialer, err)
		}
		return nil
	}
	var r message.ActionResult
	if via != nil {
		// The listener binds its relay address before it answers, and
		// the relay forwards only to a bound address: the dialer is told
		// after the answer.
		if err := expected(); err != nil {
			return err
		}
		r, err = s.actSession(ctx, ds, message.Action{Op: "peer.dial", Intro: din})
	} else {
		// Both orders at once (punch.Start counts on it): a dialer's
		// initiation that reaches the listener before its order is
		// refused without a trace and sent again (punch.Retry).
		dctx, cancelDial := context.WithCancel(ctx)
		type dialed struct {
			r   message.ActionResult
			err error
		}
		done := make(chan dialed, 1)
		go func() {
			r, err := s.actSession(dctx, ds, message.Action{Op: "peer.dial", Intro: din})
			done <- dialed{r, err}
		}()
		eerr := expected()
		if eerr != nil {
			cancelDial() // the dialer's attempt ends with its window
		}
		d := <-done
		cancelDial()
		if eerr != nil {
			return eerr
		}
		r, err = d.r, d.err
	}
	if err != nil {
		err = fmt.Errorf("mmc: introduce %s: %s cannot reach %s: %w", topic, dialer, listener, err)
		if via == nil && r.Error != "" {
			// The dialer answered: it found no path (not: it was
			// unreachable, offline or refused the order).
			err = &noDirectPath{err}
		}
		return err
	}
	s.audit.add(store.AuditEntry{Actor: "mmc", Action: "peer.introduce", Target: topic, Outcome: "ok", Detail: dialer + " → " + listener + " (" + how + ")"})
	return nil
}

// BoardEntries returns a topic's entries after seq (administrator view).
func (s *Server) BoardEntries(topic string, after uint64) ([]board.Entry, error) {
	return s.board.Read("", topic, after)
}
