package migration

import (
	"math"
	"time"
)

// maxEndsAt bounds the ETA an end time is taken from: a rate near zero
// gives an ETA of years, which as a duration would overflow.
const maxEndsAt = 24 * time.Hour

// Live is a transfer's progress as the source's hypervisor reports it
// (not persisted; the API shows it beside the record).
type Live struct {
	Progress           float64 `json:"progress"`
	Round              int     `json:"round"`
	Total              uint64  `json:"total"`
	Remaining          uint64  `json:"remaining"`
	Transferred        uint64  `json:"transferred"`
	WireBytes          uint64  `json:"wire_bytes"`
	DirtyRate          float64 `json:"dirty_rate"`
	Rate               float64 `json:"rate"`
	ExpectedDowntimeMS int64   `json:"expected_downtime_ms"`
	Throttle           float64 `json:"throttle,omitempty"`
	ETASeconds         float64 `json:"eta_s"`
	// EndsAt is when the transfer should end by this report: its
	// arrival plus the ETA (zero: unknown). Evacuations start the next
	// VM on the link from it (evacuation.Handover).
	EndsAt time.Time `json:"ends_at,omitzero"`
}

// liveOf is the progress a source's report, arrived at now, shows; it
// never goes back from prev (later rounds resend pages).
func liveOf(r *Report, prev *Live, now time.Time) *Live {
	st := r.Status
	l := &Live{Round: st.Round, Total: st.Total, Remaining: st.Remaining, Transferred: st.Transferred,
		WireBytes: r.WireBytes, DirtyRate: st.DirtyRate, Rate: st.Rate,
		ExpectedDowntimeMS: st.ExpectedDowntime.Milliseconds(), Throttle: st.Throttle}
	if st.Total > 0 {
		l.Progress = min(0.99, 1-float64(st.Remaining)/float64(st.Total))
	}
	if st.Rate > 0 {
		// Pre-copy sends what is left while the guest dirties more:
		// the rounds add up to remaining / (rate − dirty rate), when
		// the transfer outruns the guest (otherwise it converges only
		// by auto-converge or the switch-over, and the plain quotient
		// is as good a guess as any).
		net := st.Rate
		if d := st.DirtyRate; d > 0 && d < st.Rate/2 {
			net -= d
		}
		// A rate near zero would make it infinite: JSON has no infinity
		// (an API listing holding one fails to encode).
		if eta := float64(st.Remaining) / net; !math.IsInf(eta, 0) {
			l.ETASeconds = eta
			if eta < maxEndsAt.Seconds() {
				l.EndsAt = now.Add(time.Duration(eta * float64(time.Second)))
			}
		}
	}
	if prev != nil && prev.Progress > l.Progress {
		l.Progress = prev.Progress
	}
	return l
}
