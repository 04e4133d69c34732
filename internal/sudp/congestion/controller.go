package congestion

import (
	"math"
	"slices"
	"time"
)

// PacketState is the per-packet record the core stores with each sent packet
// (as returned by OnPacketSent) and hands back, unchanged, in OnAck or OnLoss.
type PacketState struct {
	SentTime      time.Time
	Size          int       // bytes on the wire
	Delivered     uint64    // C.delivered when sent
	DeliveredTime time.Time // C.deliveredTime when sent
	FirstSentTime time.Time
	AppLimited    bool
}

// Config parameterises a Controller. Zero fields take the documented default.
type Config struct {
	MaxDatagramSize int           // bytes; default 1452
	InitialWindow   int           // bytes; default 32*MaxDatagramSize
	MinWindow       int           // bytes; default 4*MaxDatagramSize
	MaxRate         float64       // bytes/s hard cap, 0 = none
	InitialRTT      time.Duration // default 100ms until measured
}

// Stats is a snapshot of the controller's model, for logs and metrics.
type Stats struct {
	State            string        // STARTUP, DRAIN, PROBE_BW or PROBE_RTT
	BtlBw            float64       // bytes/s, windowed-max delivery rate
	MinRTT           time.Duration // windowed-min RTT (0 = not measured yet)
	SRTT             time.Duration // smoothed RTT (0 = not measured yet)
	PacingRate       float64       // bytes/s, as returned by PacingRate
	Cwnd             int           // bytes
	InflightCeiling  int           // bytes; 0 = no loss-derived ceiling
	LossRate         float64       // recent loss rate (EWMA over rounds), 0..1
	RandomLoss       float64       // the path's own loss the loss rule excuses, 0..1
	MaxRate          float64       // bytes/s hard cap, 0 = none
	Delivered        uint64        // bytes acknowledged
	Lost             uint64        // bytes declared lost
	Rounds           uint64        // packet-timed round trips
	CongestionEvents uint64        // losses that coincided with a standing queue (ceiling cuts)
	Resumed          bool          // started from an earlier connection's model (Resume)
	LossRounds       int           // rounds behind RandomLoss (at most the 15 its median spans)
}

// Tunables. The BBR constants are those of BBRv1 (Cardwell et al., 2016)
// except where noted; the loss rule is this package's own (see doc.go).
const (
	startupPacingGain = 2.885 // 2/ln 2: the smallest gain that doubles the delivery rate per round
	startupCwndGain   = 2.0   // as BBRv2/v3: 2/ln 2 over-fills shallow buffers for no gain
	drainPacingGain   = 1 / startupPacingGain
	probeBWCwndGain   = 2.0 // headroom for delayed/aggregated ACKs

	btlBwWindowRounds = 10
	minRTTWindow      = 10 * time.Second
	probeRTTDuration  = 200 * time.Millisecond

	// pacingMargin paces 1% under the estimate so that an estimate that is
	// exact does not slowly build a queue from rounding and timer slop.
	pacingMargin = 0.99

	fullBwGrowth = 1.25 // STARTUP continues while the estimate grows by this much per round
	fullBwRounds = 3    // ... and ends after this many rounds without such growth

	// Loss-with-queueing rule (see doc.go).
	standingQueueDivisor = 8                      // standing queue: round-min RTT > minRTT + minRTT/8 ...
	standingQueueFloor   = time.Millisecond       // ... and > minRTT + 1 ms
	queuePresentDivisor  = 16                     // "some queue" for ceiling growth: > minRTT/16 ...
	queuePresentFloor    = 500 * time.Microsecond // ... and 0.5 ms
	minCutFactor         = 0.5
	maxCutFactor         = 0.85
	additiveIncrease     = 8       // packets per round while a queue is present
	lossRateEWMA         = 1.0 / 8 // weight of one round in Stats.LossRate

	// maxLossCompensation bounds the loss rate that pacing compensates for
	// (see setPacingRate): beyond it the path is broken rather than lossy,
	// and sending 1/(1−p) times the delivery rate would mostly feed losses.
	maxLossCompensation = 0.25
	lossCompFraction    = 0.85
	// lossMedianRounds: the path's random loss rate is the median of the
	// per-round loss fractions over this many rounds. Random loss hits most
	// rounds alike; overflow comes in bursts that hit a few, and a median
	// (unlike a mean) does not mistake those few for the path's loss.
	lossMedianRounds = 15
	// unknownLossThreshold: after STARTUP and before any round has
	// measured the random loss, the loss rule needs more than this
	// fraction of a round lost (BBRv2's loss threshold).
	unknownLossThreshold = 0.02
	// minBaselineRounds: a non-zero random-loss baseline from fewer rounds
	// than this (a full median window) is not trusted yet, and the
	// unknown-loss threshold applies instead. The median of a few small
	// per-round loss counts sits well below the mean, and a run of rounds
	// over a "standing queue" of host noise multiplies the error: traced on
	// the WAN lab, 0.28 % from three rounds of a path losing 1 %, and
	// 0.64 % from eight, which cut a flow to 1 BDP for three seconds (with
	// 8 rounds, 3 of 10 migrations had such cuts; with 15, none of 8). A
	// zero baseline is trusted from the first round: on a path with no
	// random loss every loss is overflow.
	minBaselineRounds = lossMedianRounds
	// congestionMemoryRounds: how long a congestion cut marks the path as
	// one whose losses may be overflow (a few seconds at WAN RTTs).
	congestionMemoryRounds = 64

	// capBoundSlack: the MaxRate cap counts as the binding limit when it is
	// no more than 2% above the bandwidth estimate. Paced exactly at the cap,
	// the estimate hovers around it; the slack stops that noise from toggling
	// between capped pacing and gain cycling.
	capBoundSlack = 1.02
)

// PROBE_BW pacing-gain cycle: one phase (one min RTT) probing for more
// bandwidth, one draining the queue the probe may have built, then cruising
// at the estimate for cruiseMinPhases..cruiseMaxPhases phases (BBRv1 always
// cruises 6). The random cruise length keeps flows that happen to probe in
// the same round from staying in lock-step: flows that probe together each
// keep their share, while a flow probing alone gains in proportion to how
// small it is (FIFO service hands a small flow nearly all of its extra 25%,
// a large one little), which is what moves BBR flows toward equal shares.
const (
	probeUpGain     = 1.25
	probeDownGain   = 0.75
	cruiseMinPhases = 4
	cruiseMaxPhases = 8
	cruiseDrainGain = 0.9 // a cruise phase that follows a round with a standing queue
)

const (
	phaseUp = iota
	phaseDown
	phaseCruise
)

type mode uint8

const (
	modeStartup mode = iota
	modeDrain
	modeProbeBW
	modeProbeRTT
)

func (m mode) String() string {
	switch m {
	case modeStartup:
		return "STARTUP"
	case modeDrain:
		return "DRAIN"
	case modeProbeBW:
		return "PROBE_BW"
	default:
		return "PROBE_RTT"
	}
}

// roundTally accumulates what one packet-timed round trip observed.
type roundTally struct {
	acked       uint64
	lost        uint64
	minRTT      time.Duration // smallest RTT sample of the round; 0 = none
	maxInflight int           // largest bytes in flight after a send
}

// Controller is a sans-I/O BBR-style rate controller. It is not safe for
// concurrent use; the connection core serialises calls.
type Controller struct {
	cfg     Config
	maxRate float64

	rate   rateEstimator
	btlBw  windowedFilter[float64] // keyed by round count
	minRTT minRTTFilter
	srtt   time.Duration

	// Round-trip counting: a round ends when a packet sent after the
	// previous round ended is acknowledged.
	rounds             uint64
	nextRoundDelivered uint64
	roundStart         bool

	mode       mode
	pacingGain float64
	cwndGain   float64
	cycleIdx   int // phaseUp, phaseDown or phaseCruise
	cruiseLeft int // cruise phases left before the next probe
	cycleStamp time.Time
	rng        uint64

	fullBw      float64
	fullBwCount int
	filledPipe  bool

	probeRTTDone      time.Time // zero until inflight has dropped to the PROBE_RTT window
	probeRTTRoundDone bool
	priorCwnd         int
	idleRestart       bool

	cwnd       int
	pacingRate float64 // model rate before the MaxRate cap
	lostSince  bool    // a loss was reported since the last ACK

	// Loss-with-queueing rule state.
	tally        roundTally
	prevInflight int           // maxInflight of the previous round
	prevVolume   uint64        // acked+lost bytes of the previous round
	prevMinRTT   time.Duration // minRTT of the previous round
	ceiling      int           // bytes; 0 = none
	// memoryCeiling is the ceiling the cut that started the congestion
	// memory left (see cutCeiling).
	memoryCeiling int
	ceilingIncr   int
	// provisional: the ceiling comes from STARTUP's exit, not from
	// congestion in PROBE_BW, and grows by doubling increments until
	// congestion is seen again (see growCeiling).
	provisional bool
	skipRounds  int
	lossRate    float64
	randomLoss  float64 // the path's own loss: median loss fraction of recent rounds
	roundLoss   [lossMedianRounds]float64
	roundLossN  int
	// Losses and volume of the completed rounds of the current run of
	// rounds over a standing queue: the loss rule judges the whole run, so
	// that a modest excess over the random-loss baseline still shows once
	// it has lasted a few rounds.
	runLost, runVolume uint64
	// congestedRound is the round of the last congestion cut after
	// STARTUP (0: none). For congestionMemoryRounds after one, the path is
	// known to overflow: loss is neither compensated nor excused.
	congestedRound uint64
	lostTotal      uint64
	congEvents     uint64

	// resume is what an earlier connection measured on this path (Resume),
	// applied at the first RTT sample if that sample shows the same path;
	// resumed counts the resumes applied (Stats).
	resume  resumeSeed
	resumed bool

	// Test-only knobs, to measure what the design choices buy: noLossRule
	// turns the loss-with-queueing rule off (plain BBRv1); lossThreshold
	// additionally requires the round's losses to exceed that fraction of a
	// round's bytes (BBRv2-style 2 %) instead of any loss.
	noLossRule    bool
	lossThreshold float64
}

// New returns a controller in STARTUP. now seeds the choice of the first
// PROBE_BW phase, so flows started at different instants do not probe in
// lock-step.
func New(cfg Config, now time.Time) *Controller {
	if cfg.MaxDatagramSize <= 0 {
		cfg.MaxDatagramSize = 1452
	}
	if cfg.InitialWindow <= 0 {
		cfg.InitialWindow = 32 * cfg.MaxDatagramSize
	}
	if cfg.MinWindow <= 0 {
		cfg.MinWindow = 4 * cfg.MaxDatagramSize
	}
	if cfg.InitialWindow < cfg.MinWindow {
		cfg.InitialWindow = cfg.MinWindow
	}
	if cfg.InitialRTT <= 0 {
		cfg.InitialRTT = 100 * time.Millisecond
	}
	if cfg.MaxRate < 0 || math.IsNaN(cfg.MaxRate) {
		cfg.MaxRate = 0
	}
	c := &Controller{
		cfg:     cfg,
		maxRate: cfg.MaxRate,
		btlBw:   newMaxFilter[float64](btlBwWindowRounds),
		minRTT:  minRTTFilter{window: minRTTWindow, stamp: now},
		cwnd:    cfg.InitialWindow,
		rng:     uint64(now.UnixNano()) ^ 0x9e3779b97f4a7c15,
	}
	c.enterStartup()
	c.pacingRate = startupPacingGain * float64(cfg.InitialWindow) / cfg.InitialRTT.Seconds()
	return c
}

// resumeSeed is a path's model as an earlier connection left it.
type resumeSeed struct {
	bw     float64
	minRTT time.Duration
	loss   float64 // the path's random loss; < 0: not known
}

// Resume gives a new connection the bandwidth and minimum RTT an earlier
// connection measured over the same path, so that it need not find the
// rate again from its initial window (careful resume, after
// draft-ietf-tsvwg-careful-resume). Nothing happens until the first RTT
// sample: if it is within [minRTT/2, 3 × minRTT] the path is taken to be
// the same, the window jumps to one bandwidth-delay product of bw, and
// the model starts from half of bw — STARTUP's gain paces that at 1.44 ×
// bw, bounded by the window, and goes on probing from there, so a path
// that is as it was is full within a round and one that lost capacity
// shows it by its queue and its losses (the loss rule's cut), as a
// STARTUP overshoot does. A random-loss rate (Stats.RandomLoss of a model
// whose Stats.LossRounds reached lossMedianRounds; negative: none) seeds
// the loss baseline too, so that from the first round the loss rule
// excuses what the path loses at random and judges only the excess: a
// new connection's baseline otherwise rests on its few first rounds
// after STARTUP and can take random losses for overflow (see Known
// limitations). Its own rounds replace the seed's over the next
// lossMedianRounds. Any other first sample discards the seed; a
// controller that has an RTT sample already (the connection's first
// packets were acknowledged) judges by its smoothed RTT at once. It
// applies only to a controller in STARTUP that has delivered less than
// its initial window; it reports whether the seed was taken for
// consideration.
func (c *Controller) Resume(bw float64, minRTT time.Duration, loss float64) bool {
	if c.mode != modeStartup || c.filledPipe || c.rate.delivered >= uint64(c.cfg.InitialWindow) ||
		!(bw > 0) || math.IsInf(bw, 0) || minRTT <= 0 {
		return false
	}
	if !(loss >= 0 && loss <= 1) {
		loss = -1 // unknown, or not a rate
	}
	// A baseline excuses losses: one seeded from a link whose overflow
	// was taken for random loss must not excuse more than compensation
	// ever assumes.
	loss = min(loss, maxLossCompensation)
	c.resume = resumeSeed{bw: bw, minRTT: minRTT, loss: loss}
	if c.srtt > 0 {
		c.applyResume(c.srtt)
		c.setPacingRate(c.pacingGain)
	}
	return true
}

// applyResume acts on the seed at the first RTT sample.
func (c *Controller) applyResume(rtt time.Duration) {
	seed := c.resume
	c.resume = resumeSeed{}
	if rtt < seed.minRTT/2 || rtt > 3*seed.minRTT {
		return // another path, or this one now queues: start as new
	}
	c.btlBw.Update(seed.bw/2, c.rounds)
	c.cwnd = max(c.cwnd, int(seed.bw*seed.minRTT.Seconds()))
	if seed.loss >= 0 && c.roundLossN == 0 {
		for i := range c.roundLoss {
			c.roundLoss[i] = seed.loss
		}
		c.roundLossN = lossMedianRounds
		c.randomLoss = seed.loss
	}
	c.resumed = true
}

// OnPacketSent stamps a packet about to be sent. bytesInFlight is the amount
// in flight before this packet.
func (c *Controller) OnPacketSent(now time.Time, size int, bytesInFlight int) PacketState {
	if bytesInFlight == 0 && c.rate.appLimitedUntil != 0 {
		// Restarting after the application left the pipe empty. The
		// estimate is still valid, but a PROBE_BW probe or drain phase
		// that was in progress is not: resume at the estimated rate.
		c.idleRestart = true
		if c.mode == modeProbeBW {
			c.setPacingRate(1)
		}
	}
	ps := c.rate.onSent(now, size, bytesInFlight)
	if f := bytesInFlight + size; f > c.tally.maxInflight {
		c.tally.maxInflight = f
	}
	return ps
}

// OnAck processes one ACK frame. acked are the packets it newly
// acknowledges; rtt is the latest RTT sample (0 if the frame produced none);
// bytesInFlight is the amount in flight after removing the acked packets.
func (c *Controller) OnAck(now time.Time, acked []PacketState, rtt time.Duration, bytesInFlight int) {
	minRTTExpired := false
	if rtt > 0 {
		if c.srtt == 0 && c.resume.bw > 0 {
			c.applyResume(rtt)
		}
		if c.srtt == 0 {
			c.srtt = rtt
		} else {
			c.srtt += (rtt - c.srtt) / 8
		}
		if c.tally.minRTT == 0 || rtt < c.tally.minRTT {
			c.tally.minRTT = rtt
		}
		minRTTExpired = c.minRTT.Update(rtt, now)
	} else {
		minRTTExpired = c.minRTT.Expired(now)
	}

	rs := c.rate.onAck(now, acked, c.minRTT.min)
	priorInflight := bytesInFlight + rs.ackedBytes
	if rs.ackedBytes > 0 {
		c.idleRestart = false
	}

	// Round accounting.
	c.roundStart = false
	if rs.have && rs.priorDelivered >= c.nextRoundDelivered {
		c.nextRoundDelivered = c.rate.delivered
		c.rounds++
		c.roundStart = true
		c.endRound()
	}
	c.tally.acked += uint64(rs.ackedBytes)
	c.checkCongestion()

	// Bottleneck bandwidth: app-limited samples only count when they show
	// more than we knew (a pipe that was not full can still prove a floor).
	if rs.rate > 0 && (!rs.appLimited || rs.rate >= c.btlBw.Get()) {
		c.btlBw.Update(rs.rate, c.rounds)
	}

	c.checkCyclePhase(now, priorInflight)
	c.checkFullPipe(rs)
	c.checkDrain(now, bytesInFlight)
	c.checkProbeRTT(now, bytesInFlight, minRTTExpired)

	c.setPacingRate(c.pacingGain)
	c.setCwnd(rs.ackedBytes)
	c.lostSince = false
}

// OnLoss processes packets declared lost. bytesInFlight is the amount in
// flight after removing them. Loss by itself does not shrink the window:
// it is judged once per round, together with the RTT (see doc.go).
func (c *Controller) OnLoss(now time.Time, lost []PacketState, bytesInFlight int) {
	var b uint64
	for i := range lost {
		b += uint64(lost[i].Size)
	}
	c.lostTotal += b
	c.tally.lost += b
	if b > 0 {
		c.lostSince = true
		if c.checkCongestion(); c.ceiling > 0 && c.cwnd > c.ceiling {
			c.cwnd = max(c.ceiling, c.cfg.MinWindow)
		}
	}
}

// OnAppLimited tells the controller the sender had nothing to send while the
// congestion window and pacer would have allowed it; bytesInFlight is the
// amount in flight at that moment.
func (c *Controller) OnAppLimited(bytesInFlight int) {
	c.rate.markAppLimited(bytesInFlight)
}

// CongestionWindow returns the maximum bytes in flight.
func (c *Controller) CongestionWindow() int { return c.cwnd }

// PacingRate returns the rate in bytes/s at which to pace, MaxRate applied.
func (c *Controller) PacingRate() float64 {
	r := c.pacingRate
	if c.maxRate > 0 {
		if c.capBound() {
			// The cap, not the path, is the limit: pace exactly at it.
			// Gain cycling would only push 0.75 of the cap in the drain
			// phase, and probing above the cap is pointless.
			return c.maxRate
		}
		if r > c.maxRate {
			r = c.maxRate
		}
	}
	return r
}

// SetMaxRate sets (or, with 0, removes) the hard rate cap, effective at once.
func (c *Controller) SetMaxRate(bytesPerSec float64) {
	if bytesPerSec < 0 || math.IsNaN(bytesPerSec) {
		bytesPerSec = 0
	}
	raised := c.maxRate > 0 && (bytesPerSec == 0 || bytesPerSec > c.maxRate)
	if raised && c.maxRate <= capBoundSlack*c.bw() {
		// While capped, the bandwidth estimate only learnt the cap. Gain
		// cycling would take ~8 rounds per 25% to find the path's rate;
		// STARTUP finds it in a few rounds and exits on its own when the
		// estimate stops growing (or on congestion). From PROBE_RTT, the
		// cleared filledPipe makes the exit go through STARTUP.
		c.filledPipe = false
		c.fullBw, c.fullBwCount = 0, 0
		if c.mode != modeProbeRTT {
			c.enterStartup()
		}
	}
	c.maxRate = bytesPerSec
}

// Stats returns a snapshot of the model.
func (c *Controller) Stats() Stats {
	return Stats{
		State:            c.mode.String(),
		BtlBw:            c.btlBw.Get(),
		MinRTT:           c.minRTT.min,
		SRTT:             c.srtt,
		PacingRate:       c.PacingRate(),
		Cwnd:             c.cwnd,
		InflightCeiling:  c.ceiling,
		LossRate:         c.lossRate,
		RandomLoss:       c.randomLoss,
		MaxRate:          c.maxRate,
		Delivered:        c.rate.delivered,
		Lost:             c.lostTotal,
		Rounds:           c.rounds,
		CongestionEvents: c.congEvents,
		Resumed:          c.resumed,
		LossRounds:       min(c.roundLossN, lossMedianRounds),
	}
}

// bw is the bandwidth the model paces at and sizes the window by: the
// windowed-max delivery rate, bounded by what the loss-derived inflight
// ceiling allows over an empty queue.
func (c *Controller) bw() float64 {
	bw := c.btlBw.Get()
	if c.ceiling > 0 && c.minRTT.min > 0 {
		if lim := float64(c.ceiling) / c.minRTT.min.Seconds(); bw == 0 || lim < bw {
			bw = lim
		}
	}
	return bw
}

// bdp returns gain × estimated bandwidth-delay product in bytes.
func (c *Controller) bdp(gain float64) int {
	bw := c.bw()
	if bw == 0 || c.minRTT.min == 0 {
		return int(gain * float64(c.cfg.InitialWindow))
	}
	return int(gain * bw * c.minRTT.min.Seconds())
}

// capBound reports whether MaxRate, rather than the path, limits the flow.
func (c *Controller) capBound() bool {
	return c.maxRate > 0 && c.mode == modeProbeBW && c.maxRate <= capBoundSlack*c.bw()
}

func (c *Controller) quantum() int {
	return int(Burst(c.PacingRate(), c.cfg.MaxDatagramSize))
}

func (c *Controller) enterStartup() {
	c.mode = modeStartup
	c.pacingGain = startupPacingGain
	c.cwndGain = startupCwndGain
}

func (c *Controller) enterProbeBW(now time.Time) {
	c.mode = modeProbeBW
	c.cwndGain = probeBWCwndGain
	// Start at a random point of the cycle other than the drain phase
	// (draining right after DRAIN is pointless), so that flows starting
	// together do not probe together.
	c.cycleStamp = now
	if r := c.random(cruiseMaxPhases); r == 0 {
		c.setPhase(phaseUp)
	} else {
		c.setPhase(phaseCruise)
		c.cruiseLeft = r
	}
}

func (c *Controller) setPhase(p int) {
	c.cycleIdx = p
	switch p {
	case phaseUp:
		c.pacingGain = probeUpGain
	case phaseDown:
		c.pacingGain = probeDownGain
	default:
		c.pacingGain = c.cruiseGain()
		c.cruiseLeft = cruiseMinPhases + c.random(cruiseMaxPhases-cruiseMinPhases+1)
	}
}

// cruiseGain is the pacing gain of one cruise phase: 1, unless the last
// round's smallest RTT shows that a queue stood throughout it. Pacing at
// the estimate keeps whatever queue exists; an estimate a little high (the
// max filter favours lucky samples, and loss compensation removes the
// headroom pacingMargin leaves) lets one slowly build. Draining it here, by
// delay alone, keeps random losses from ever meeting a standing queue that
// the flow built itself, which the loss rule would take for congestion.
func (c *Controller) cruiseGain() float64 {
	if c.queueAbove(c.prevMinRTT, queuePresentDivisor, queuePresentFloor) {
		return cruiseDrainGain
	}
	return 1
}

// random returns a pseudo-random integer in [0, n) (splitmix64). The state
// is seeded from the creation time: deterministic for a given input, which
// keeps the controller sans-I/O and the simulations reproducible.
func (c *Controller) random(n int) int {
	c.rng += 0x9e3779b97f4a7c15
	z := c.rng
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return int(z % uint64(n))
}

func (c *Controller) checkCyclePhase(now time.Time, priorInflight int) {
	if c.mode != modeProbeBW {
		return
	}
	phaseLen := c.minRTT.min
	if phaseLen == 0 {
		phaseLen = c.cfg.InitialRTT
	}
	full := now.Sub(c.cycleStamp) > phaseLen
	next := full
	switch g := c.pacingGain; {
	case g > 1:
		// Probe until inflight reached gain×BDP — or cannot get there
		// because the window (a loss ceiling) stops it — or loss says the
		// pipe is full; but always for at least one min RTT.
		target := c.bdp(g)
		if lim := c.cwnd - c.cfg.MaxDatagramSize; target > lim {
			target = lim
		}
		next = full && (c.lostSince || priorInflight >= target)
	case g < 1:
		// Drain until the queue the probe built is gone, or one min RTT.
		next = full || priorInflight <= c.bdp(1)
	}
	if !next {
		return
	}
	c.cycleStamp = now
	switch c.cycleIdx {
	case phaseUp:
		c.setPhase(phaseDown)
	case phaseDown:
		c.setPhase(phaseCruise)
	default:
		if c.cruiseLeft--; c.cruiseLeft <= 0 {
			c.setPhase(phaseUp)
		} else {
			c.pacingGain = c.cruiseGain()
		}
	}
}

func (c *Controller) checkFullPipe(rs rateSample) {
	if c.filledPipe || !c.roundStart || rs.appLimited {
		return
	}
	if bw := c.btlBw.Get(); bw >= c.fullBw*fullBwGrowth {
		c.fullBw = bw
		c.fullBwCount = 0
		return
	}
	c.fullBwCount++
	if c.fullBwCount >= fullBwRounds {
		c.filledPipe = true
	}
}

func (c *Controller) checkDrain(now time.Time, inflight int) {
	if c.mode == modeStartup && c.filledPipe {
		c.mode = modeDrain
		c.pacingGain = drainPacingGain
		c.cwndGain = startupCwndGain
	}
	if c.mode == modeDrain && inflight <= c.bdp(1) {
		c.enterProbeBW(now)
	}
}

// probeRTTCwnd is BBRv1's four packets (MinWindow), not BBRv2's half BDP:
// a flow that joined while others held a standing queue has a minRTT
// inflated by that queue, and half of an inflated BDP can still exceed the
// true one, so PROBE_RTT would not drain the queue it exists to drain.
func (c *Controller) probeRTTCwnd() int {
	return c.cfg.MinWindow
}

func (c *Controller) checkProbeRTT(now time.Time, inflight int, expired bool) {
	if c.mode != modeProbeRTT && expired && !c.idleRestart {
		c.mode = modeProbeRTT
		c.pacingGain = 1
		c.cwndGain = 1
		c.priorCwnd = c.cwnd
		c.probeRTTDone = time.Time{}
	}
	if c.mode != modeProbeRTT {
		return
	}
	// Samples taken while deliberately holding inflight low say nothing
	// about the bottleneck's bandwidth.
	c.rate.markAppLimited(inflight)
	switch {
	case c.probeRTTDone.IsZero():
		if inflight <= c.probeRTTCwnd() {
			// Queue (our share of it) drained: hold for 200 ms and at
			// least one round so that an RTT sample sees the empty queue.
			c.probeRTTDone = now.Add(probeRTTDuration)
			c.probeRTTRoundDone = false
			c.nextRoundDelivered = c.rate.delivered
		}
	default:
		if c.roundStart {
			c.probeRTTRoundDone = true
		}
		if c.probeRTTRoundDone && now.After(c.probeRTTDone) {
			c.minRTT.Refresh(now)
			c.cwnd = max(c.cwnd, c.priorCwnd)
			if c.filledPipe {
				c.enterProbeBW(now)
			} else {
				c.enterStartup()
			}
		}
	}
}

func (c *Controller) setPacingRate(gain float64) {
	bw := c.bw()
	var r float64
	if bw == 0 {
		rtt := c.srtt
		if rtt == 0 {
			rtt = c.cfg.InitialRTT
		}
		r = gain * float64(c.cfg.InitialWindow) / rtt.Seconds()
	} else {
		r = gain * bw * pacingMargin * c.lossCompensation()
	}
	// Never pace below the minimum window per round trip: the window floor
	// would be meaningless if the pacer could not fill it.
	if mr := c.minRTT.min; mr > 0 {
		if floor := float64(c.cfg.MinWindow) / mr.Seconds(); r < floor {
			r = floor
		}
	}
	// In STARTUP the rate only goes up: a noisy low sample must not stall
	// the exponential search.
	if !c.filledPipe && r < c.pacingRate {
		return
	}
	c.pacingRate = r
}

// lossCompensation is the factor 1/(1−p) by which pacing exceeds the
// delivery-rate estimate on a path with random loss p. Lost packets used
// the bottleneck too (or never reached it), so a flow paced at its delivery
// rate leaves a fraction p of the link idle: at 5 % loss it would deliver
// only 95 % of R(1−p). Congestive loss must not be compensated — sending
// more into a full queue only loses more — so the factor applies only while
// no congestion ceiling is in force (the loss-with-queueing rule sets one as
// soon as losses coincide with a standing queue) and outside STARTUP, whose
// losses are overshoot.
func (c *Controller) lossCompensation() float64 {
	if !c.filledPipe || c.skipRounds > 0 || c.randomLoss <= 0 || c.recentlyCongested() {
		return 1
	}
	l := min(c.randomLoss, maxLossCompensation)
	return 1 + lossCompFraction*l/(1-l)
}

// recentlyCongested reports whether the loss rule fired after STARTUP
// within the last congestionMemoryRounds rounds. Losses on a path that
// overflows may be overflow even when no queue shows — a shallow buffer
// overflows before the RTT rises much — so there neither the random-loss
// baseline nor loss compensation may apply.
func (c *Controller) recentlyCongested() bool {
	return c.congestedRound > 0 && c.rounds-c.congestedRound < congestionMemoryRounds
}

func (c *Controller) setCwnd(acked int) {
	target := c.bdp(c.cwndGain) + c.quantum()
	switch {
	case c.filledPipe:
		c.cwnd = min(c.cwnd+acked, target)
	case c.cwnd < target || c.rate.delivered < uint64(c.cfg.InitialWindow):
		c.cwnd += acked
	}
	c.cwnd = max(c.cwnd, c.cfg.MinWindow)
	if c.mode == modeProbeRTT {
		c.cwnd = min(c.cwnd, c.probeRTTCwnd())
	}
	if c.ceiling > 0 {
		c.cwnd = min(c.cwnd, max(c.ceiling, c.cfg.MinWindow))
	}
}

// endRound closes the tally of the round just completed: it feeds the loss
// statistics and, if the round was not congested, lets the ceiling grow.
func (c *Controller) endRound() {
	t := c.tally
	c.tally = roundTally{}
	c.prevInflight = t.maxInflight
	c.prevVolume = t.acked + t.lost
	c.prevMinRTT = t.minRTT
	if total := t.acked + t.lost; total > 0 {
		f := float64(t.lost) / float64(total)
		c.lossRate += (f - c.lossRate) * lossRateEWMA
		// Rounds that ran over a standing queue, or followed a cut, may
		// hold overflow losses; the rest measure the path's own loss.
		if c.skipRounds == 0 && c.filledPipe && !c.queueAbove(t.minRTT, queuePresentDivisor, queuePresentFloor) {
			c.roundLoss[c.roundLossN%lossMedianRounds] = f
			c.roundLossN++
			c.randomLoss = median(c.roundLoss[:min(c.roundLossN, lossMedianRounds)])
		}
	}
	if c.queueAbove(t.minRTT, standingQueueDivisor, standingQueueFloor) {
		c.runLost += t.lost
		c.runVolume += t.acked + t.lost
	} else {
		c.runLost, c.runVolume = 0, 0
	}
	if c.skipRounds > 0 {
		c.skipRounds--
		return
	}
	c.growCeiling(t)
}

// queueAbove reports whether the RTT sample rtt exceeds minRTT by more than
// max(minRTT/div, floor).
func (c *Controller) queueAbove(rtt time.Duration, div time.Duration, floor time.Duration) bool {
	mr := c.minRTT.min
	return rtt > 0 && mr > 0 && rtt-mr > max(mr/div, floor)
}

// checkCongestion applies the loss-with-queueing rule (see doc.go) to the
// round in progress: any loss while the queue stands is congestion. It fires
// as soon as the loss is seen rather than at the end of the round, so that
// flows sharing a bottleneck all react to the same overflow within about one
// RTT of it instead of at their own, arbitrarily phased, round boundaries.
func (c *Controller) checkCongestion() {
	t := &c.tally
	if c.noLossRule || c.skipRounds > 0 || t.lost == 0 || c.minRTT.min == 0 {
		return
	}
	volume := float64(max(t.acked+t.lost, c.prevVolume))
	if c.lossThreshold > 0 && float64(t.lost) <= c.lossThreshold*volume {
		return
	}
	// On a path that loses packets at random, some loss every round is
	// normal: only losses beyond what that rate explains (by three
	// standard deviations of a binomial count), over the run of rounds the
	// queue has stood, can be overflow.
	// After a cut the excuse is withheld (recentlyCongested), but whether
	// the losses exceed it still decides if the cut renews that memory.
	lost, vol := float64(c.runLost+t.lost), float64(c.runVolume)+volume
	exp := c.randomLoss * vol
	excess := lost > exp+3*math.Sqrt(exp*float64(c.cfg.MaxDatagramSize))
	if !excess && !c.recentlyCongested() {
		return
	}
	unknown := c.roundLossN == 0 || (c.randomLoss > 0 && c.roundLossN < minBaselineRounds)
	if c.filledPipe && unknown && float64(t.lost) <= unknownLossThreshold*volume {
		// Past STARTUP, but no round has yet shown the path's random
		// loss (the rounds after STARTUP drain its queue, and on a
		// host whose RTT samples carry a few ms of noise none may
		// qualify for a while): "any loss" would take the path's own
		// losses for overflow, and that first cut withholds the
		// baseline's excuse for 64 rounds, so each later random loss
		// cuts again (traced on the WAN lab and in simulation: cuts
		// with fewer losses than the baseline predicts). Until the
		// baseline exists (or while it rests on too few rounds to be
		// trusted), loss is judged like BBRv2's: congestion above 2 % of
		// a round.
		return
	}
	// Standing queue: even the smallest RTT of this round and of the last
	// one stayed above minRTT by the threshold. A minimum over a round is
	// not moved by BBR's own one-RTT probes or by ACK jitter; it rises only
	// when the queue never drained.
	standing := t.minRTT
	if standing == 0 || (c.prevMinRTT > 0 && c.prevMinRTT < standing) {
		standing = c.prevMinRTT
	}
	if standing == 0 {
		standing = c.srtt
	}
	if !c.queueAbove(standing, standingQueueDivisor, standingQueueFloor) {
		return
	}
	c.cutCeiling(excess)
}

// cutCeiling responds to congestion: the inflight level that overflowed the
// queue is scaled by minRTT/SRTT — the fraction of it that was pipe rather
// than queue — bounded to [minCutFactor, maxCutFactor]. The scaling is
// multiplicative, so every flow gives up the same fraction of its share.
//
// excess says the losses went beyond what the path's random loss
// explains. Only such a cut (or the first) starts the congestion memory
// that withholds the random-loss excuse; a cut made within that memory on
// losses the baseline does explain does not prolong it. Otherwise, on a
// lossy path whose RTT samples carry host noise (a "standing queue" of a
// few ms that is not one), each random loss renewed the memory for
// another 64 rounds and the cuts fed each other for the whole transfer
// (traced on the WAN lab: one cut on real evidence, then five on single
// losses, each within 64 rounds of the last).
func (c *Controller) cutCeiling(excess bool) {
	level := max(c.tally.maxInflight, c.prevInflight)
	if c.ceiling > 0 && c.ceiling < level {
		level = c.ceiling
	}
	f := maxCutFactor
	if c.srtt > 0 {
		f = float64(c.minRTT.min) / float64(c.srtt)
	}
	f = min(max(f, minCutFactor), maxCutFactor)
	renews := excess || !c.recentlyCongested()
	c.ceiling = max(c.cfg.MinWindow, int(f*float64(level)))
	if c.filledPipe && !renews {
		// A cut the path's random loss explains, made only because the
		// memory withholds the excuse, takes the ceiling no lower than
		// half of what the cut on real evidence left: on a lossy path with
		// RTT noise a run of them took the flow from 1 MB to 170 kB in
		// three seconds on the WAN lab.
		c.ceiling = max(c.ceiling, int(minCutFactor*float64(c.memoryCeiling)))
	}
	c.ceilingIncr = c.cfg.MaxDatagramSize
	c.runLost, c.runVolume = 0, 0
	// Losses of packets sent before the cut keep arriving for about a
	// round after it: ignore the rest of this round and all of the next.
	c.skipRounds = 2
	c.congEvents++
	if !c.filledPipe {
		// Congestion during STARTUP: the pipe is full, stop doubling.
		c.filledPipe = true
		c.provisional = true
	} else {
		if renews {
			c.congestedRound = max(c.rounds, 1)
			c.memoryCeiling = c.ceiling
		}
		c.provisional = false
	}
}

// growCeiling raises the ceiling after a round in which the flow was held by
// it and saw no congestion. While the round showed a queue (the pipe is full
// and the flow is competing for the buffer) it adds a fixed
// additiveIncrease packets: the same for every flow, while cuts are
// proportional, so shares converge as in AIMD. With no queue at all there is
// spare capacity (a competitor left), and the increment doubles each round
// (1, 2, 4, … packets) to reclaim it in a logarithmic number of rounds. Once
// the ceiling no longer binds BBR's own window it is dropped.
func (c *Controller) growCeiling(t roundTally) {
	if c.ceiling == 0 {
		return
	}
	mss := c.cfg.MaxDatagramSize
	if t.maxInflight+mss >= c.ceiling {
		// A provisional ceiling is STARTUP's one guess, made at a loss
		// that may have been the path's random loss meeting STARTUP's
		// own queue (on a path losing 1 % it nearly always is): the
		// cut put a lone flow at about one BDP, where RTT jitter alone
		// leaves the link idle, and additive growth took seconds to
		// undo it (a 64 MiB transfer at 100 Mbit/s spent its whole
		// life under it). It grows by doubling increments instead,
		// queue or not; real overflow soon brings a PROBE_BW cut, and
		// AIMD from there.
		if !c.provisional && c.queueAbove(t.minRTT, queuePresentDivisor, queuePresentFloor) {
			c.ceiling += additiveIncrease * mss
			c.ceilingIncr = mss
		} else {
			c.ceiling += c.ceilingIncr
			c.ceilingIncr = min(2*c.ceilingIncr, c.ceiling)
		}
	}
	var own int
	if bw, mr := c.btlBw.Get(), c.minRTT.min; bw > 0 && mr > 0 {
		own = int(probeBWCwndGain*bw*mr.Seconds()) + c.quantum()
	}
	if own > 0 && c.ceiling > own {
		c.ceiling, c.provisional = 0, false
	}
}

// median returns the median of v (v is not modified; len(v) ≤ lossMedianRounds).
func median(v []float64) float64 {
	var buf [lossMedianRounds]float64
	s := buf[:len(v)]
	copy(s, v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
