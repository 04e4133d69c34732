package mmc

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// Joining a cluster (`ferry mmc --join BUNDLE --join-token TOKEN`, CLI.md
// "MMC cluster"). The new MMC dials a member of the bundle as any unknown
// key does — an enrolment session, pinned to the member's key — and
// sends a JoinRequest with a one-use token an administrator created
// (`ferry ctl mmcs join-token`). A member that is not the leader
// redirects it. The leader checks the token (store.PurposeMMC: an
// agent's join token admits no MMC), records the member (its key is the
// session's, never a claim), adds it to raft as a non-voter and answers
// with the cluster secret, the admin token and the members it must
// accept raft connections from. The joiner writes them, starts raft as
// a member waiting to be added, catches up from the leader (a snapshot,
// then the log) and says so (JoinReady); only then does the leader make
// it a voter, so that adding a member never stalls the cluster's commits
// while it catches up. JoinDone ends the exchange.

// JoinConfig is what `--join` and `--join-token` give.
type JoinConfig struct {
	Bundle identity.Bundle
	Token  string
}

// Bounds of a join.
const (
	joinAttempts     = 10
	joinReplyTimeout = 30 * time.Second
	// joinCatchUpWait bounds the joiner's catching up (a snapshot of
	// the whole store over the WAN, then the log).
	joinCatchUpWait = 10 * time.Minute
	joinDoneTimeout = 2 * time.Minute
)

// hasRaftState reports whether dataDir holds a raft member's state.
func hasRaftState(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "raft", "raft.db"))
	return err == nil
}

// prepareJoin records the cluster id of the bundle in a data directory
// about to join; one that belongs to another cluster is refused.
func prepareJoin(dataDir, clusterID string) error {
	if b, err := hex.DecodeString(clusterID); err != nil || len(b) != 16 {
		return errors.New("mmc: --join: the bundle's cluster id is malformed")
	}
	path := filepath.Join(dataDir, ClusterIDFile)
	cur, err := identity.ReadSecretFile(path)
	switch {
	case err == nil:
		if strings.TrimSpace(string(cur)) != clusterID {
			return fmt.Errorf("mmc: --join: %s belongs to another cluster (%s); join with a fresh data directory", dataDir, path)
		}
		return nil
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return err
		}
		return identity.WriteSecretFile(path, []byte(clusterID+"\n"))
	default:
		return err
	}
}

// joinSession is the joiner's open session with the leader.
type joinSession struct {
	c     *sudp.Conn
	reply message.JoinReply
}

func (j *joinSession) abandon() {
	if j != nil {
		j.c.Close()
	}
}

func (j *joinSession) members() []message.ClusterMember {
	if j == nil {
		return nil
	}
	return j.reply.Members
}

// requestJoin asks the bundle's members to admit this MMC until the
// leader answers, then writes the cluster secret and admin token it
// sent. The session stays open for completeJoin.
func (s *Server) requestJoin(ctx context.Context, jc *JoinConfig) (*joinSession, error) {
	type target struct {
		addr string
		key  [32]byte
	}
	var targets []target
	for _, m := range jc.Bundle.MMCs {
		k, err := handshake.ParseKey(m.Key)
		if err != nil {
			return nil, fmt.Errorf("mmc: --join: bundle: %w", err)
		}
		targets = append(targets, target{m.Addr, k})
	}
	myID := identity.NodeID(s.ep.PublicKey())
	req := message.JoinRequest{Token: jc.Token, Addr: s.advertise(), Admin: s.AdminURL()}
	var errs []error
	next := 0
	for attempt := 0; attempt < joinAttempts; attempt++ {
		t := targets[next%len(targets)]
		next++
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := s.ep.Dial(dctx, t.addr, t.key, s.enrolPSK)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.addr, err))
			continue
		}
		reply, redirect, retry, err := s.askToJoin(ctx, c, req)
		switch {
		case err == nil && redirect == nil:
			if reply.ID != myID {
				c.Close()
				return nil, fmt.Errorf("mmc: --join: the leader recorded this MMC as %s, not %s", reply.ID, myID)
			}
			if err := s.keepJoinSecrets(reply); err != nil {
				c.Close()
				return nil, err
			}
			s.log.Info("mmc: admitted to the cluster; catching up", "leader", t.addr, "members", len(reply.Members), "catch_up_index", reply.CatchUp)
			return &joinSession{c: c, reply: reply}, nil
		case redirect != nil:
			c.Close()
			k := [32]byte(redirect.Key)
			targets = append([]target{{redirect.Addr, k}}, targets...)
			next = 0
			s.log.Info("mmc: joining: redirected to the leader", "from", t.addr, "leader", redirect.Addr)
		case retry:
			c.Close()
			errs = append(errs, fmt.Errorf("%s: %w", t.addr, err))
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		default:
			c.Close()
			return nil, fmt.Errorf("mmc: --join: %s: %w", t.addr, err)
		}
	}
	return nil, fmt.Errorf("mmc: --join: no member admitted this MMC: %w", errors.Join(errs...))
}

// askToJoin sends the request on c and reads the answer: a reply, a
// redirect to the leader, or a refusal (retry: a temporary one).
func (s *Server) askToJoin(ctx context.Context, c *sudp.Conn, req message.JoinRequest) (message.JoinReply, *message.Member, bool, error) {
	if err := message.Send(ctx, c, req); err != nil {
		return message.JoinReply{}, nil, true, err
	}
	rctx, cancel := context.WithTimeout(ctx, joinReplyTimeout)
	defer cancel()
	env, err := message.Receive(rctx, c)
	if err != nil {
		// A member with no leader closes without a word: retry.
		return message.JoinReply{}, nil, true, fmt.Errorf("no answer: %w", err)
	}
	switch env.Type {
	case message.TypeJoinReply:
		r, err := message.Decode[message.JoinReply](env)
		return r, nil, false, err
	case message.TypeRedirect:
		r, err := message.Decode[message.Redirect](env)
		if err != nil {
			return message.JoinReply{}, nil, false, err
		}
		return message.JoinReply{}, &r.Leader, false, nil
	case message.TypeRefused:
		r, err := message.Decode[message.Refused](env)
		if err != nil {
			return message.JoinReply{}, nil, false, err
		}
		return message.JoinReply{}, nil, r.Retry, fmt.Errorf("refused: %s", r.Reason)
	default:
		return message.JoinReply{}, nil, false, fmt.Errorf("unexpected %v", env.Type)
	}
}

// keepJoinSecrets writes the cluster secret and the admin token the
// leader sent (the admin token is cluster-wide: the one this MMC made
// for itself on first start is replaced).
func (s *Server) keepJoinSecrets(r message.JoinReply) error {
	if b, err := hex.DecodeString(r.AdminToken); err != nil || len(b) != 32 {
		return errors.New("mmc: --join: the leader sent a malformed admin token")
	}
	secret := hex.EncodeToString(r.ClusterSecret)
	defer clear(r.ClusterSecret)
	if err := identity.WriteSecretFile(filepath.Join(s.cfg.DataDir, ClusterSecretFile), []byte(secret+"\n")); err != nil {
		return err
	}
	if err := identity.WriteSecretFile(filepath.Join(s.cfg.DataDir, AdminTokenFile), []byte(r.AdminToken+"\n")); err != nil {
		return err
	}
	s.adminTok = []byte(r.AdminToken)
	return nil
}

// completeJoin waits until this member has applied the log up to the
// leader's index, tells the leader, and waits to be made a voter.
func (s *Server) completeJoin(ctx context.Context, j *joinSession) error {
	defer j.c.Close()
	ctx, cancel := context.WithTimeout(ctx, joinCatchUpWait)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.repl.node.AppliedIndex() < j.reply.CatchUp {
		select {
		case err := <-s.repl.node.Fatal():
			return fmt.Errorf("mmc: --join: catching up: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("mmc: --join: not caught up with the leader (index %d of %d) within %v: %w",
				s.repl.node.AppliedIndex(), j.reply.CatchUp, joinCatchUpWait, ctx.Err())
		case <-j.c.Done():
			return fmt.Errorf("mmc: --join: the leader ended the join while this member caught up: %w", j.c.Err())
		case <-tick.C:
		}
	}
	// The leader makes this member a voter once told it caught up (and
	// says so with JoinDone); if the session or the leadership is lost
	// on the way, whichever member leads next promotes it when it finds
	// it caught up (promoteCaughtUp). Either way this member is a voter
	// once the configuration says so.
	_ = message.Send(ctx, j.c, message.JoinReady{Applied: s.repl.node.AppliedIndex()})
	dctx, dcancel := context.WithTimeout(ctx, joinDoneTimeout)
	defer dcancel()
	for {
		if s.isVoter(dctx) {
			s.log.Info("mmc: joined the cluster as a voter", "id", s.repl.id)
			return nil
		}
		select {
		case <-dctx.Done():
			return fmt.Errorf("mmc: --join: not made a voter within %v (this member stays a non-voter; remove it with 'ferry ctl mmcs remove %s' and join again with a fresh data directory)", joinDoneTimeout, s.repl.id)
		case err := <-s.repl.node.Fatal():
			return fmt.Errorf("mmc: --join: %w", err)
		case <-tick.C:
		}
	}
}

// isVoter reports whether this member votes in the current configuration.
func (s *Server) isVoter(ctx context.Context) bool {
	servers, _, err := s.repl.node.Configuration(ctx)
	if err != nil {
		return false
	}
	for _, sv := range servers {
		if string(sv.ID) == s.repl.id {
			return sv.Suffrage == raft.Voter
		}
	}
	return false
}

// serveJoin is the leader's side of a join, on an enrolment session whose
// first message was a JoinRequest; rd reads the session's next messages.
func (s *Server) serveJoin(ctx context.Context, c *sudp.Conn, pub [32]byte, env message.Envelope, rd *message.Reader) {
	src := c.RemoteAddr()
	id := identity.NodeID(pub)
	req, err := message.Decode[message.JoinRequest](env)
	if err != nil {
		s.badInput(c, "key:"+id, "mmc.join", err)
		return
	}
	deny := func(reason, detail string, retry bool) {
		s.audit.add(store.AuditEntry{Actor: "key:" + id, Action: "mmc.join", Target: id, Source: src.String(), Outcome: "denied", Detail: detail})
		refuse(ctx, c, CodeProtocol, reason, retry)
	}
	if !s.leading.Load() {
		deny("this MMC is not the leader; try again", "not the leader", true)
		return
	}
	if _, _, err := net.SplitHostPort(req.Addr); err != nil {
		deny("the address must be host:port", "bad address "+req.Addr, false)
		return
	}
	now := s.cfg.Now()
	tid, secret, err := identity.ParseToken(req.Token)
	if err != nil {
		s.metrics.tokenFailures.Inc()
		deny("join token invalid, expired, revoked or used", "malformed token", false)
		return
	}
	s.tokenMu.Lock()
	allowed := s.tokenRL.Allow(now, src.Addr())
	s.tokenMu.Unlock()
	if !allowed {
		s.metrics.throttled.Inc()
		deny("too many attempts; try again later", "token "+tid+": throttled", true)
		return
	}
	addr := raft.ServerAddress(req.Addr)
	// The token's use and the member's record in one command: a join
	// retried after a lost leadership neither fails on its own spent
	// token nor spends another.
	_, err = s.st.JoinMember(tid, secret, store.Member{ID: id, Addr: req.Addr, Key: pub, Admin: req.Admin, Added: now})
	clear(secret)
	switch {
	case errors.Is(err, replica.ErrNotLeader), errors.Is(err, replica.ErrOutcomeUnknown):
		deny("the leadership moved; try again", "token "+tid+": "+err.Error(), true)
		return
	case errors.Is(err, store.ErrMemberConflict):
		deny("another member has this address or key", "token "+tid+": "+err.Error(), false)
		return
	case err != nil:
		s.metrics.tokenFailures.Inc()
		deny("join token invalid, expired, revoked or used", "token "+tid+": "+err.Error(), false)
		return
	}
	s.repl.members.Set(addr, pub)
	jctx, cancel := context.WithTimeout(ctx, joinCatchUpWait)
	defer cancel()
	if err := s.repl.node.AddNonvoter(jctx, raft.ServerID(id), addr); err != nil {
		deny("adding the member failed; try again", "add non-voter: "+err.Error(), true)
		return
	}
	reply, err := s.joinReply(id)
	if err != nil {
		deny("internal error", err.Error(), true)
		return
	}
	err = message.Send(jctx, c, reply)
	clear(reply.ClusterSecret)
	if err != nil {
		return
	}
	s.log.Info("mmc: a new member is catching up", "member", id, "addr", req.Addr, "catch_up_index", reply.CatchUp)
	var ready message.JoinReady
	select {
	case e := <-rd.C:
		if ready, err = message.Decode[message.JoinReady](e); err != nil || e.Type != message.TypeJoinReady {
			s.badInput(c, "mmc:"+id, "mmc.join", fmt.Errorf("want join-ready, got %v: %v", e.Type, err))
			return
		}
	case <-rd.Done:
		s.log.Warn("mmc: a joining member went away before it caught up; it stays a non-voter until removed", "member", id)
		return
	case <-jctx.Done():
		return
	}
	if err := s.repl.node.AddVoter(jctx, raft.ServerID(id), addr); err != nil {
		s.log.Warn("mmc: promoting a new member failed; it stays a non-voter", "member", id, "err", err)
		return
	}
	s.audit.add(store.AuditEntry{Actor: "token:" + tid, Action: "mmc.join", Target: id, Source: src.String(), Outcome: "ok",
		Detail: fmt.Sprintf("voter at %s, admin %s, caught up to %d", req.Addr, req.Admin, ready.Applied)})
	s.log.Info("mmc: a new member joined as a voter", "member", id, "addr", req.Addr)
	s.dirty.markMembers()
	_ = message.Send(jctx, c, message.JoinDone{})
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
}

// joinReply is what the leader tells a new member.
func (s *Server) joinReply(id string) (message.JoinReply, error) {
	secret, err := loadClusterSecret(s.cfg.DataDir, s.cfg)
	if err != nil {
		return message.JoinReply{}, err
	}
	recs, err := s.st.Members()
	if err != nil {
		return message.JoinReply{}, err
	}
	r := message.JoinReply{ClusterSecret: secret, AdminToken: string(s.adminTok), CatchUp: s.repl.node.AppliedIndex(), ID: id}
	for _, m := range recs {
		r.Members = append(r.Members, message.ClusterMember{ID: m.ID, Addr: m.Addr, Key: m.Key[:]})
	}
	return r, nil
}

// decodeHex32 decodes a 32-byte secret kept in hex.
func decodeHex32(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return nil, errors.New("mmc: malformed 32-byte secret")
	}
	return b, nil
}
