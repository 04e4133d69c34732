package mmc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/replica"
	"github.com/ferry-vm/ferry/internal/store"
)

// auditor writes audit entries. add writes synchronously (callers on
// session goroutines may block on the disk); async queues, for the
// handshake path, which must not; a full queue drops and counts.
//
// Refusals of parties that have not authenticated (a wrong admin token,
// an unknown or refused key) are the entries anyone can cause: they pass
// the throttle, which lets a bounded number per source and overall into
// the store each minute and sums up the rest (auditThrottle,
// below). The log's retention (prune) bounds what stays.
type auditor struct {
	st    *store.Store
	log   *slog.Logger
	m     *metrics
	now   func() time.Time
	queue chan store.AuditEntry

	// recent de-duplicates entries from the handshake path: a replay
	// flood from spoofed sources must not turn into one disk write per
	// packet. Owned by the reader goroutine (async's only caller).
	recent map[string]time.Time

	mu       sync.Mutex // guards throttle
	throttle *auditThrottle
}

// Audit limits: repeats of one (actor, action, source) within
// auditRepeatWindow are counted, not written; fields are truncated.
const (
	auditRepeatWindow = 10 * time.Second
	auditRecentMax    = 4096
	auditFieldMax     = 512
)

func newAuditor(st *store.Store, log *slog.Logger, m *metrics, now func() time.Time) *auditor {
	return &auditor{st: st, log: log, m: m, now: now, queue: make(chan store.AuditEntry, 1024), recent: make(map[string]time.Time),
		throttle: newAuditThrottle(defaultThrottle)}
}

func truncate(s string) string {
	if len(s) <= auditFieldMax {
		return s
	}
	return s[:auditFieldMax] + "…"
}

// unauthenticated reports whether e is a refusal of a party that has
// proved nothing yet: those are throttled per source.
func unauthenticated(e store.AuditEntry) bool {
	return e.Outcome == "denied" && (e.Actor == "unknown" || strings.HasPrefix(e.Actor, "key:"))
}

func (a *auditor) add(e store.AuditEntry) {
	now := a.now().UTC()
	if e.Time.IsZero() {
		e.Time = now
	}
	a.mu.Lock()
	summaries := a.throttle.roll(now)
	admit := !unauthenticated(e) || a.throttle.admit(e.Source, e.Action)
	a.mu.Unlock()
	for _, s := range summaries {
		a.write(s)
	}
	if !admit {
		a.m.auditThrottled.Inc()
		return
	}
	a.write(e)
}

func (a *auditor) write(e store.AuditEntry) {
	e.Target, e.Detail, e.Source = truncate(e.Target), truncate(e.Detail), truncate(e.Source)
	if err := a.st.AppendAudit(e); errors.Is(err, replica.ErrNotLeader) {
		// A member that is not the leader cannot write the replicated
		// log; the entry stays in this member's own log below.
		a.m.auditDropped.Inc()
		a.log.Warn("mmc: audit entry not recorded in the cluster's log: this member is not the leader", "action", e.Action)
	} else if err != nil {
		a.log.Error("mmc: audit write failed", "err", err, "action", e.Action)
	}
	a.log.Info("audit", "actor", e.Actor, "action", e.Action, "target", e.Target, "source", e.Source, "outcome", e.Outcome, "detail", e.Detail)
}

// flushSuppressed writes the summaries of a throttle window that has
// ended (add does too, but a flood that stopped calls add no more).
func (a *auditor) flushSuppressed() {
	a.mu.Lock()
	summaries := a.throttle.roll(a.now().UTC())
	a.mu.Unlock()
	for _, s := range summaries {
		a.write(s)
	}
}

func (a *auditor) async(e store.AuditEntry) {
	e.Time = a.now().UTC()
	// By source address, not address and port: new ports cost a
	// replaying host nothing (sourceKey, as the throttle).
	key := e.Actor + "|" + e.Action + "|" + sourceKey(e.Source)
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

// Retention defaults (Config.AuditMaxAge, AuditMaxEntries) and how the
// pruning runs.
const (
	DefaultAuditMaxAge     = 90 * 24 * time.Hour
	DefaultAuditMaxEntries = 100_000
	auditPruneInterval     = time.Hour
	auditPruneBatch        = 10_000
)

// prune removes the entries older than maxAge and those beyond the newest
// maxEntries (a limit ≤ 0 is none), in batches (each one transaction),
// and audits what it removed once. It returns how many went.
func (a *auditor) prune(ctx context.Context, maxAge time.Duration, maxEntries int) (int, error) {
	if maxAge <= 0 && maxEntries <= 0 {
		return 0, nil
	}
	now := a.now().UTC()
	cmd := store.AuditPrune{Limit: auditPruneBatch}
	if maxAge > 0 {
		cmd.Before = now.Add(-maxAge)
	}
	if maxEntries > 0 {
		cmd.MaxEntries = uint64(maxEntries)
	}
	removed := 0
	for {
		res, err := a.st.PruneAudit(cmd)
		removed += res.Removed
		if err != nil {
			return removed, fmt.Errorf("mmc: pruning the audit log: %w", err)
		}
		if !res.More {
			break
		}
		if err := ctx.Err(); err != nil {
			// Stopping: what was removed so far is audited below.
			break
		}
	}
	if removed > 0 {
		a.m.auditPruned.Add(float64(removed))
		var limits []string
		if maxAge > 0 {
			limits = append(limits, "older than "+cmd.Before.Format(time.RFC3339))
		}
		if maxEntries > 0 {
			limits = append(limits, fmt.Sprintf("beyond the newest %d", maxEntries))
		}
		a.write(store.AuditEntry{Time: now, Actor: "mmc", Action: "audit.prune", Outcome: "ok",
			Detail: fmt.Sprintf("removed %d entries %s", removed, strings.Join(limits, " or "))})
	}
	return removed, nil
}

// run writes queued entries and the throttle's summaries until ctx ends.
func (a *auditor) run(ctx context.Context) {
	flush := time.NewTicker(a.throttle.cfg.Window)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-a.queue:
			a.add(e)
		case <-flush.C:
			a.flushSuppressed()
		}
	}
}

// drain writes whatever is still queued (at shutdown, before the store
// closes), and the summaries of what was throttled so far.
func (a *auditor) drain() {
	for {
		select {
		case e := <-a.queue:
			a.add(e)
		default:
			a.mu.Lock()
			summaries := a.throttle.summarize(a.now().UTC())
			a.mu.Unlock()
			for _, s := range summaries {
				a.write(s)
			}
			return
		}
	}
}

// throttleConfig bounds the unauthenticated refusals written to the audit
// log per Window: PerSource from one source (an IPv4 address, an IPv6
// /64), Total from all sources together; of the rest, the MaxSummaries
// sources that had most suppressed get a summary entry each and all
// others one together, and MaxSources bounds the sources tracked (beyond
// it they count as "other sources"). So a window costs at most Total +
// MaxSummaries + 1 writes, whatever the flood.
type throttleConfig struct {
	Window                                     time.Duration
	PerSource, Total, MaxSummaries, MaxSources int
}

// defaultThrottle: an honest client mistyping a token, or an agent whose
// key was revoked retrying, stays far below 10 a minute; the bound
// overall, ~100 000 entries a day at most, is what a flood can cost.
var defaultThrottle = throttleConfig{Window: time.Minute, PerSource: 10, Total: 60, MaxSummaries: 8, MaxSources: 4096}

// auditThrottle is the throttle's state: pure (the caller passes the
// time, and writes what roll returns), not safe for concurrent use.
type auditThrottle struct {
	cfg     throttleConfig
	start   time.Time // of the current window
	written int
	sources map[string]*sourceCount
	other   sourceCount // suppressed beyond MaxSources
}

type sourceCount struct {
	written, suppressed int
	actions             map[string]int // suppressed per action (at most maxActions distinct)
}

const maxActions = 8

func newAuditThrottle(cfg throttleConfig) *auditThrottle {
	return &auditThrottle{cfg: cfg, sources: make(map[string]*sourceCount)}
}

// sourceKey is the unit a source is throttled by: its address without the
// port (a new connection must not be a new source), and for IPv6 its /64
// (what one subscriber is typically given).
func sourceKey(src string) string {
	ap, err := netip.ParseAddrPort(src)
	addr := ap.Addr()
	if err != nil {
		if addr, err = netip.ParseAddr(src); err != nil {
			return truncate(src)
		}
	}
	addr = addr.Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

// admit counts one unauthenticated refusal from src and reports whether it
// is written.
func (t *auditThrottle) admit(src, action string) bool {
	key := sourceKey(src)
	sc := t.sources[key]
	if sc == nil {
		if len(t.sources) >= t.cfg.MaxSources {
			sc = &t.other
		} else {
			sc = &sourceCount{}
			t.sources[key] = sc
		}
	}
	if sc != &t.other && sc.written < t.cfg.PerSource && t.written < t.cfg.Total {
		sc.written++
		t.written++
		return true
	}
	sc.suppressed++
	if sc.actions == nil {
		sc.actions = make(map[string]int)
	}
	if _, ok := sc.actions[action]; ok || len(sc.actions) < maxActions {
		sc.actions[action]++
	}
	return false
}

// roll ends the window if it is over, returning its summary entries.
func (t *auditThrottle) roll(now time.Time) []store.AuditEntry {
	if t.start.IsZero() {
		t.start = now
		return nil
	}
	if now.Sub(t.start) < t.cfg.Window {
		return nil
	}
	return t.summarize(now)
}

// summarize returns the summary entries of the window so far and starts a
// new one at now.
func (t *auditThrottle) summarize(now time.Time) []store.AuditEntry {
	type row struct {
		key string
		sc  *sourceCount
	}
	var rows []row
	for k, sc := range t.sources {
		if sc.suppressed > 0 {
			rows = append(rows, row{k, sc})
		}
	}
	slices.SortFunc(rows, func(a, b row) int {
		return cmp.Or(cmp.Compare(b.sc.suppressed, a.sc.suppressed), cmp.Compare(a.key, b.key))
	})
	window := now.Sub(t.start).Round(time.Second)
	var out []store.AuditEntry
	rest, restSources := t.other, 0
	if t.other.suppressed > 0 {
		restSources = -1 // unknown: not tracked
	}
	for i, r := range rows {
		if i < t.cfg.MaxSummaries {
			out = append(out, store.AuditEntry{Time: now, Actor: "mmc", Action: "audit.suppressed", Source: r.key, Outcome: "denied",
				Detail: fmt.Sprintf("suppressed %d similar entries from this source in %v: %s", r.sc.suppressed, window, actionList(r.sc.actions))})
			continue
		}
		rest.suppressed += r.sc.suppressed
		if restSources >= 0 {
			restSources++
		}
		for a, n := range r.sc.actions {
			if _, ok := rest.actions[a]; ok || len(rest.actions) < maxActions {
				if rest.actions == nil {
					rest.actions = make(map[string]int)
				}
				rest.actions[a] += n
			}
		}
	}
	if rest.suppressed > 0 {
		from := fmt.Sprintf("%d other sources", restSources)
		if restSources < 0 {
			from = "other sources (more than the throttle tracks)"
		}
		out = append(out, store.AuditEntry{Time: now, Actor: "mmc", Action: "audit.suppressed", Source: "*", Outcome: "denied",
			Detail: fmt.Sprintf("suppressed %d similar entries from %s in %v: %s", rest.suppressed, from, window, actionList(rest.actions))})
	}
	t.start, t.written = now, 0
	t.sources = make(map[string]*sourceCount)
	t.other = sourceCount{}
	return out
}

func actionList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
