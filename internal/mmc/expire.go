package mmc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// Pending enrolments expire: anyone holding the bundle can create one,
// and MaxPending bounds how many wait at once, so records nobody decides
// on must not hold that capacity for ever. After PendingTTL a pending
// record is deleted (agent.expire); its key is unknown again and may
// enrol afresh, its waiting session (if any) is told to.

// expiryInterval is how often the MMC looks for expired pending records:
// a tenth of the TTL, between 1 s and 1 min.
func expiryInterval(ttl time.Duration) time.Duration {
	return min(max(ttl/10, time.Second), time.Minute)
}

// runExpiry expires pending records until ctx ends.
func (s *Server) runExpiry(ctx context.Context) {
	t := time.NewTicker(expiryInterval(s.cfg.PendingTTL))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.expirePending(); err != nil {
				s.log.Error("mmc: expiring pending enrolments", "err", err)
			}
		}
	}
}

// expirePending deletes every pending record older than the TTL and
// returns how many it deleted. A decision landing meanwhile wins (the
// command is conditional on the record still being pending).
func (s *Server) expirePending() (int, error) {
	agents, err := s.st.Agents()
	if err != nil {
		return 0, err
	}
	now := s.cfg.Now()
	cutoff := now.Add(-s.cfg.PendingTTL)
	n := 0
	for _, a := range expiredPending(agents, cutoff) {
		gone, err := s.st.ExpireAgent(store.AgentExpire{ID: a.ID, EnrolledBefore: cutoff, At: now})
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			continue // decided (or gone) since the read
		}
		if err != nil {
			return n, err
		}
		n++
		s.reg.remove(gone)
		s.reg.wake(gone.ID) // its waiting session, if any, tells the agent
		s.metrics.pendingExpired.Inc()
		s.audit.add(store.AuditEntry{Actor: "mmc", Action: "agent.expire", Target: gone.ID, Source: gone.EnrolAddr, Outcome: "ok",
			Detail: fmt.Sprintf("pending since %s without a decision (ttl %s); hostname=%s name=%s", gone.EnrolledAt.UTC().Format(time.RFC3339), s.cfg.PendingTTL, gone.Facts.Hostname, gone.Name)})
		s.log.Info("mmc: pending enrolment expired", "agent", gone.ID, "name", gone.Name, "enrolled", gone.EnrolledAt)
	}
	return n, nil
}
