package mmc

import (
	"context"
	"log/slog"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// auditor writes audit entries. add writes synchronously (callers on
// session goroutines may block on the disk); async queues, for the
// handshake path, which must not; a full queue drops and counts.
type auditor struct {
	st    *store.Store
	log   *slog.Logger
	m     *metrics
	queue chan store.AuditEntry

	// recent de-duplicates entries from the handshake path: a replay
	// flood from spoofed sources must not turn into one disk write per
	// packet. Owned by the reader goroutine (async's only caller).
	recent map[string]time.Time
}

// Audit limits: repeats of one (actor, action, source) within
// auditRepeatWindow are counted, not written; fields are truncated.
const (
	auditRepeatWindow = 10 * time.Second
	auditRecentMax    = 4096
	auditFieldMax     = 512
)

func newAuditor(st *store.Store, log *slog.Logger, m *metrics) *auditor {
	return &auditor{st: st, log: log, m: m, queue: make(chan store.AuditEntry, 1024), recent: make(map[string]time.Time)}
}

func truncate(s string) string {
	if len(s) <= auditFieldMax {
		return s
	}
	return s[:auditFieldMax] + "…"
}

func (a *auditor) add(e store.AuditEntry) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	e.Target, e.Detail, e.Source = truncate(e.Target), truncate(e.Detail), truncate(e.Source)
	if err := a.st.AppendAudit(e); err != nil {
		a.log.Error("mmc: audit write failed", "err", err, "action", e.Action)
	}
	a.log.Info("audit", "actor", e.Actor, "action", e.Action, "target", e.Target, "source", e.Source, "outcome", e.Outcome, "detail", e.Detail)
}

func (a *auditor) async(e store.AuditEntry) {
	e.Time = time.Now().UTC()
	key := e.Actor + "|" + e.Action + "|" + e.Source
	if last, ok := a.recent[key]; ok && e.Time.Sub(last) < auditRepeatWindow {
		a.m.auditSuppressed.Inc()
		return
	}
	if len(a.recent) >= auditRecentMax {
		clear(a.recent)
	}
	a.recent[key] = e.Time
	select {
	case a.queue <- e:
	default:
		a.m.auditDropped.Inc()
	}
}

// run writes queued entries until ctx ends.
func (a *auditor) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-a.queue:
			a.add(e)
		}
	}
}

// drain writes whatever is still queued (at shutdown, before the store
// closes).
func (a *auditor) drain() {
	for {
		select {
		case e := <-a.queue:
			a.add(e)
		default:
			return
		}
	}
}
