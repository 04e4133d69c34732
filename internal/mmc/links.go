package mmc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/store"
)

// Revocation reaches the direct links. Agents introduced to each other
// (Introduce) hold SUDP connections the MMC is not part of; revoking one
// of them must not leave it a path into the others. The MMC remembers
// whom it introduced to whom (introductions), and on a revocation:
//
//   - cancels the open migrations the revoked agent takes part in,
//     through the orchestrator like an administrator's cancel: the
//     machine rolls back (the source keeps or resumes the one running
//     copy, the destination discards its own). A migration past its
//     commit (switch-over, armed) cannot be cancelled — the destination
//     is, or is about to be, the VM — and finishes or fails through the
//     machine as any host loss would;
//   - tells every agent it introduced the revoked one to (peer.withdraw)
//     to close its links with it at once and to admit no connection from
//     its key again; an agent offline at the time is told at its next
//     login.

// introMemory is how long the MMC remembers an introduction: longer than
// any job's link lives. maxIntroductions bounds what it remembers (the
// oldest go first), maxWithdrawalsHeld the withdrawals kept for peers
// that are offline.
const (
	introMemory        = 24 * time.Hour
	maxIntroductions   = 4096
	maxWithdrawalsHeld = 4096
	withdrawTimeout    = 5 * time.Second
)

// introPair is an unordered pair of agent ids (a < b).
type introPair struct{ a, b string }

func pairOf(x, y string) introPair {
	if y < x {
		x, y = y, x
	}
	return introPair{x, y}
}

// introductions remembers introductions and the withdrawals owed to
// offline agents. It owns its lock.
type introductions struct {
	mu    sync.Mutex
	pairs map[introPair]time.Time // latest introduction of the pair
	owed  map[string]map[string]message.Withdrawal
	nOwed int
}

func newIntroductions() *introductions {
	return &introductions{pairs: map[introPair]time.Time{}, owed: map[string]map[string]message.Withdrawal{}}
}

// add records that x and y were introduced at now.
func (in *introductions) add(x, y string, now time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for p, at := range in.pairs {
		if now.Sub(at) > introMemory {
			delete(in.pairs, p)
		}
	}
	if _, ok := in.pairs[pairOf(x, y)]; !ok && len(in.pairs) >= maxIntroductions {
		var oldest introPair
		var t time.Time
		for p, at := range in.pairs {
			if t.IsZero() || at.Before(t) {
				oldest, t = p, at
			}
		}
		delete(in.pairs, oldest)
	}
	in.pairs[pairOf(x, y)] = now
}

// revoke forgets every introduction of id and returns the agents it was
// introduced to.
func (in *introductions) revoke(id string) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []string
	for p := range in.pairs {
		switch id {
		case p.a:
			out = append(out, p.b)
		case p.b:
			out = append(out, p.a)
		default:
			continue
		}
		delete(in.pairs, p)
	}
	return out
}

// owe keeps a withdrawal for an agent that is offline.
func (in *introductions) owe(to string, w message.Withdrawal) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.nOwed >= maxWithdrawalsHeld {
		return // the peer's link, if any, still ends at its idle timeout
	}
	if in.owed[to] == nil {
		in.owed[to] = map[string]message.Withdrawal{}
	}
	if _, ok := in.owed[to][w.PeerID]; !ok {
		in.nOwed++
	}
	in.owed[to][w.PeerID] = w
}

// collect returns and forgets the withdrawals owed to id.
func (in *introductions) collect(id string) []message.Withdrawal {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []message.Withdrawal
	for _, w := range in.owed[id] {
		out = append(out, w)
	}
	in.nOwed -= len(in.owed[id])
	delete(in.owed, id)
	return out
}

// revokeLinks carries out a revocation's consequences for migrations and
// direct links (see above). It returns once every online peer answered
// or timed out.
func (s *Server) revokeLinks(a store.Agent) {
	s.cancelMigrationsOf(a)
	peers := s.reg.intros.revoke(a.ID)
	w := message.Withdrawal{PeerID: a.ID, PeerKey: append([]byte(nil), a.PublicKey[:]...)}
	var wg sync.WaitGroup
	for _, id := range peers {
		ss := s.reg.session(id)
		if ss == nil {
			s.reg.intros.owe(id, w)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), withdrawTimeout)
			defer cancel()
			s.withdraw(ctx, ss, w)
		}()
	}
	wg.Wait()
}

// withdraw tells one agent to drop its links with a revoked agent.
func (s *Server) withdraw(ctx context.Context, ss *session, w message.Withdrawal) {
	_, err := s.actSession(ctx, ss, message.Action{Op: "peer.withdraw", Withdraw: &w})
	outcome, detail := "ok", "links with revoked agent "+w.PeerID+" closed"
	if err != nil {
		outcome, detail = "failed", fmt.Sprintf("links with revoked agent %s: %v (owed until its next login)", w.PeerID, err)
		// Not dropped: like one to an offline agent, it is sent at the
		// agent's next login (a repeat is harmless).
		s.reg.intros.owe(ss.id, w)
		s.log.Warn("mmc: telling an agent to drop its links with a revoked one", "agent", ss.id, "revoked", w.PeerID, "err", err)
	} else {
		s.metrics.peerWithdrawals.Inc()
		s.log.Info("mmc: agent told to drop its links with a revoked one", "agent", ss.id, "revoked", w.PeerID)
	}
	s.audit.add(store.AuditEntry{Actor: "mmc", Action: "peer.withdraw", Target: ss.id, Outcome: outcome, Detail: detail})
}

// sendOwedWithdrawals tells an agent that just logged in of the
// revocations it missed while offline. The agent answers each; the
// answers match no pending action and are dropped.
func (s *Server) sendOwedWithdrawals(ctx context.Context, ss *session) {
	owed := s.reg.intros.collect(ss.id)
	for i, w := range owed {
		if err := ss.send(ctx, s.order(message.Action{Op: "peer.withdraw", Withdraw: &w})); err != nil {
			for _, w := range owed[i:] {
				s.reg.intros.owe(ss.id, w) // the next login tries again
			}
			return
		}
		s.metrics.peerWithdrawals.Inc()
		s.audit.add(store.AuditEntry{Actor: "mmc", Action: "peer.withdraw", Target: ss.id, Outcome: "ok", Detail: "at login: links with revoked agent " + w.PeerID})
	}
}

// cancelMigrationsOf cancels the open migrations a revoked agent takes
// part in, through the orchestrator (it rolls them back).
func (s *Server) cancelMigrationsOf(a store.Agent) {
	all, err := s.st.Migrations()
	if err != nil {
		s.log.Error("mmc: listing migrations of a revoked agent", "agent", a.ID, "err", err)
		return
	}
	for _, m := range all {
		if !m.State.Open() || (m.FromAgent != a.ID && m.ToAgent != a.ID) {
			continue
		}
		c, err := s.st.CancelMigration(m.ID, s.cfg.Now())
		if errors.Is(err, migration.ErrNotCancellable) {
			s.log.Warn("mmc: a revoked agent's migration is past its commit; it completes or fails on its own", "migration", m.ID, "agent", a.ID, "why", err)
			s.audit.add(store.AuditEntry{Actor: "mmc", Action: "migration.cancel", Target: m.ID, Outcome: "denied", Detail: fmt.Sprintf("agent %s revoked: %v", a.ID, err)})
			continue
		}
		if err != nil {
			s.log.Error("mmc: cancelling a revoked agent's migration", "migration", m.ID, "err", err)
			continue
		}
		s.noteMigration(c)
		s.audit.add(store.AuditEntry{Actor: "mmc", Action: "migration.cancel", Target: m.ID, Outcome: "ok", Detail: "agent " + a.ID + " revoked"})
		s.orch.notify(m.ID, migration.Changed{Rec: c})
	}
}
