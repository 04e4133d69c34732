package migration

import "math"

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
}

// liveOf is the progress a source's report shows; it never goes back
// from prev (later rounds resend pages).
func liveOf(r *Report, prev *Live) *Live {
	st := r.Status
	l := &Live{Round: st.Round, Total: st.Total, Remaining: st.Remaining, Transferred: st.Transferred,
		WireBytes: r.WireBytes, DirtyRate: st.DirtyRate, Rate: st.Rate,
		ExpectedDowntimeMS: st.ExpectedDowntime.Milliseconds(), Throttle: st.Throttle}
	if st.Total > 0 {
		l.Progress = min(0.99, 1-float64(st.Remaining)/float64(st.Total))
	}
	if st.Rate > 0 {
		// A rate near zero would make it infinite: JSON has no infinity
		// (an API listing holding one fails to encode).
		if eta := float64(st.Remaining) / st.Rate; !math.IsInf(eta, 0) {
			l.ETASeconds = eta
		}
	}
	if prev != nil && prev.Progress > l.Progress {
		l.Progress = prev.Progress
	}
	return l
}
