package congestion

import "time"

// rateEstimator implements draft-cheng-iccrg-delivery-rate-estimation: every
// packet is stamped at send time with how much had been delivered so far and
// when, and on its ACK the delivery rate over the interval that packet's
// flight spanned is
//
//	(delivered now − delivered when it was sent) / max(send elapsed, ack elapsed)
//
// Taking the larger of the send-side and ACK-side intervals means neither a
// compressed burst of ACKs nor a burst of sends can make the path look faster
// than it is; the rate is an under-estimate only when the flight was short of
// data, which is what the app-limited marking records.
type rateEstimator struct {
	delivered     uint64    // C.delivered: bytes acknowledged so far
	deliveredTime time.Time // C.delivered_time: when C.delivered last grew
	firstSentTime time.Time // C.first_sent_time: send time of the packet most recently acked
	// appLimitedUntil is C.app_limited: while non-zero, packets sent are
	// marked app-limited; it clears once the bytes that were in flight when
	// the sender ran dry have all been delivered (their rate samples
	// describe a pipe that was not full).
	appLimitedUntil uint64
}

// rateSample is the outcome of one ACK.
type rateSample struct {
	priorDelivered uint64    // P.delivered of the newest packet acked
	priorTime      time.Time // P.delivered_time of that packet
	newestSent     time.Time // its send time
	sendElapsed    time.Duration
	ackElapsed     time.Duration
	ackedBytes     int
	appLimited     bool
	have           bool // at least one packet was acked
	interval       time.Duration
	delivered      uint64  // bytes delivered over interval
	rate           float64 // bytes/s; 0 = no valid sample
}

// onSent stamps a packet. inflight is the bytes in flight before it.
func (r *rateEstimator) onSent(now time.Time, size, inflight int) PacketState {
	if inflight == 0 {
		// Nothing in flight: the next interval starts now, not at the last
		// ACK, or an idle period would be counted as transmission time.
		r.firstSentTime = now
		r.deliveredTime = now
	}
	return PacketState{
		SentTime:      now,
		Size:          size,
		Delivered:     r.delivered,
		DeliveredTime: r.deliveredTime,
		FirstSentTime: r.firstSentTime,
		AppLimited:    r.appLimitedUntil != 0,
	}
}

// onAck folds the packets of one ACK into the counters and generates a rate
// sample. minRTT (0 = unknown) rejects samples whose interval is shorter than
// a round trip: those come from ACKs arriving faster than the path delivers
// (ACK compression, a stretched ACK releasing many packets) and would inflate
// the bandwidth estimate.
func (r *rateEstimator) onAck(now time.Time, acked []PacketState, minRTT time.Duration) rateSample {
	var rs rateSample
	for i := range acked {
		p := &acked[i]
		rs.ackedBytes += p.Size
		r.delivered += uint64(p.Size)
		r.deliveredTime = now
		// The newest packet (largest P.delivered, later send time on ties)
		// spans the most recent interval; samples should reflect the present.
		if !rs.have || p.Delivered > rs.priorDelivered ||
			(p.Delivered == rs.priorDelivered && p.SentTime.After(rs.newestSent)) {
			rs.have = true
			rs.priorDelivered = p.Delivered
			rs.priorTime = p.DeliveredTime
			rs.newestSent = p.SentTime
			rs.appLimited = p.AppLimited
			rs.sendElapsed = p.SentTime.Sub(p.FirstSentTime)
			rs.ackElapsed = now.Sub(p.DeliveredTime)
		}
	}
	if r.appLimitedUntil != 0 && r.delivered > r.appLimitedUntil {
		r.appLimitedUntil = 0
	}
	if !rs.have {
		return rs
	}
	r.firstSentTime = rs.newestSent
	rs.interval = max(rs.sendElapsed, rs.ackElapsed)
	rs.delivered = r.delivered - rs.priorDelivered
	if rs.interval <= 0 || (minRTT > 0 && rs.interval < minRTT) {
		return rs
	}
	rs.rate = float64(rs.delivered) / rs.interval.Seconds()
	return rs
}

// markAppLimited records that the sender has nothing to send with
// inflight bytes outstanding: samples from packets sent until those bytes are
// delivered are app-limited.
func (r *rateEstimator) markAppLimited(inflight int) {
	r.appLimitedUntil = r.delivered + uint64(max(inflight, 0))
	if r.appLimitedUntil == 0 {
		r.appLimitedUntil = 1 // 0 means "not app-limited"
	}
}
