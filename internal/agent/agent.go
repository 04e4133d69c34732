// Package agent is the hypervisor-host side of Ferry: it enrols with the
// MMC (waiting for an administrator's approval, or presenting a join
// token), then keeps an authenticated session open — answering the MMC's
// periodic re-authentication challenges and measuring its clock offset to
// the MMC. The monitor (SMA) and migration (MA) roles run on that session
// (issue 5 onwards).
package agent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/relay"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// StateFile holds the agent's enrolment outcome (registration code
// included) in its data directory, mode 0600.
const StateFile = "agent.json"

// Config configures an agent.
type Config struct {
	DataDir string
	Bundle  identity.Bundle
	Token   string // join token (optional)
	Name    string // host name shown at the MMC (default: hostname)
	Site    string
	Facts   identity.Overrides
	Listen  string // local UDP address (default ":0")
	// ClockAlarm is the clock offset to the MMC beyond which the agent
	// raises an alarm (default 1 s); TimeSyncInterval how often it probes
	// (default 60 s).
	ClockAlarm       time.Duration
	TimeSyncInterval time.Duration
	Version          string
	// NoRateResume starts every migration link from its initial window
	// instead of from the rate the last link over its path measured
	// (pathmodel.go): to measure what resuming gains.
	NoRateResume bool
	// Driver is the host's hypervisor (nil: monitor the host only);
	// ReportInterval how often the monitor reports (default 5 s).
	Driver         hypervisor.Driver
	ReportInterval time.Duration
	// HostStats, if set, replaces measuring the host (load generators
	// run thousands of agents on one machine).
	HostStats func() message.HostStats
	// HostModel, if set, reports the host as a simulated machine of that
	// size whose load is the sum of its VMs' (many simulated hosts on one
	// real machine: the demo).
	HostModel *HostModel
	// SmallBuffers gives the agent's SUDP socket small receive buffers
	// (load generators holding thousands of agents).
	SmallBuffers bool
	// VolatileEvents keeps unacknowledged logs and alarms in memory only
	// instead of DataDir/outbox.db (load generators).
	VolatileEvents bool
	// NoStandby keeps no standby session at another MMC member (load
	// generators measuring the leader alone): the agent then notices a
	// leadership move only when its session ends.
	NoStandby bool
	// DialTimeout bounds one handshake with one MMC member (default 5 s)
	// before the next member is tried.
	DialTimeout time.Duration
	Logger      *slog.Logger
	Rand        io.Reader
}

// ErrFatal marks errors that retrying cannot fix (rejected enrolment,
// refused token, changed host facts); Run returns them.
var ErrFatal = errors.New("agent: fatal")

// Agent is one agent process's state.
type Agent struct {
	online  atomic.Bool // a session with the MMC is up (Ready)
	cfg     Config
	log     *slog.Logger
	static  noise.DHKey
	ep      *sudp.Endpoint
	mmcs    *mmcs // the MMC members, their dial order, the highest term obeyed (mmcs.go)
	state   *enrolState
	clock   *clock
	metrics *metrics
	host    hostSampler
	events  *outbox
	expect  *expectedStops // why a VM may stop without an alarm (expect.go)
	policy  atomic.Uint64  // policy version received from the MMC
	peers   *peers
	punches *punches
	foreign *foreignDispatch // the endpoint's handler of punches and relay acks
	// peerCtx and peerWG own the goroutines an introduction starts
	// (the listener's punches): Run sets peerCtx before any session and
	// waits for them when it returns.
	peerCtx context.Context
	peerWG  sync.WaitGroup
	posts   chan message.BoardPost // blackboard entries waiting for the session
	board   boardLog
	migs    migrations
}

type enrolState struct {
	AgentID   string         `json:"agent_id"`
	ClusterID string         `json:"cluster"`
	Code      []byte         `json:"code"`
	Facts     identity.Facts `json:"facts"` // as recorded at enrolment: the psk is bound to them
}

// New loads (or creates) the agent's key and enrolment state and opens its
// SUDP endpoint.
func New(cfg Config) (*Agent, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("agent: no data directory")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Listen == "" {
		cfg.Listen = ":0"
	}
	if cfg.ClockAlarm <= 0 {
		cfg.ClockAlarm = time.Second
	}
	if cfg.TimeSyncInterval <= 0 {
		cfg.TimeSyncInterval = time.Minute
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = 5 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	keys, err := cfg.Bundle.Keys()
	if err != nil || len(keys) == 0 {
		return nil, fmt.Errorf("agent: bundle: %v", err)
	}
	static, err := identity.LoadOrCreateKey(cfg.DataDir, cfg.Rand)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, static: static, metrics: newMetrics()}
	if cfg.VolatileEvents {
		a.events = newOutbox()
	} else if a.events, err = openOutbox(filepath.Join(cfg.DataDir, OutboxFile)); err != nil {
		return nil, err
	}
	if a.expect, err = openExpectedStops(a.events.db); err != nil {
		_ = a.events.close()
		return nil, err
	}
	if a.mmcs, err = openMMCs(a.events.db, cfg.Bundle); err != nil {
		_ = a.events.close()
		return nil, err
	}
	a.metrics.term.Set(float64(a.mmcs.highestTerm()))
	a.peers = newPeers()
	a.punches = &punches{received: func(o string) { a.metrics.punchesReceived.WithLabelValues(o).Inc() }}
	a.foreign = &foreignDispatch{punches: a.punches}
	a.posts = make(chan message.BoardPost, 256)
	a.clock = &clock{alarm: cfg.ClockAlarm, m: a.metrics, raise: a.events.add}
	a.log = slog.New(mmcTimeHandler{cfg.Logger.Handler(), a.clock})
	a.clock.log = a.log
	a.peers.ended = a.linkEnded
	if err := a.loadState(); err != nil {
		_ = a.events.close()
		return nil, err
	}
	// Inbound handshakes are admitted only from agents the MMC introduced
	// (peers.lookup); everything else is refused by the responder.
	a.ep, err = sudp.Listen(sudp.Config{Listen: cfg.Listen, Static: static, ClusterID: cfg.Bundle.ClusterID, Logger: cfg.Logger,
		SmallBuffers: cfg.SmallBuffers, Lookup: a.peers.lookup, Foreign: a.foreign.handle})
	if err != nil {
		_ = a.events.close()
		return nil, err
	}
	a.foreign.relay.Store(relay.NewClient(a.ep, cfg.Logger))
	return a, nil
}

// ID is the agent's id (derived from its public key).
func (a *Agent) ID() string {
	var pub [32]byte
	copy(pub[:], a.static.Public)
	return identity.NodeID(pub)
}

// Collectors returns the agent's Prometheus collectors.
func (a *Agent) Collectors() []prometheus.Collector {
	return append(a.metrics.collectors(), newOutboxCollector(a.events), sudp.NewCollector(a.ep, prometheus.Labels{"role": "agent"}))
}

// ClockOffset is the current estimate of MMC time minus local time.
func (a *Agent) ClockOffset() time.Duration { return a.clock.offset() }

func (a *Agent) loadState() error {
	path := filepath.Join(a.cfg.DataDir, StateFile)
	b, err := identity.ReadSecretFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer clear(b)
	var st enrolState
	if err := json.Unmarshal(b, &st); err != nil || len(st.Code) != identity.CodeLen {
		return fmt.Errorf("agent: %s is corrupt; remove it to enrol again", path)
	}
	if st.ClusterID != a.cfg.Bundle.ClusterID {
		return fmt.Errorf("agent: %s belongs to cluster %s, the bundle to %s; remove it to enrol with the new cluster", path, st.ClusterID, a.cfg.Bundle.ClusterID)
	}
	a.state = &st
	return nil
}

func (a *Agent) saveState(st *enrolState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	defer clear(b)
	return identity.WriteSecretFile(filepath.Join(a.cfg.DataDir, StateFile), b)
}

// Run enrols if needed, then keeps a session to the MMC, reconnecting with
// jittered exponential backoff, until ctx ends or a fatal error.
func (a *Agent) Run(ctx context.Context) error {
	defer a.events.close()
	defer a.ep.Close()
	pctx, stopPeers := context.WithCancel(ctx)
	a.peerCtx = pctx
	var peersDone sync.WaitGroup
	peersDone.Add(1)
	go func() {
		defer peersDone.Done()
		a.acceptPeers(pctx)
	}()
	a.migs.start(pctx)
	a.pruneResumed(time.Now())
	defer func() {
		stopPeers()
		a.peers.closeAll()
		peersDone.Wait()
		a.peerWG.Wait()
		a.migs.wait()
	}()
	backoff := time.Second
	failedLogins := 0
	redirects := 0
	for ctx.Err() == nil {
		var err error
		start := time.Now()
		enrolling := a.state == nil
		switch {
		case a.state == nil:
			err = a.enrol(ctx)
		case failedLogins >= 2:
			// Handshakes with K keep failing: the MMC may still hold our
			// registration code undelivered (our confirmation was lost).
			// An enrolment session fetches it again; if the key is fully
			// enrolled, this handshake fails too and we keep trying both.
			err = a.enrol(ctx)
			failedLogins = 0
		default:
			err = a.session(ctx)
			if errors.Is(err, errHandshake) {
				failedLogins++
			} else {
				failedLogins = 0
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrFatal) {
			return err
		}
		if err == nil && enrolling && a.state != nil {
			// Just enrolled: log in now.
			redirects = 0
			continue
		}
		if errors.Is(err, errLeaderMoved) {
			// The session was online until the leadership moved: it
			// worked, so the new leader is dialled at once with the
			// count and backoff fresh, as after a first login.
			redirects, backoff = 0, time.Second
		}
		if errors.Is(err, errRedirected) && redirects < maxRedirects {
			// Straight to the member named; members redirecting in a
			// circle (an election under way) get the usual backoff.
			redirects++
			continue
		}
		redirects = 0
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		wait := backoff/2 + time.Duration(mrand.Int64N(int64(backoff)))
		a.log.Info("agent: reconnecting", "in", wait.Round(time.Millisecond).String(), "after", err)
		a.metrics.reconnectWaits.Inc()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		// Capped at 10 s (waits of 5–15 s): an MMC back from an outage
		// has its agents within seconds, and the jitter spreads 10 000
		// of them over 10 s — a few hundred handshakes per second.
		backoff = min(2*backoff, maxBackoff)
	}
	return nil
}

var errHandshake = errors.New("agent: handshake failed")

// errRedirected: the MMC member sent the agent to another (message.Redirect).
var errRedirected = errors.New("agent: redirected")

// errLeaderMoved: a session that was online ended because another member
// leads now (watchLeader). Unlike a redirect at login it is no sign of
// members sending the agent round in a circle.
var errLeaderMoved = fmt.Errorf("%w: the leadership moved", errRedirected)

// maxRedirects bounds the redirects followed without a pause.
const maxRedirects = 3

// maxBackoff caps the reconnection backoff.
const maxBackoff = 10 * time.Second

// closeConn closes c and waits briefly for the close to reach the MMC
// (the endpoint may be closed right after).
func closeConn(c *sudp.Conn) {
	_ = c.Close()
	select {
	case <-c.Done():
	case <-time.After(time.Second):
	}
}

// sessionEnded classifies why the MMC ended a session.
func sessionEnded(c *sudp.Conn, err error) error {
	var ce *sudp.CloseError
	if cerr := c.Err(); errors.As(cerr, &ce) && ce.Remote {
		switch ce.Code {
		case message.CodeRevoked:
			return fmt.Errorf("%w: the MMC revoked this agent (re-enrol with a new data directory if that was a mistake)", ErrFatal)
		case message.CodeFactsChanged:
			return fmt.Errorf("%w: the MMC refused the login: %s", ErrFatal, ce.Reason)
		}
		return fmt.Errorf("agent: session ended: %w", cerr)
	}
	return fmt.Errorf("agent: session ended: %w", err)
}

// dial connects to the first MMC member that answers, in dialOrder,
// pinning each member's key.
func (a *Agent) dial(ctx context.Context, psk [32]byte) (*sudp.Conn, mmcMember, error) {
	var errs []error
	for _, m := range a.mmcs.candidates(time.Now()) {
		dctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
		c, err := a.ep.Dial(dctx, m.Addr, m.Key, psk)
		cancel()
		if err == nil {
			a.mmcs.worked(m)
			return c, m, nil
		}
		if ctx.Err() != nil {
			return nil, m, ctx.Err()
		}
		a.mmcs.failed(m, time.Now())
		a.log.Info("agent: MMC member did not answer", "mmc", m.Addr, "err", err)
		errs = append(errs, fmt.Errorf("%s: %v", m.Addr, err))
	}
	return nil, mmcMember{}, fmt.Errorf("%w: %w", errHandshake, errors.Join(errs...))
}

// redirected follows a Redirect from the MMC member at from.
func (a *Agent) redirected(env message.Envelope, from mmcMember) error {
	r, err := message.Decode[message.Redirect](env)
	if err != nil {
		return fmt.Errorf("agent: redirect from %s: %w", from.Addr, err)
	}
	a.mmcs.redirectTo(r.Leader)
	a.metrics.redirects.Inc()
	a.log.Info("agent: MMC member redirects to the leader", "mmc", from.Addr, "leader", r.Leader.Addr)
	return fmt.Errorf("%w: %s sent us to %s", errRedirected, from.Addr, r.Leader.Addr)
}

func (a *Agent) facts() (identity.Facts, error) { return identity.Discover(a.cfg.Facts) }

// enrol runs one enrolment session: request, wait for the decision, store
// the registration code and confirm it.
func (a *Agent) enrol(ctx context.Context) error {
	f, err := a.facts()
	if err != nil {
		return err
	}
	c, mmc, err := a.dial(ctx, identity.EnrolPSK(a.cfg.Bundle.ClusterID))
	if err != nil {
		return err
	}
	defer closeConn(c)
	if err := message.Send(ctx, c, message.EnrolRequest{Facts: f, Name: a.cfg.Name, Site: a.cfg.Site, Token: a.cfg.Token}); err != nil {
		return err
	}
	for {
		env, err := message.Receive(ctx, c)
		if err != nil {
			return fmt.Errorf("agent: enrolment session: %w", err)
		}
		switch env.Type {
		case message.TypeRefused:
			r, _ := message.Decode[message.Refused](env)
			if r.Retry {
				return fmt.Errorf("agent: the MMC deferred the enrolment: %s", r.Reason)
			}
			return fmt.Errorf("%w: the MMC refused the enrolment: %s", ErrFatal, r.Reason)
		case message.TypeRedirect:
			return a.redirected(env, mmc)
		case message.TypeEnrolReply:
		default:
			return fmt.Errorf("agent: unexpected %v during enrolment", env.Type)
		}
		rep, err := message.Decode[message.EnrolReply](env)
		if err != nil {
			return err
		}
		switch rep.State {
		case "pending":
			a.log.Info("agent: enrolment pending; an administrator must approve it", "agent", rep.AgentID, "approve_with", "ferry ctl agents approve "+rep.AgentID)
			continue
		case "approved":
		default:
			return fmt.Errorf("%w: enrolment %s: %s", ErrFatal, rep.State, rep.Reason)
		}
		if len(rep.Code) != identity.CodeLen || rep.AgentID != a.ID() {
			return errors.New("agent: approval without a valid registration code")
		}
		st := &enrolState{AgentID: rep.AgentID, ClusterID: a.cfg.Bundle.ClusterID, Code: rep.Code, Facts: rep.Facts}
		if err := a.saveState(st); err != nil {
			return err
		}
		a.state = st
		a.log.Info("agent: enrolment approved", "agent", rep.AgentID)
		_ = message.Send(ctx, c, message.EnrolAck{})
		// The MMC closes the session once it has the acknowledgement;
		// closing first could lose it (it would only cost a retry).
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
		case <-ctx.Done():
		}
		return nil
	}
}

func (a *Agent) code() identity.Code {
	var m identity.Code
	copy(m[:], a.state.Code)
	return m
}

// session logs in with K and serves the MMC until the session ends.
func (a *Agent) session(ctx context.Context) error {
	m := a.code()
	psk := identity.DerivePSK(m, a.cfg.Bundle.ClusterID, a.state.Facts)
	reauthKey := identity.DeriveReauthKey(m, a.cfg.Bundle.ClusterID)
	clear(m[:])
	defer clear(psk[:])
	defer clear(reauthKey[:])
	f, err := a.facts()
	if err != nil {
		return err
	}
	c, mmc, err := a.dial(ctx, psk)
	if err != nil {
		return err
	}
	defer closeConn(c)
	hello := message.Hello{Facts: f, Name: a.cfg.Name, Site: a.cfg.Site, Version: a.cfg.Version, Protocol: message.ProtocolVersion}
	if err := message.Send(ctx, c, hello); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	env, err := message.Receive(rctx, c)
	cancel()
	if err != nil {
		return sessionEnded(c, err)
	}
	switch env.Type {
	case message.TypeWelcome:
		w, err := message.Decode[message.Welcome](env)
		if err != nil {
			return err
		}
		highest, err := a.mmcs.obey(w.Term)
		if err != nil {
			// A member still serving under an older leader's term
			// (behind a partition): its orders would all be refused, so
			// another member is tried instead.
			a.metrics.fenced.Inc()
			a.mmcs.failed(mmc, time.Now())
			a.log.Warn("agent: MMC member serves an older term; trying another", "mmc", mmc.Addr, "term", w.Term, "highest_term", highest)
			return fmt.Errorf("agent: %s: %w", mmc.Addr, err)
		}
		a.metrics.term.Set(float64(highest))
		if w.Version != "" && w.Version != a.cfg.Version {
			a.log.Info("agent: the MMC runs another release (same control protocol)", "mmc", mmc.Addr, "mmc_version", w.Version, "agent_version", a.cfg.Version)
		}
	case message.TypeRefused:
		r, _ := message.Decode[message.Refused](env)
		return fmt.Errorf("%w: the MMC refused the login: %s", ErrFatal, r.Reason)
	case message.TypeRedirect:
		return a.redirected(env, mmc)
	default:
		return fmt.Errorf("agent: unexpected %v at login", env.Type)
	}
	a.log.Info("agent: online", "agent", a.ID(), "mmc", mmc.Addr)
	a.metrics.online.Set(1)
	a.online.Store(true)
	defer a.metrics.online.Set(0)
	defer a.online.Store(false)
	// A standby session at another member tells us when the leadership
	// moves (watchLeader); the session here then ends at once.
	sctx, moveOn := context.WithCancelCause(ctx)
	defer moveOn(nil)
	var watch sync.WaitGroup
	if !a.cfg.NoStandby {
		watch.Add(1)
		go func() {
			defer watch.Done()
			a.watchLeader(sctx, mmc, psk, hello, func(leader message.Member) {
				a.mmcs.redirectTo(leader)
				moveOn(fmt.Errorf("%w to %s", errLeaderMoved, leader.Addr))
			})
		}()
	}
	err = a.serve(sctx, c, reauthKey)
	moveOn(nil)
	watch.Wait()
	if cause := context.Cause(sctx); errors.Is(cause, errRedirected) {
		return cause
	}
	if err != nil && ctx.Err() == nil {
		// Dial the other members first next time: this one may be
		// gone (an idle timeout) or no longer the leader.
		a.mmcs.failed(mmc, time.Now())
	}
	return err
}

// serve answers challenges and probes the clock until the session ends.
func (a *Agent) serve(ctx context.Context, c *sudp.Conn, reauthKey [32]byte) error {
	hs := c.Session().HandshakeHash
	rd := message.NewReader(ctx, c)
	defer func() {
		closeConn(c)
		rd.Stop()
	}()
	probe := time.NewTimer(0)
	defer probe.Stop()
	reportT := time.NewTimer(0)
	defer reportT.Stop()
	a.events.restart()
	sendEvents := func() error {
		for _, ev := range a.events.due() {
			if err := message.Send(ctx, c, ev); err != nil {
				return err
			}
		}
		return nil
	}
	if err := sendEvents(); err != nil {
		return err
	}
	// Actions (starting a VM takes a while) run on goroutines owned here,
	// so challenges are still answered meanwhile; each result is followed
	// by a fresh report.
	results := make(chan message.ActionResult)
	var actions sync.WaitGroup
	actx, stopActions := context.WithCancel(ctx)
	defer func() {
		stopActions()
		go func() {
			for range results {
			}
		}()
		actions.Wait()
		close(results)
	}()
	// The monitor's report runs on a goroutine too: a slow hypervisor
	// (QEMU answering several QMP queries per VM) must not hold up the
	// answer to a challenge. One at a time; a tick that comes while one
	// runs asks for another right after it.
	reports := make(chan message.Report, 1)
	var reporting, reportAgain bool
	var reportWG sync.WaitGroup
	defer func() {
		stopActions()
		reportWG.Wait()
	}()
	handlers := a.sessionHandlers(c, reauthKey, hs, func(act message.Action) {
		actions.Add(1)
		go func() {
			defer actions.Done()
			res := a.act(actx, act)
			select {
			case results <- res:
			case <-actx.Done():
			}
		}()
	})
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-rd.Done:
			return sessionEnded(c, rd.Err())
		case <-probe.C:
			if err := message.Send(ctx, c, message.TimeRequest{T1: time.Now().UnixNano()}); err != nil {
				return err
			}
			probe.Reset(a.cfg.TimeSyncInterval)
		case <-reportT.C:
			if reporting {
				reportAgain = true
				continue
			}
			reporting = true
			reportWG.Add(1)
			go func() {
				defer reportWG.Done()
				reports <- a.report(actx)
			}()
		case r := <-reports:
			reporting = false
			if err := message.Send(ctx, c, r); err != nil {
				return err
			}
			if reportAgain {
				reportAgain = false
				reportT.Reset(0)
			} else {
				reportT.Reset(a.cfg.ReportInterval)
			}
		case <-a.events.notify:
			if err := sendEvents(); err != nil {
				return err
			}
		case p := <-a.posts:
			if err := message.Send(ctx, c, p); err != nil {
				return err
			}
		case res := <-results:
			if !res.OK {
				a.events.add(false, "warn", "action-failed", fmt.Sprintf("action %d failed: %s", res.ID, res.Error))
			}
			if err := message.Send(ctx, c, res); err != nil {
				return err
			}
			reportT.Reset(0)
		case e := <-rd.C:
			err := handlers.Dispatch(ctx, e)
			if errors.Is(err, message.ErrUnexpected) {
				// A newer MMC may send what this agent does not know.
				a.log.Warn("agent: ignoring unexpected message", "type", e.Type.String())
				continue
			}
			if err != nil {
				return err
			}
		}
	}
}

// sessionHandlers is what this agent accepts from the MMC on a logged-in
// session; startAction runs an action on a goroutine the session owns.
func (a *Agent) sessionHandlers(c *sudp.Conn, reauthKey, hs [32]byte, startAction func(message.Action)) message.Handlers {
	h := message.Handlers{}
	message.On(h, func(ctx context.Context, ch message.Challenge) error {
		var nonce [identity.NonceLen]byte
		copy(nonce[:], ch.Nonce)
		mac := identity.ReauthMAC(reauthKey, hs, ch.Seq, nonce)
		if err := message.Send(ctx, c, message.ChallengeAnswer{Seq: ch.Seq, MAC: mac[:]}); err != nil {
			return err
		}
		a.metrics.reauths.Inc()
		return nil
	})
	message.On(h, func(ctx context.Context, r message.TimeReply) error {
		// T4 is when the reply was decoded: the clock estimate's error
		// bound (RTT/2) covers that.
		a.clock.sample(time.Unix(0, r.T1), time.Unix(0, r.T2), time.Unix(0, r.T3), time.Now())
		return nil
	})
	message.On(h, func(ctx context.Context, p message.Policy) error {
		a.policy.Store(p.Version)
		if err := message.Send(ctx, c, message.PolicyAck{Version: p.Version}); err != nil {
			return err
		}
		a.log.Info("agent: policy", "version", p.Version)
		return nil
	})
	message.On(h, func(ctx context.Context, ack message.EventAck) error {
		a.events.ack(ack.Seq)
		return nil
	})
	message.On(h, func(ctx context.Context, act message.Action) error {
		// Fencing is decided here, on the session's loop, in the order
		// the orders arrive, and the new term is on disk before the
		// order runs.
		highest, err := a.mmcs.obey(act.Term)
		if err != nil {
			a.metrics.fenced.Inc()
			a.log.Warn("agent: order refused", "op", act.Op, "vm", act.VM, "term", act.Term, "highest_term", highest, "err", err)
			return message.Send(ctx, c, message.ActionResult{ID: act.ID, Error: err.Error(), Fenced: highest})
		}
		a.metrics.term.Set(float64(highest))
		startAction(act)
		return nil
	})
	message.On(h, func(ctx context.Context, ms message.Members) error {
		kept, err := a.mmcs.update(ms)
		if err != nil {
			// Not fatal: the members in use still serve.
			a.log.Warn("agent: MMC member list not kept", "version", ms.Version, "err", err)
			return nil
		}
		if kept {
			a.metrics.memberUpdates.Inc()
			a.log.Info("agent: MMC members", "version", ms.Version, "members", len(ms.MMCs))
		}
		return nil
	})
	message.On(h, func(ctx context.Context, be message.BoardEntry) error {
		a.board.add(be)
		return nil
	})
	message.On(h, func(ctx context.Context, r message.Refused) error {
		return fmt.Errorf("%w: the MMC ended the session: %s", ErrFatal, r.Reason)
	})
	return h
}

// Ready reports whether the agent serves: logged in at an MMC, so that
// its reports flow and orders reach it (the agent's /readyz).
func (a *Agent) Ready() (bool, string) {
	if a.online.Load() {
		return true, "ready: logged in at the MMC"
	}
	return false, "not ready: no session with an MMC (enrolling, awaiting approval, or reconnecting)"
}
