package congestion

// A small discrete-event network simulator for the controller.
//
// Topology: N senders → one bottleneck link (rate R, drop-tail FIFO of Q
// bytes, random loss p applied to packets as they leave the link, so lost
// packets consume link capacity as on a lossy wire) → one-way propagation
// delay D → receivers, which ACK every packet (or every second one, with a
// delayed-ACK timer) over a return path of delay D that neither queues nor
// loses. Senders sit directly at the bottleneck, so base RTT = 2D plus
// serialisation.
//
// The sender side does what the SUDP core will do, through the documented
// API only: it stores the PacketState returned by OnPacketSent, hands it back
// in OnAck / OnLoss, computes the RTT sample from the largest newly acked
// packet, declares a packet lost when a packet 3 later has been acked or when
// it is older than 9/8 × max(srtt, latest RTT) with a later packet acked
// (RFC 9002's thresholds), and — standing in for the core's PTO — when it is
// older than 2×srtt + 10 ms whatever was acked (this only ever catches a
// tail with nothing acked after it). Everything is deterministic: simulated
// time, a seeded math/rand/v2 generator, and no maps.

import (
	"math/rand/v2"
	"time"
)

// ccAlgo is the subset of the Controller API the simulated sender drives;
// the AIMD baseline implements it too.
type ccAlgo interface {
	OnPacketSent(now time.Time, size int, bytesInFlight int) PacketState
	OnAck(now time.Time, acked []PacketState, rtt time.Duration, bytesInFlight int)
	OnLoss(now time.Time, lost []PacketState, bytesInFlight int)
	CongestionWindow() int
	PacingRate() float64
}

type appLimiter interface{ OnAppLimited(bytesInFlight int) }

var simEpoch = time.Unix(1_700_000_000, 0)

func simTime(ns int64) time.Time { return simEpoch.Add(time.Duration(ns)) }

const bucketNs = int64(10 * time.Millisecond) // resolution of the time series

type simConfig struct {
	rate     float64       // bottleneck rate, bytes/s
	delay    time.Duration // one-way propagation delay
	queue    int           // drop-tail limit in bytes (packets waiting, not the one on the wire)
	loss     float64       // random loss probability on the link
	seed     uint64
	mss      int
	ackEvery int           // 1 or 2
	ackDelay time.Duration // delayed-ACK timer when ackEvery == 2
	// ackJitter delays each ACK on the return path by a further uniform
	// [0, ackJitter), in order (an ACK never overtakes the previous one):
	// the scheduling noise of busy hosts, which on the WAN lab adds
	// several ms to RTT samples.
	ackJitter time.Duration
	duration  time.Duration
}

type flowSpec struct {
	start, stop time.Duration // stop 0 = runs to the end
	newCC       func(now time.Time) ccAlgo
	appRate     float64 // application data rate, bytes/s; 0 = bulk (always has data)
}

type evKind uint8

const (
	evStart evKind = iota
	evStop
	evSend
	evLinkDone
	evArrive
	evAck
	evLossTimer
	evDelAck
	evAction
)

type event struct {
	at   int64
	seq  uint64
	kind evKind
	flow int32
	a, b uint64
}

type eventHeap []event

func (h eventHeap) less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}

func (h *eventHeap) push(e event) {
	*h = append(*h, e)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *eventHeap) pop() event {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && s.less(r, l) {
			m = r
		}
		if !s.less(m, i) {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

const (
	pktInFlight uint8 = iota
	pktAcked
	pktLost
)

type simPkt struct {
	st    PacketState
	state uint8
}

type queued struct {
	flow int32
	seq  uint64
	size int
	enq  int64
}

type simFlow struct {
	idx       int32
	spec      flowSpec
	cc        ccAlgo
	pacer     Pacer
	lastAckAt int64 // when its latest ACK reaches the sender (ackJitter keeps them in order)
	running   bool

	nextSeq      uint64
	base         uint64 // seq of pkts[head]
	pkts         []simPkt
	head         int
	inflight     int
	largestAcked int64
	srtt, latest int64
	sendAt       int64 // pending evSend, -1 = none
	timerAt      int64 // pending evLossTimer, -1 = none

	appBytes float64
	appLast  int64

	ackedBuf, lostBuf []PacketState

	// receiver
	pending  [2]uint64
	npending int
	delGen   uint64

	// time series, per bucket
	rcvBytes []float64
	sentPkts []int
	lostPkts []int // declared lost by the sender
}

type sim struct {
	cfg     simConfig
	rng     *rand.Rand
	now     int64
	seq     uint64
	events  eventHeap
	flows   []*simFlow
	actions []func(now time.Time)

	// bottleneck
	busy     bool
	inSvc    queued
	fifo     []queued
	fifoHead int
	qbytes   int

	// per-bucket link statistics
	qDelaySum []float64 // seconds, summed over packets starting service
	qDelayN   []int
	arrivals  []int // packets offered to the queue
	drops     []int // tail drops
	randLoss  []int // random losses
	maxQueue  int
}

func newSim(cfg simConfig, flows ...flowSpec) *sim {
	if cfg.mss == 0 {
		cfg.mss = 1452
	}
	if cfg.ackEvery == 0 {
		cfg.ackEvery = 1
	}
	if cfg.ackDelay == 0 {
		cfg.ackDelay = 5 * time.Millisecond
	}
	nb := int(int64(cfg.duration)/bucketNs) + 1
	s := &sim{
		cfg:       cfg,
		rng:       rand.New(rand.NewPCG(cfg.seed, 0x5eed)),
		qDelaySum: make([]float64, nb),
		qDelayN:   make([]int, nb),
		arrivals:  make([]int, nb),
		drops:     make([]int, nb),
		randLoss:  make([]int, nb),
	}
	for i, fs := range flows {
		f := &simFlow{
			idx:          int32(i),
			spec:         fs,
			largestAcked: -1,
			sendAt:       -1,
			timerAt:      -1,
			rcvBytes:     make([]float64, nb),
			sentPkts:     make([]int, nb),
			lostPkts:     make([]int, nb),
		}
		s.flows = append(s.flows, f)
		s.schedule(int64(fs.start), evStart, int32(i), 0, 0)
		if fs.stop > 0 {
			s.schedule(int64(fs.stop), evStop, int32(i), 0, 0)
		}
	}
	return s
}

// at runs fn at simulated time t.
func (s *sim) at(t time.Duration, fn func(now time.Time)) {
	s.actions = append(s.actions, fn)
	s.schedule(int64(t), evAction, 0, uint64(len(s.actions)-1), 0)
}

func (s *sim) schedule(at int64, k evKind, flow int32, a, b uint64) {
	s.seq++
	s.events.push(event{at: at, seq: s.seq, kind: k, flow: flow, a: a, b: b})
}

func (s *sim) bucket(ns int64) int {
	b := int(ns / bucketNs)
	if b >= len(s.arrivals) {
		b = len(s.arrivals) - 1
	}
	return b
}

func (s *sim) run() {
	end := int64(s.cfg.duration)
	for len(s.events) > 0 {
		e := s.events.pop()
		if e.at > end {
			break
		}
		s.now = e.at
		switch e.kind {
		case evStart:
			f := s.flows[e.flow]
			f.cc = f.spec.newCC(simTime(s.now))
			f.running = true
			f.appLast = s.now
			s.trySend(f)
		case evStop:
			s.flows[e.flow].running = false
		case evSend:
			f := s.flows[e.flow]
			if f.sendAt == s.now {
				f.sendAt = -1
			}
			s.trySend(f)
		case evLinkDone:
			s.linkDone()
		case evArrive:
			s.arrive(e.flow, e.a, int(e.b))
		case evAck:
			s.onAck(s.flows[e.flow], e.a, e.b)
		case evLossTimer:
			f := s.flows[e.flow]
			if f.timerAt == s.now {
				f.timerAt = -1
			}
			s.detectAndReport(f)
			s.armTimer(f)
			s.trySend(f)
		case evDelAck:
			f := s.flows[e.flow]
			if e.a == f.delGen && f.npending > 0 {
				s.sendAck(e.flow, f)
			}
		case evAction:
			s.actions[e.a](simTime(s.now))
			for _, f := range s.flows {
				if f.running {
					s.trySend(f)
				}
			}
		}
	}
}

// ---- sender ----

func (s *sim) trySend(f *simFlow) {
	mss := s.cfg.mss
	for f.running {
		if f.inflight+mss > f.cc.CongestionWindow() {
			f.pacer.Blocked()
			return // an ACK or a loss will call again
		}
		if f.spec.appRate > 0 {
			f.appBytes += f.spec.appRate * float64(s.now-f.appLast) / 1e9
			f.appLast = s.now
			if f.appBytes > float64(64*mss) {
				f.appBytes = float64(64 * mss)
			}
			if f.appBytes < float64(mss) {
				// Nothing to send although the window is open: exactly
				// when the core must call OnAppLimited.
				if al, ok := f.cc.(appLimiter); ok {
					al.OnAppLimited(f.inflight)
				}
				f.pacer.Blocked()
				wait := int64((float64(mss)-f.appBytes)/f.spec.appRate*1e9) + 1
				s.wakeAt(f, s.now+wait)
				return
			}
		}
		rate := f.cc.PacingRate()
		now := simTime(s.now)
		if d := f.pacer.Delay(now, rate, mss); d > 0 {
			s.wakeAt(f, s.now+int64(d))
			return
		}
		st := f.cc.OnPacketSent(now, mss, f.inflight)
		f.pacer.OnSent(now, rate, mss)
		if f.spec.appRate > 0 {
			f.appBytes -= float64(mss)
		}
		seq := f.nextSeq
		f.nextSeq++
		f.pkts = append(f.pkts, simPkt{st: st})
		f.inflight += mss
		f.sentPkts[s.bucket(s.now)]++
		s.enqueue(queued{flow: s.flowIndex(f), seq: seq, size: mss, enq: s.now})
		if f.timerAt < 0 {
			s.armTimer(f)
		}
	}
}

func (s *sim) flowIndex(f *simFlow) int32 { return f.idx }

func (s *sim) wakeAt(f *simFlow, t int64) {
	if f.sendAt >= 0 && f.sendAt <= t {
		return
	}
	f.sendAt = t
	s.schedule(t, evSend, s.flowIndex(f), 0, 0)
}

func (s *sim) onAck(f *simFlow, seq1, seq2 uint64) {
	if f.cc == nil {
		return
	}
	acked := f.ackedBuf[:0]
	var rtt time.Duration
	for i, seq := range [2]uint64{seq1, seq2} {
		if i == 1 && seq == 0 {
			break
		}
		if i == 1 {
			seq-- // encoded +1 so that 0 means "absent"
		}
		if seq < f.base || seq >= f.nextSeq {
			continue
		}
		p := &f.pkts[f.head+int(seq-f.base)]
		if p.state != pktInFlight {
			continue // already declared lost (spurious) — the core ignores it too
		}
		p.state = pktAcked
		f.inflight -= p.st.Size
		acked = append(acked, p.st)
		if int64(seq) > f.largestAcked {
			f.largestAcked = int64(seq)
			rtt = simTime(s.now).Sub(p.st.SentTime)
		}
	}
	if rtt > 0 {
		f.latest = int64(rtt)
		if f.srtt == 0 {
			f.srtt = int64(rtt)
		} else {
			f.srtt += (int64(rtt) - f.srtt) / 8
		}
	}
	f.ackedBuf = acked
	f.cc.OnAck(simTime(s.now), acked, rtt, f.inflight)
	s.detectAndReport(f)
	s.armTimer(f)
	s.trySend(f)
}

func (f *simFlow) lossDelays() (threshold, tail int64) {
	srtt := f.srtt
	if srtt == 0 {
		srtt = int64(100 * time.Millisecond)
	}
	threshold = max(srtt, f.latest) * 9 / 8
	threshold = max(threshold, int64(time.Millisecond))
	tail = 2*srtt + int64(10*time.Millisecond)
	return threshold, tail
}

// detectAndReport declares losses (packet and time thresholds) and reports
// them, then drops resolved packets from the head of the window.
func (s *sim) detectAndReport(f *simFlow) {
	if f.cc == nil {
		return
	}
	thr, tail := f.lossDelays()
	lost := f.lostBuf[:0]
	sentNow := simTime(s.now)
	for i := f.head; i < len(f.pkts); i++ {
		p := &f.pkts[i]
		if p.state != pktInFlight {
			continue
		}
		seq := int64(f.base) + int64(i-f.head)
		age := sentNow.Sub(p.st.SentTime)
		if seq <= f.largestAcked-3 ||
			(seq < f.largestAcked && int64(age) >= thr) ||
			int64(age) >= tail {
			p.state = pktLost
			f.inflight -= p.st.Size
			lost = append(lost, p.st)
			continue
		}
		break // later packets are younger and later in sequence
	}
	f.lostBuf = lost
	if len(lost) > 0 {
		f.lostPkts[s.bucket(s.now)] += len(lost)
		f.cc.OnLoss(sentNow, lost, f.inflight)
	}
	for f.head < len(f.pkts) && f.pkts[f.head].state != pktInFlight {
		f.head++
		f.base++
	}
	if f.head > 4096 && f.head > len(f.pkts)/2 {
		n := copy(f.pkts, f.pkts[f.head:])
		f.pkts = f.pkts[:n]
		f.head = 0
	}
}

func (s *sim) armTimer(f *simFlow) {
	if f.head >= len(f.pkts) {
		return
	}
	thr, tail := f.lossDelays()
	p := &f.pkts[f.head]
	sent := int64(p.st.SentTime.Sub(simEpoch))
	deadline := sent + tail
	if int64(f.base) < f.largestAcked {
		deadline = min(deadline, sent+thr)
	}
	if deadline <= s.now {
		deadline = s.now + 1
	}
	if f.timerAt >= 0 && f.timerAt <= deadline {
		return // the pending timer fires first and re-arms
	}
	f.timerAt = deadline
	s.schedule(deadline, evLossTimer, s.flowIndex(f), 0, 0)
}

// ---- bottleneck ----

func (s *sim) enqueue(q queued) {
	b := s.bucket(s.now)
	s.arrivals[b]++
	if !s.busy {
		s.startService(q)
		return
	}
	if s.qbytes+q.size > s.cfg.queue {
		s.drops[b]++
		return
	}
	s.fifo = append(s.fifo, q)
	s.qbytes += q.size
	s.maxQueue = max(s.maxQueue, s.qbytes)
}

func (s *sim) startService(q queued) {
	b := s.bucket(s.now)
	s.qDelaySum[b] += float64(s.now-q.enq) / 1e9
	s.qDelayN[b]++
	s.busy = true
	s.inSvc = q
	tx := int64(float64(q.size) / s.cfg.rate * 1e9)
	s.schedule(s.now+tx, evLinkDone, 0, 0, 0)
}

func (s *sim) linkDone() {
	q := s.inSvc
	s.busy = false
	if s.cfg.loss > 0 && s.rng.Float64() < s.cfg.loss {
		s.randLoss[s.bucket(s.now)]++
	} else {
		s.schedule(s.now+int64(s.cfg.delay), evArrive, q.flow, q.seq, uint64(q.size))
	}
	if s.fifoHead < len(s.fifo) {
		n := s.fifo[s.fifoHead]
		s.fifoHead++
		s.qbytes -= n.size
		if s.fifoHead > 1024 && s.fifoHead > len(s.fifo)/2 {
			m := copy(s.fifo, s.fifo[s.fifoHead:])
			s.fifo = s.fifo[:m]
			s.fifoHead = 0
		}
		s.startService(n)
	}
}

// ---- receiver ----

func (s *sim) arrive(fi int32, seq uint64, size int) {
	f := s.flows[fi]
	f.rcvBytes[s.bucket(s.now)] += float64(size)
	f.pending[f.npending] = seq
	f.npending++
	if f.npending >= s.cfg.ackEvery {
		s.sendAck(fi, f)
		return
	}
	f.delGen++
	s.schedule(s.now+int64(s.cfg.ackDelay), evDelAck, fi, f.delGen, 0)
}

func (s *sim) sendAck(fi int32, f *simFlow) {
	a, b := f.pending[0], uint64(0)
	if f.npending > 1 {
		b = f.pending[1] + 1
	}
	f.npending = 0
	f.delGen++
	at := s.now + int64(s.cfg.delay)
	if s.cfg.ackJitter > 0 {
		at = max(at+s.rng.Int64N(int64(s.cfg.ackJitter)), f.lastAckAt)
		f.lastAckAt = at
	}
	s.schedule(at, evAck, fi, a, b)
}

// ---- measurements ----

func (s *sim) bucketRange(from, to time.Duration) (int, int) {
	return int(int64(from) / bucketNs), min(int(int64(to)/bucketNs), len(s.arrivals))
}

// goodput returns flow i's delivered bytes/s over [from, to).
func (s *sim) goodput(i int, from, to time.Duration) float64 {
	a, b := s.bucketRange(from, to)
	var sum float64
	for _, v := range s.flows[i].rcvBytes[a:b] {
		sum += v
	}
	return sum / (to - from).Seconds()
}

func (s *sim) totalGoodput(from, to time.Duration) float64 {
	var sum float64
	for i := range s.flows {
		sum += s.goodput(i, from, to)
	}
	return sum
}

// meanQueueDelay is the mean time packets waited in the bottleneck queue.
func (s *sim) meanQueueDelay(from, to time.Duration) time.Duration {
	a, b := s.bucketRange(from, to)
	var sum float64
	var n int
	for i := a; i < b; i++ {
		sum += s.qDelaySum[i]
		n += s.qDelayN[i]
	}
	if n == 0 {
		return 0
	}
	return time.Duration(sum / float64(n) * 1e9)
}

// dropRate is the fraction of packets offered to the bottleneck that the
// drop-tail queue discarded (congestion loss only, not random loss).
func (s *sim) dropRate(from, to time.Duration) float64 {
	a, b := s.bucketRange(from, to)
	var d, n int
	for i := a; i < b; i++ {
		d += s.drops[i]
		n += s.arrivals[i]
	}
	if n == 0 {
		return 0
	}
	return float64(d) / float64(n)
}

func jain(x []float64) float64 {
	var sum, sq float64
	for _, v := range x {
		sum += v
		sq += v * v
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(x)) * sq)
}

// ---- AIMD baseline ----

// renoModel is a minimal Reno-style AIMD: slow start, +1 MSS per RTT in
// congestion avoidance, halve once per window on loss. It stands in for
// loss-based TCP in same-run comparisons.
type renoModel struct {
	mss           int
	cwnd          float64
	ssthresh      float64
	recoveryStart time.Time
	srtt          time.Duration
}

func newReno(mss int) *renoModel {
	return &renoModel{mss: mss, cwnd: float64(10 * mss), ssthresh: 1 << 40}
}

func (r *renoModel) OnPacketSent(now time.Time, size int, _ int) PacketState {
	return PacketState{SentTime: now, Size: size}
}

func (r *renoModel) OnAck(now time.Time, acked []PacketState, rtt time.Duration, _ int) {
	if rtt > 0 {
		if r.srtt == 0 {
			r.srtt = rtt
		} else {
			r.srtt += (rtt - r.srtt) / 8
		}
	}
	for _, p := range acked {
		if !p.SentTime.After(r.recoveryStart) {
			continue // no growth for packets sent before the last cut
		}
		if r.cwnd < r.ssthresh {
			r.cwnd += float64(p.Size)
		} else {
			r.cwnd += float64(r.mss*p.Size) / r.cwnd
		}
	}
}

func (r *renoModel) OnLoss(now time.Time, lost []PacketState, _ int) {
	for _, p := range lost {
		if p.SentTime.After(r.recoveryStart) {
			r.ssthresh = max(r.cwnd/2, float64(2*r.mss))
			r.cwnd = r.ssthresh
			r.recoveryStart = now
			return
		}
	}
}

func (r *renoModel) CongestionWindow() int { return int(r.cwnd) }

func (r *renoModel) PacingRate() float64 {
	if r.srtt == 0 {
		return 0
	}
	return 1.25 * r.cwnd / r.srtt.Seconds()
}
