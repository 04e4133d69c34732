package mmc

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// Retention defaults for the history other than the audit log.
const (
	DefaultEventsMaxAge  = 30 * 24 * time.Hour
	DefaultRecordsMaxAge = 90 * 24 * time.Hour
	recordsPruneBatch    = 2_000
)

// Retention is how long the MMC keeps its history: the audit log (age
// and entries), logs and alarms (age), finished migrations and
// evacuations (age). A limit ≤ 0 keeps that kind (events stay bounded by
// store.MaxEvents).
type Retention struct {
	AuditMaxAge     time.Duration
	AuditMaxEntries int
	EventsMaxAge    time.Duration
	RecordsMaxAge   time.Duration
}

// SetRetention puts r in force; the leader prunes by it at its next
// pass (hourly), and at once when called on it. It is what a reload of
// the configuration (SIGHUP) changes without a restart.
func (s *Server) SetRetention(r Retention) {
	s.retention.Store(&r)
	s.log.Info("mmc: retention", "audit_max_age", r.AuditMaxAge, "audit_max_entries", r.AuditMaxEntries,
		"events_max_age", r.EventsMaxAge, "records_max_age", r.RecordsMaxAge)
	select {
	case s.pruneNow <- struct{}{}:
	default:
	}
}

func (s *Server) currentRetention() Retention {
	if r := s.retention.Load(); r != nil {
		return *r
	}
	return Retention{AuditMaxAge: s.cfg.AuditMaxAge, AuditMaxEntries: s.cfg.AuditMaxEntries, EventsMaxAge: s.cfg.EventsMaxAge, RecordsMaxAge: s.cfg.RecordsMaxAge}
}

// runRetention prunes at start, every auditPruneInterval and after
// SetRetention, until ctx ends (a leader's job: pruning is a write). Apart
// from the audit queue's goroutine: the first pruning of a log that grew
// large takes many transactions, and the queue must not wait for them.
func (s *Server) runRetention(ctx context.Context) {
	t := time.NewTicker(auditPruneInterval)
	defer t.Stop()
	for {
		r := s.currentRetention()
		if _, err := s.audit.prune(ctx, r.AuditMaxAge, r.AuditMaxEntries); err != nil && ctx.Err() == nil {
			s.log.Error("mmc: audit retention", "err", err)
		}
		if err := s.pruneRecords(ctx, r); err != nil && ctx.Err() == nil {
			s.log.Error("mmc: retention", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.pruneNow:
		}
	}
}

// pruneRecords removes events and finished records past r's ages, in
// batches, and audits what went.
func (s *Server) pruneRecords(ctx context.Context, r Retention) error {
	if r.EventsMaxAge <= 0 && r.RecordsMaxAge <= 0 {
		return nil
	}
	now := s.cfg.Now()
	cmd := store.RecordsPrune{Limit: recordsPruneBatch}
	if r.EventsMaxAge > 0 {
		cmd.EventsBefore = now.Add(-r.EventsMaxAge)
	}
	if r.RecordsMaxAge > 0 {
		cmd.RecordsBefore = now.Add(-r.RecordsMaxAge)
	}
	var total store.RecordsPruned
	for {
		res, err := s.st.PruneRecords(cmd)
		total.Events += res.Events
		total.Migrations += res.Migrations
		total.Evacuations += res.Evacuations
		if err != nil {
			return fmt.Errorf("mmc: pruning history: %w", err)
		}
		if !res.More || ctx.Err() != nil {
			break
		}
	}
	if total.Events+total.Migrations+total.Evacuations > 0 {
		s.audit.add(store.AuditEntry{Actor: "mmc", Action: "retention.prune", Outcome: "ok",
			Detail: fmt.Sprintf("%d events, %d migrations, %d evacuations", total.Events, total.Migrations, total.Evacuations)})
	}
	return nil
}
