package migration

import (
	"log/slog"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// The decisions: in each state, what the machine does next from the
// record and what it knows.

// advance decides from what the machine knows now.
func (m *Machine) advance(now time.Time) {
	m.wake = time.Time{}
	if m.writing {
		return
	}
	if !m.retryAt.IsZero() {
		if now.Before(m.retryAt) {
			m.at(m.retryAt)
			return
		}
		m.retryAt = time.Time{}
	}
	switch m.rec.State {
	case Planned:
		m.plan(now)
	case Preparing:
		m.prepare(now)
	case Transferring:
		m.transfer(now)
	case Postcopy:
		m.postcopy(now)
	case SwitchOver:
		m.switchOver(now)
	case RollingBack:
		m.rollBack(now)
	case Completed, Cancelled, Failed:
		m.done = true
	default:
		m.rollback(Failed, now, "unknown state %q", m.rec.State)
	}
}

func (m *Machine) plan(now time.Time) {
	r, e := m.rec, m.env
	switch {
	case r.CancelRequested:
		m.rollback(Cancelled, now, "cancelled before it started")
	case !e.SrcOnline || !e.DstOnline:
		m.rollback(Failed, now, "%s or %s is offline", r.From, r.To)
	case e.Spec == nil:
		m.rollback(Failed, now, "VM %s is no longer on %s", r.VM, r.From)
	case e.OtherHost != "" && e.OtherHost != r.From:
		m.rollback(Failed, now, "VM %s is reported by %s too", r.VM, e.OtherHost)
	default:
		r.State = Preparing
		m.persist(r, now)
	}
}

// prepare introduces the agents and prepares the destination at once:
// the destination's job waits for the link, so neither waits for the
// other, and the first byte can flow one order after the slower of the
// two (BENCHMARKS §12.1).
func (m *Machine) prepare(now time.Time) {
	r := m.rec
	if m.resumedPreparing {
		m.rollback(Failed, now, "the MMC restarted while preparing the destination")
		return
	}
	if m.intro == introNone {
		m.intro, m.introAt = introAsked, now
		m.emit(Introduce{Listener: r.To, Dialer: r.From})
	}
	if !m.prepared && m.prepErr == "" {
		o := m.order()
		o.Spec = m.env.Spec
		// The destination's hypervisor may need the parameters before
		// the stream starts (QEMU multifd: its channel count).
		o.Params = r.Params(StopAndCopy(r.DowntimeLimit(), m.srcRTT, m.dstRTT))
		m.send(r.To, OpPrepare, o) // once: a reply sets prepared or prepErr
	}
	switch {
	case m.inflight(r.To, OpPrepare):
		// Even a failed introduction waits for it: the abort of a
		// rollback must not overtake the preparation it undoes.
	case m.prepErr != "":
		m.rollback(Failed, now, "preparing the destination: %s", m.prepErr)
	case m.intro == introAsked:
	case m.introErr != "":
		m.rollback(Failed, now, "introducing the agents: %s", m.introErr)
	case r.CancelRequested:
		m.rollback(Cancelled, now, "cancelled")
	case now.Before(r.holdUntil()):
		m.at(r.holdUntil())
	default:
		r.State, r.Started, r.Path, r.LinkMS, r.PathNote = Transferring, now, m.linkPath, m.linkTook.Milliseconds(), m.linkNote
		m.persist(r, now)
	}
}

// MaxStartHold bounds how long a prepared migration waits for its
// StartAt after it was planned: whatever the record says, a transfer is
// never held for longer.
const MaxStartHold = 5 * time.Second

// holdUntil is when a prepared migration may start its transfer.
func (r Record) holdUntil() time.Time {
	if r.StartAt.IsZero() {
		return time.Time{}
	}
	return minTime(r.StartAt, r.Created.Add(MaxStartHold))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// StopAndCopy is the part of the downtime limit the source's final copy
// may take. The rest of the downtime is fixed costs, estimated from the
// agents' round-trip times to the MMC: the backlog ahead of the final
// copy (the migration stream's bounded queue), the one-way delay of the
// agents' link (half its RTT, which is about the sum of their RTTs to the
// MMC, since the MMC sits near one of them), one link RTT to repair what
// the path lost in the final copy's last round trip (at 1 % loss a final
// copy of a few hundred packets almost always loses one, and the repair
// of the last ones costs a round trip), and 30 ms for the arming's fsync,
// scheduling and the socket pairs between the agents and their
// hypervisors. The arming itself travels beside the stream's tail, so the
// destination resumes without a round trip to the MMC. It never goes
// below a sixth of the limit.
func StopAndCopy(limit, srcRTT, dstRTT time.Duration) time.Duration {
	link := srcRTT + dstRTT
	fixed := QueueDelay + link/2 + link + 30*time.Millisecond
	return max(limit-fixed, limit/6)
}

func (m *Machine) transfer(now time.Time) {
	r := m.rec
	armed := r.Armed()
	if m.progressAt.IsZero() {
		m.progressAt = now
	}
	if m.startNeeded {
		if m.startErr != "" {
			if r.CancelRequested {
				m.rollback(Cancelled, now, "cancelled by the administrator")
			} else {
				m.rollback(Failed, now, "starting the transfer: %s", m.startErr)
			}
			return
		}
		o := m.order()
		o.Params = r.Params(StopAndCopy(r.DowntimeLimit(), m.srcRTT, m.dstRTT))
		m.send(r.From, OpStart, o)
		return
	}
	switch {
	case r.CancelRequested && !armed:
		m.rollback(Cancelled, now, "cancelled by the administrator")
		return
	case m.verified:
		// The commit: from this write on the destination is the VM.
		r.State, r.Verified, r.Progress, r.CommittedAt = SwitchOver, true, 1, now
		m.persist(r, now)
		return
	case m.dstFail != "":
		m.rollback(Failed, now, "%s", m.dstFail)
		return
	case !armed && m.srcFail != "":
		m.rollback(Failed, now, "%s", m.srcFail)
		return
	case !armed && m.sentAll:
		r.ArmedAt = now
		m.persist(r, now)
		return
	case !armed && m.switchReady:
		r.State = Postcopy
		m.persist(r, now)
		return
	case armed && !m.armSent:
		// Sent once per drive: after an MMC restart the order may not
		// have left.
		m.armSent = true
		m.send(r.To, OpArm, m.order())
	case r.Path != "" && m.linkPath != "" && r.Path != m.linkPath && !now.Before(m.progressNext):
		// The link moved (relayed → direct): on record, best effort.
		r.Path, r.PathNote = m.linkPath, m.linkNote
		m.persist(r, now)
		m.bestEffort = true
		return
	case !armed && m.live != nil && m.live.Progress-r.Progress >= progressStep && !now.Before(m.progressNext):
		r.Progress = m.live.Progress
		m.persist(r, now)
		m.bestEffort = true
		return
	}
	if !armed && r.MaxRate != m.rateApplied {
		// The record's cap changed (an operator) or this drive took over
		// a running transfer: the source's follows.
		o := m.order()
		o.Params = r.Params(StopAndCopy(r.DowntimeLimit(), m.srcRTT, m.dstRTT))
		m.send(r.From, OpSetBandwidth, o)
	}
	if now.Sub(m.progressAt) > StallTimeout {
		if armed {
			// The destination may have resumed: an agent that is away,
			// or a link that died in the last round trip, is waited for.
			m.log(slog.LevelWarn, "armed migration waits for its destination", "host", r.To, "err", errText(m.dstErr))
			m.progressAt = now
		} else {
			m.rollback(Failed, now, "no progress for %v (source: %s; destination: %s)", StallTimeout, errText(m.srcErr), errText(m.dstErr))
			return
		}
	}
	if !now.Before(m.nextPoll) {
		m.nextPoll = now.Add(PollEvery)
		m.send(r.To, OpStatus, m.order())
		if !armed {
			m.send(r.From, OpStatus, m.order())
		}
	}
	m.at(m.nextPoll)
	m.at(m.progressAt.Add(StallTimeout).Add(time.Nanosecond))
}

func (m *Machine) postcopy(now time.Time) {
	r := m.rec
	if m.switchFastUntil.IsZero() {
		m.switchFastUntil = now.Add(switchFastFor)
	}
	switch {
	case m.switchFail != "":
		m.rollback(Failed, now, "%s", m.switchFail)
		return
	case m.askDst && m.verified:
		r.State, r.Verified, r.Progress, r.CommittedAt = SwitchOver, true, 1, now
		m.persist(r, now)
		return
	case m.askDst && now.Sub(m.askDstSince) > StallTimeout:
		// The source completed and paused, but the destination shows no
		// verified image: it was neither armed nor committed, so its
		// copy never ran and the source may run again.
		m.rollback(Failed, now, "destination: no verified image %v after the source completed", StallTimeout)
		return
	case m.switched:
		r.State, r.Postcopy, r.CommittedAt, r.PausedAt = SwitchOver, true, now, m.switchedAt
		m.persist(r, now)
		return
	}
	if !now.Before(m.switchNext) {
		m.send(r.From, OpPostcopy, m.order())
		if m.askDst {
			m.send(r.To, OpStatus, m.order())
		}
	}
	if !m.inflight(r.From, OpPostcopy) {
		m.at(m.switchNext)
	}
	if m.askDst {
		m.at(m.askDstSince.Add(StallTimeout).Add(time.Nanosecond))
	}
}

func (m *Machine) switchOver(now time.Time) {
	r := m.rec
	if !m.resumed {
		o := m.order()
		// A post-copy destination resumes as soon as it is in post-copy
		// (its agent waits for that).
		o.Params.Postcopy = r.Postcopy
		m.sendWhenDue(r.To, OpCommit, o, m.commitNext, now)
		return
	}
	if r.Postcopy && !m.pulled {
		// The source holds the pages the destination has not pulled
		// yet. A post-copy cut off from its source pauses and waits;
		// nothing here can roll it back or forward.
		if m.pullFailed != "" {
			// Neither copy is a VM any more. Say so; destroy nothing.
			r.State, r.Finished = Failed, now
			r.Error = "post-copy failed at the destination (" + m.pullFailed +
				"): the guest's memory was split between the hosts; both copies are kept for inspection"
			m.persist(r, now)
			return
		}
		if m.pullWarn.IsZero() {
			m.pullWarn = now
		}
		m.sendWhenDue(r.To, OpStatus, m.order(), m.pullNext, now)
		return
	}
	if !m.srcDone {
		// The source's figures (pause time, rounds, bytes) for the
		// report, read before its copy goes; an agent that is away (it
		// may not yet have noticed an MMC restart) gets a while.
		if !m.srcAsked {
			m.srcAsked, m.srcUntil = true, now.Add(SourceReportWait)
		}
		m.sendWhenDue(r.From, OpStatus, m.order(), m.srcNext, now)
		return
	}
	if !m.finishDone {
		if !m.finishAsked {
			m.finishAsked = true
			m.send(r.From, OpFinish, m.order())
		}
		return
	}
	r.State, r.ResumedAt, r.Finished, r.VerifiedAt, r.BytesOnWire = Completed, m.resumedAt, now, m.verifiedAt, m.dstWire
	if !m.introAt.IsZero() && !m.firstByteAt.IsZero() {
		r.FirstByteMS = max(0, m.firstByteAt.Sub(m.introAt).Milliseconds())
	}
	if src := m.srcReport; src != nil {
		r.PausedAt, r.Rounds, r.Transferred = src.Status.PausedAt, src.Status.Round, src.Status.Transferred
		if src.Status.State == hypervisor.MigCompleted {
			r.SentAt = src.Status.Finished
		}
		r.BytesOnWire += src.WireBytes
	}
	end := m.resumedAt
	if r.Postcopy {
		end = m.verifiedAt // the last page arrived
		r.Verified = !m.verifiedAt.IsZero()
	}
	if !r.Started.IsZero() && !end.IsZero() {
		r.TotalMS = end.Sub(r.Started).Milliseconds()
	}
	if !r.Started.IsZero() && !r.Created.IsZero() {
		r.PrepareMS = max(0, r.Started.Sub(r.Created).Milliseconds())
	}
	if !r.PausedAt.IsZero() {
		r.DowntimeMS = max(0, m.resumedAt.Sub(r.PausedAt).Milliseconds())
	}
	r.Cleanup = append(append([]string(nil), r.Cleanup...), m.cleanup...)
	m.persist(r, now)
}

// rollBack makes the source the running copy again and has the
// destination drop its copy. The source must answer (a copy paused after
// a complete transfer resumes only when told); the destination's abort is
// left as a cleanup if its agent is away (its copy is never resumed
// without a commit, so it is harmless until then).
func (m *Machine) rollBack(now time.Time) {
	r := m.rec
	if !m.rolledBack {
		m.sendWhenDue(r.From, OpRollback, m.order(), m.rollbackNext, now)
		return
	}
	if !m.abortDone {
		if !m.abortAsked {
			m.abortAsked = true
			m.send(r.To, OpAbort, m.order())
		}
		return
	}
	r.State, r.Finished = Failed, now
	if r.Outcome == Cancelled {
		r.State = Cancelled
	}
	r.Cleanup = append(append([]string(nil), r.Cleanup...), m.cleanup...)
	m.persist(r, now)
}
