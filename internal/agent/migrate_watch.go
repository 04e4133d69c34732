package agent

import (
	"context"
	"time"

	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
)

// watchJob polls the hypervisor's progress, moves the job's phase and
// posts phases and progress, until the job reaches a final phase or the
// agent stops.
func (a *Agent) watchJob(ctx context.Context, j *job, pumped <-chan error, kick <-chan struct{}) {
	t := time.NewTimer(migPoll)
	defer t.Stop()
	var lastPost time.Time
	var pumpErr error
	pumpDone := false
	// Once a stream direction ends the outcome is imminent (the
	// destination verifies the last bytes it was handed; the downtime
	// runs meanwhile): look often until the hypervisor reports it.
	var fastUntil, ended time.Time
	var last hypervisor.MigrationStatus
	longIdle := false
	limit := j.order.Params.DowntimeLimit // as the driver was given it
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-pumped:
			pumpDone, pumpErr = true, err
			pumped = nil
			fastUntil = time.Now().Add(migFastPollFor)
		case <-kick:
			fastUntil = time.Now().Add(migFastPollFor)
		case <-t.C:
		}
		switch {
		case time.Now().Before(fastUntil):
			t.Reset(migFastPoll)
		case nearSwitchOver(last):
			t.Reset(migNearPoll)
		default:
			t.Reset(migPoll)
		}
		st, err := j.mig.MigrationStatus(ctx, j.order.VM)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("agent: migration status", "id", j.order.ID, "vm", j.order.VM, "err", err)
			continue
		}
		if st.State != hypervisor.MigActive && st.State != "" && st.Finished.IsZero() {
			// A hypervisor that does not say when it finished (QEMU's
			// destination): when this job first saw it, within a
			// fast poll.
			if ended.IsZero() {
				ended = time.Now()
			}
			st.Finished = ended
		}
		last = st
		j.mu.Lock()
		j.status = st
		phase := j.phase
		link := j.link
		j.mu.Unlock()
		if st.Postcopy == hypervisor.PostcopyActive && !longIdle && link != nil {
			longIdle = true
			link.SetIdleTimeout(postcopyIdleTimeout)
			a.log.Info("agent: migration in post-copy", "id", j.order.ID, "role", j.role, "vm", j.order.VM, "link_idle_timeout", postcopyIdleTimeout)
		}
		if j.role == migration.Source && st.State == hypervisor.MigActive && st.Postcopy == "" && link != nil {
			ls := link.Stats()
			limit = a.tuneDowntimeLimit(ctx, j, ls.SmoothedRTT, ls.MinRTT, limit)
		}
		if j.role == migration.Source && time.Since(lastPost) >= progressEvery {
			lastPost = time.Now()
			a.postProgress(j, st)
		}
		var streamErr error
		if pumpDone {
			streamErr = pumpErr
		}
		next, why := migration.JobPhase(j.role, phase, st, streamErr)
		if j.movePhase(phase, next, why) {
			a.log.Info("agent: migration phase", "id", j.order.ID, "role", j.role, "vm", j.order.VM, "phase", next, "err", why)
			a.postPhase(j)
			if j.role == migration.Source {
				a.postProgress(j, st)
			}
			if migration.ResumeOnVerify(j.role, phase, next, j.isArmed()) {
				if err := a.commitDestination(ctx, j.mig, j.order); err != nil {
					// The MMC's commit retries it.
					a.log.Warn("agent: resuming the armed copy", "id", j.order.ID, "vm", j.order.VM, "err", err)
				}
			}
		}
		// The job's work is done once the stream is over and the
		// hypervisor has reached an outcome; commit/rollback come as
		// separate actions.
		if pumpDone && st.State != hypervisor.MigActive {
			return
		}
	}
}

// limitStep is how far the queue-aware downtime limit must move before
// the hypervisor is told (each change is a QMP round trip).
const limitStep = 10 * time.Millisecond

// tuneDowntimeLimit keeps the hypervisor's stop-and-copy limit at
// queueAwareLimit for the link's current queue (its smoothed and minimum
// RTTs), if the driver can change it mid-migration; it returns the limit
// it last asked for (cur if unchanged).
func (a *Agent) tuneDowntimeLimit(ctx context.Context, j *job, srtt, minRTT, cur time.Duration) time.Duration {
	ds, ok := j.mig.(hypervisor.DowntimeSetter)
	budget := j.order.Params.DowntimeLimit
	if !ok || budget <= 0 {
		return cur
	}
	want := queueAwareLimit(budget, srtt, minRTT)
	if d := want - cur; d > -limitStep && d < limitStep {
		return cur
	}
	if err := ds.SetDowntimeLimit(ctx, j.order.VM, want); err != nil {
		// Not retried for this value (the watcher polls every 5–200 ms
		// and would log and block on each try); a later move retries.
		a.log.Warn("agent: setting the downtime limit", "id", j.order.ID, "vm", j.order.VM, "limit", want, "err", err)
		return want
	}
	a.log.Debug("agent: downtime limit", "id", j.order.ID, "vm", j.order.VM, "limit", want, "budget", budget,
		"link_queue", srtt-minRTT)
	return want
}

// queueAwareLimit is the stop-and-copy limit for a migration whose
// budget was computed (by the MMC, from its sessions' round trips) for an
// empty link, when the link's smoothed RTT stands above its minimum: that
// is the queue ahead of the final copy, whose bytes wait behind it (a
// BBR-paced bulk stream keeps up to about one BDP queued). It never goes
// below a third of the budget, so a noisy RTT cannot stop the migration
// from converging.
func queueAwareLimit(budget, srtt, minRTT time.Duration) time.Duration {
	if budget <= 0 || minRTT <= 0 || srtt <= minRTT {
		return budget
	}
	return max(budget-(srtt-minRTT), budget/3)
}

// nearSwitchOver: a transfer whose remaining memory would take under a
// second to send.
func nearSwitchOver(st hypervisor.MigrationStatus) bool {
	return st.State == hypervisor.MigActive && st.ExpectedDowntime > 0 && st.ExpectedDowntime < time.Second
}

func (a *Agent) postPhase(j *job) {
	j.mu.Lock()
	p := board.MigrationPhase{Role: j.role, Phase: j.phase, Error: truncate(j.err, 1000)}
	j.mu.Unlock()
	a.post(j.order.Topic, board.KindMigrationPhase, p)
}

func (a *Agent) postProgress(j *job, st hypervisor.MigrationStatus) {
	var wire uint64
	j.mu.Lock()
	link := j.link
	j.mu.Unlock()
	if link != nil {
		ls := link.Stats()
		wire = ls.BytesSent
		// The transport's view beside the hypervisor's, for finding
		// where a slow migration's time goes.
		a.log.Debug("agent: migration link", "id", j.order.ID, "round", st.Round, "remaining", st.Remaining, "transferred", st.Transferred,
			"wire_sent", ls.BytesSent, "retransmitted", ls.RetransmittedBytes, "lost_packets", ls.PacketsLost,
			"app_limited", ls.AppLimited, "srtt", ls.SmoothedRTT, "min_rtt", ls.MinRTT, "cwnd", ls.CongestionWindow, "pacing_bps", int64(ls.PacingRate*8),
			"inflight", ls.BytesInFlight, "cc_state", ls.Controller.State, "btlbw_bps", int64(ls.Controller.BtlBw*8),
			"ceiling", ls.Controller.InflightCeiling, "congestion_events", ls.Controller.CongestionEvents,
			"random_loss", ls.Controller.RandomLoss)
	}
	a.post(j.order.Topic, board.KindMigrationProgress, board.MigrationProgress{Round: st.Round, Total: st.Total,
		Remaining: st.Remaining, Transferred: st.Transferred, WireBytes: wire, DirtyRate: st.DirtyRate, Rate: st.Rate,
		ExpectedDowntime: st.ExpectedDowntime.Microseconds(), Throttle: st.Throttle})
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
