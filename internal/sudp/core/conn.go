package core

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/congestion"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
	"github.com/ferry-vm/ferry/internal/sudp/replay"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Connection errors.
var (
	ErrHandshakeTimeout = errors.New("sudp: handshake timed out")
	ErrIdleTimeout      = errors.New("sudp: idle timeout")
	ErrClosed           = errors.New("sudp: connection closed")
	errFlowControl      = errors.New("sudp: peer exceeded flow-control limit")
	errFinalSize        = errors.New("sudp: inconsistent stream final size")
	errRecvRanges       = errors.New("sudp: peer exceeded the receive budget of disjoint ranges")
	errRecvMemory       = errors.New("sudp: peer exceeded the receive memory budget")
)

// CloseError is how a connection ended when a CLOSE frame was exchanged.
type CloseError struct {
	Code   uint64
	Reason string
	Remote bool // the peer closed
}

func (e *CloseError) Error() string {
	who := "local"
	if e.Remote {
		who = "peer"
	}
	return fmt.Sprintf("sudp: connection closed by %s: code %d: %s", who, e.Code, e.Reason)
}

// Close codes carried in CLOSE frames.
const (
	CodeNoError           = 0
	CodeProtocolViolation = 1
	CodeFlowControl       = 2
	CodeStreamLimit       = 3
	CodeInternal          = 4
	CodeKeyExpired        = 5     // a key generation outlived its hard limit
	CodeRecvBudget        = 6     // the peer's data exceeded the receive budget (ranges or memory)
	CodeApplication       = 0x100 // and above: application-defined
)

type connState uint8

const (
	stateHandshake connState = iota // client: waiting for the response
	stateEstablished
	stateClosing  // we sent CLOSE; wait for the peer to stop
	stateDraining // peer sent CLOSE; send nothing
	stateClosed
)

// path is a peer address and what we know of it. Until validated, we send at
// most three times what we received from it (anti-amplification).
type path struct {
	addr      netip.AddrPort
	validated bool
	recvBytes uint64
	sentBytes uint64
}

func (p *path) budget() int {
	if p.validated {
		return 1 << 30
	}
	if 3*p.recvBytes <= p.sentBytes {
		return 0
	}
	return int(3*p.recvBytes - p.sentBytes)
}

// Session describes the authenticated peer of an established connection.
type Session struct {
	// RTT is the handshake round trip (initiator only): the error bound of
	// a clock-offset estimate from PeerTime is RTT/2.
	RTT           time.Duration
	PeerStatic    [32]byte
	PeerID        string
	LoginState    uint8
	PeerTime      time.Time
	HandshakeHash [32]byte
	// RecvLimit is the receive cap the responder's lookup gave the peer
	// (handshake.Peer); the driver enforces it.
	RecvLimit *ratelimit.Bucket
}

// Conn is the sans-I/O state machine of one SUDP connection. It is driven by
// HandleDatagram, HandleTimeout and PollTransmit, each given the current
// time; it never reads a clock, sleeps, or touches a socket. It is not safe
// for concurrent use: the driver serialises every call.
type Conn struct {
	cfg    Config
	rand   io.Reader
	client bool
	state  connState
	err    error

	localCID, remoteCID uint64
	path                path
	pathProbes          []pathProbe // candidate addresses being validated (path.go)

	// stateless reset (reset.go): our token for localCID, sent once in a
	// RESET_TOKEN frame, and the peer's
	resetToken     [wire.ResetTokenLen]byte
	resetTokenSend bool
	peerResetToken [wire.ResetTokenLen]byte
	peerResetKnown bool
	confirmed      bool // peer proved it holds the session keys
	session        Session

	// client handshake
	init      *handshake.Initiator
	hsStart   time.Time
	hsNext    time.Time
	hsBackoff time.Duration
	// hsFast and hsFastUntil: a hole-punching dial (SetHandshakeRetry)
	// resends its initiation every hsFast until hsFastUntil, then backs
	// off as usual.
	hsFast      time.Duration
	hsFastUntil time.Time
	hsLast      []byte    // the latest initiation, resent while fast
	hsFreshAt   time.Time // when a fast dial makes a fresh initiation
	hsPacket    []byte
	// hsCookieRetry: no immediate retry on a cookie reply before it (a
	// reply can be forged by anyone who saw the initiation).
	hsCookieRetry time.Time
	respPending   []byte // server: handshake response to send once

	// packet protection
	sendKey        *keySet
	sendKeyStart   time.Time
	recvKeyStart   time.Time // when the current receive generation was installed
	sendKeyBytes   uint64
	sendGenAcked   bool
	recvCur        *keySet
	recvPrev       *keySet
	recvNext       *keySet
	prevDiscardAt  time.Time
	replay         replay.Filter
	hdrLen         int // the header length of the packet being built (startPacket)
	keyUpdateFrame bool
	// keyExpired: the send key passed its hard limit; nothing is sent
	// under it (only re-handshake messages, which need no traffic key)
	// until a re-handshake or an update replaces it.
	keyExpired bool
	rk         rekeyState

	// packet numbers and acknowledgements we owe
	nextPN           uint64
	largestRecvPN    uint64
	recvd            rangeSet
	ackPending       bool
	ackEliciting     int
	ackDeadline      time.Time
	largestRecvTime  time.Time
	ackRangesScratch []wire.AckRange
	frameHadAck      bool

	rec recovery

	// streams
	streams        map[uint64]*stream
	nextSeq        [2]uint64 // [bidi, uni] next local stream sequence
	peerMaxStreams [2]uint64 // how many of each we may open
	ourMaxStreams  [2]uint64 // how many of each the peer may open
	peerOpened     [2]uint64
	sendMaxStreams [2]bool
	advMaxStreams  [2]uint64 // the limits last put in a MAX_STREAMS frame
	acceptQ        [2][]uint64
	sched          [numPriorities][]*stream
	pendingCtl     []uint64            // streams with a MAX_STREAM_DATA, RESET or STOP to send
	resetSet       map[uint64]struct{} // recently forgotten streams that ended by reset
	resetIDs       []uint64

	// connection-level flow control
	connSent    uint64
	connMaxSend uint64
	connRecv    uint64
	connRead    uint64
	connMaxRecv uint64
	sendMaxData bool

	// receive budget: disjoint received ranges over all streams, and
	// the pages holding received data (recvbuf.go)
	recvRanges int
	pages      pagePool

	dg datagrams

	// control frames to send
	pingPending  bool
	probes       int // PTO probes allowed past the congestion window
	pathRespQ    []pathResp
	closePending bool
	closeCode    uint64
	closeReason  string

	lastRecv   time.Time
	lastSend   time.Time
	drainUntil time.Time
	// appLimitedSince is when the window last stood open with nothing to
	// send (zero while data flows): ConnStats.AppLimited.
	appLimitedSince time.Time
	// tail is the end of the last bulk stream that finished (tail.go).
	tail       streamTail
	noTailDups bool // tests: compare without

	stats ConnStats
	frame wire.Frame
	parse wire.Parser
}

type pathResp struct {
	to   netip.AddrPort
	data [8]byte
}

// ConnStats are a connection's counters. Every dropped packet is counted
// under the reason it was dropped.
type ConnStats struct {
	PacketsSent, PacketsReceived     uint64
	BytesSent, BytesReceived         uint64 // on the wire (UDP payloads)
	StreamBytesSent, StreamBytesRecv uint64 // first transmissions / deliveries
	RetransmittedBytes               uint64 // stream bytes sent again
	PacketsLost                      uint64
	// AppLimited is how long the window and the pacer allowed sending
	// but no stream had data it could send (none written, or held by
	// the peer's flow control): time the application left the path
	// idle. An interval is added when sending resumes.
	AppLimited                   time.Duration
	DroppedReplay                uint64
	DroppedAuth                  uint64
	DroppedMalformed             uint64
	DatagramsSent, DatagramsRecv uint64
	DatagramsDropped             uint64
	KeyUpdates                   uint64
	PathChanges                  uint64
	// PathProbes counts new peer addresses challenged (a NAT rebinding,
	// or a copy of a packet raced from elsewhere); PathProbesFailed those
	// abandoned unproven: no answer in time, or the validated path kept
	// delivering newer packets. PathChanges counts the proven moves.
	PathProbes, PathProbesFailed uint64
	// StatelessResets is 1 if the connection ended on the peer's
	// stateless reset (ErrStatelessReset).
	StatelessResets uint64
	// Re-handshakes (rehandshake.go): Rehandshakes counts completed
	// ones (each end counts each once), RehandshakesStarted our
	// initiations. Replays are messages of an epoch already begun (a
	// replay or a late copy: no effect), Rejected ones that failed
	// authentication (not the peer's static key, not this connection),
	// Collisions initiations that crossed the peer's, Limited messages
	// over the rate of Noise work. KeyExpiredWaits counts the times the
	// send key reached its hard limit and sending waited for a rekey.
	Rehandshakes, RehandshakesStarted       uint64
	RehandshakeReplays, RehandshakeRejected uint64
	RehandshakeCollisions                   uint64
	RehandshakeLimited                      uint64
	KeyExpiredWaits                         uint64
	// RecvBudgetRanges and RecvBudgetMemory count closes with
	// CodeRecvBudget: the peer left too many holes in its streams, or made
	// us hold too much memory.
	RecvBudgetRanges, RecvBudgetMemory uint64
	SmoothedRTT, MinRTT                time.Duration
	CongestionWindow                   int
	PacingRate                         float64
	BytesInFlight                      int
	// Controller is the congestion controller's model (state, bandwidth
	// estimate, loss rates, congestion events), for traces and metrics.
	Controller congestion.Stats
}

func newConn(cfg Config, rnd io.Reader, now time.Time, client bool, localCID uint64, addr netip.AddrPort) *Conn {
	if cfg.MaxDatagramSize == 0 {
		cfg.MaxDatagramSize = maxDatagramFor(addr)
	}
	cfg = cfg.withDefaults()
	c := &Conn{
		cfg:            cfg,
		rand:           rnd,
		client:         client,
		localCID:       localCID,
		path:           path{addr: addr},
		streams:        make(map[uint64]*stream),
		peerMaxStreams: [2]uint64{InitialMaxStreams, InitialMaxStreams},
		ourMaxStreams:  [2]uint64{InitialMaxStreams, InitialMaxStreams},
		connMaxSend:    InitialConnWindow,
		connMaxRecv:    InitialConnWindow,
		lastRecv:       now,
		lastSend:       now,
	}
	c.pages.limit = (cfg.MaxRecvBuffer + recvPageSize - 1) / recvPageSize
	c.rec.init(cfg, now)
	c.dg.init(cfg)
	return c
}

// newClientConn starts a handshake towards addr.
func newClientConn(cfg Config, rnd io.Reader, now time.Time, localCID uint64, addr netip.AddrPort, init *handshake.Initiator) (*Conn, error) {
	c := newConn(cfg, rnd, now, true, localCID, addr)
	c.path.validated = true // we chose this address
	c.init = init
	c.hsStart = now
	c.hsBackoff = 500 * time.Millisecond
	if err := c.sendInitiation(now); err != nil {
		return nil, err
	}
	return c, nil
}

// newServerConn creates the responder's side of a handshake that produced s;
// resp is the handshake response, sent once (a lost response makes the
// client retry its initiation, which creates a fresh connection).
func newServerConn(cfg Config, rnd io.Reader, now time.Time, addr netip.AddrPort, s *handshake.Session, resp []byte, initLen int) (*Conn, error) {
	c := newConn(cfg, rnd, now, false, s.LocalCID, addr)
	c.path.recvBytes = uint64(initLen)
	c.hsStart = now // the peer must confirm within HandshakeTimeout
	if err := c.install(s, now); err != nil {
		return nil, err
	}
	c.respPending = resp
	c.state = stateEstablished
	return c, nil
}

// install takes the keys of a completed handshake and wipes the session.
func (c *Conn) install(s *handshake.Session, now time.Time) error {
	defer s.Zero()
	sk, err := newKeySet(s.SendKey, 0)
	if err != nil {
		return err
	}
	rk, err := newKeySet(s.RecvKey, 0)
	if err != nil {
		return err
	}
	c.sendKey, c.recvCur = sk, rk
	c.sendKeyStart, c.recvKeyStart = now, now
	c.rk.last = now
	c.remoteCID = s.RemoteCID
	if s.RTT > 0 {
		c.rec.onHandshakeRTT(s.RTT)
	}
	c.session = Session{
		RTT:           s.RTT,
		PeerStatic:    s.PeerStatic,
		PeerID:        s.Peer.ID,
		LoginState:    s.LoginState,
		PeerTime:      s.PeerTime,
		HandshakeHash: s.HandshakeHash,
		RecvLimit:     s.Peer.RecvLimit,
	}
	// Raise the peer's limits from the protocol's initial ones to ours.
	c.connMaxRecv = c.cfg.ConnWindow
	c.sendMaxData = true
	c.ourMaxStreams = [2]uint64{c.cfg.MaxStreams, c.cfg.MaxStreams}
	c.sendMaxStreams = [2]bool{true, true}
	return nil
}

// punchFresh is how often a hole-punching dial makes a fresh initiation;
// between, it resends the same one. An initiator answers only its latest
// initiation (a fresh one replaces the ephemeral key), so a fresh one
// every hsFast (50 ms) would make every response on a path longer than
// 50 ms fail to authenticate; the copies in between are what punches,
// and the responder drops them as replays once one got through.
const punchFresh = time.Second

func (c *Conn) sendInitiation(now time.Time) error {
	fast := c.hsFast > 0 && now.Before(c.hsFastUntil)
	if fast && c.hsLast != nil && now.Before(c.hsFreshAt) {
		c.hsPacket = c.hsLast
		c.hsNext = now.Add(c.hsFast)
		return nil
	}
	pkt, err := c.init.Initiation(now, c.localCID)
	if err != nil {
		return err
	}
	c.hsPacket, c.hsLast = pkt, pkt
	if fast {
		c.hsNext, c.hsFreshAt = now.Add(c.hsFast), now.Add(punchFresh)
		return nil
	}
	c.hsNext = now.Add(c.hsBackoff)
	c.hsBackoff = min(2*c.hsBackoff, 4*time.Second)
	return nil
}

// SetHandshakeRetry makes a client connection still in its handshake
// resend the initiation every `every` until `until` (then the usual
// backoff from 500 ms). A hole-punching dial needs it: the first
// initiations are dropped by the peer's NAT until the peer's own
// packets open it, and waiting out a doubling backoff would add whole
// seconds to a punch that succeeds a few milliseconds after the first
// try. It does nothing on a server connection or after the handshake.
func (c *Conn) SetHandshakeRetry(now time.Time, every time.Duration, until time.Time) {
	if !c.client || c.state != stateHandshake || every <= 0 {
		return
	}
	c.hsFast, c.hsFastUntil = every, until
	if c.hsLast == nil {
		c.hsLast = c.hsPacket // the initiation made at Connect: resent as it is
	}
	c.hsFreshAt = now.Add(punchFresh)
	if next := now.Add(every); next.Before(c.hsNext) {
		c.hsNext = next
	}
}

// LocalCID is the connection id the peer addresses us by.
func (c *Conn) LocalCID() uint64 { return c.localCID }

// RemoteAddr is the peer's current address.
func (c *Conn) RemoteAddr() netip.AddrPort { return c.path.addr }

// Session returns who the peer is; valid once Established.
func (c *Conn) Session() Session { return c.session }

// Established reports whether the handshake completed and the peer has
// confirmed the keys.
func (c *Conn) Established() bool { return c.state == stateEstablished && c.confirmedForSend() }

func (c *Conn) confirmedForSend() bool { return c.client || c.confirmed }

// Confirmed reports whether the peer proved it holds the session keys.
func (c *Conn) Confirmed() bool { return c.confirmed }

// Err returns why the connection ended, or nil while it is usable.
func (c *Conn) Err() error {
	if c.state == stateClosed || c.state == stateClosing || c.state == stateDraining {
		if c.err == nil {
			return ErrClosed
		}
		return c.err
	}
	return nil
}

// IsClosed reports whether the connection is gone and may be forgotten.
func (c *Conn) IsClosed() bool { return c.state == stateClosed }

// PacketsReceived counts the data packets that authenticated (cheaper
// than Stats, for the receive loop's per-packet use).
func (c *Conn) PacketsReceived() uint64 { return c.stats.PacketsReceived }

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() ConnStats {
	s := c.stats
	s.SmoothedRTT = c.rec.srtt
	s.MinRTT = c.rec.minRTT
	s.CongestionWindow = c.rec.cc.CongestionWindow()
	s.PacingRate = c.rec.cc.PacingRate()
	s.BytesInFlight = c.rec.bytesInFlight
	s.Controller = c.rec.cc.Stats()
	return s
}

// SetMaxRate caps the sending rate (bytes/s; 0 removes the cap).
func (c *Conn) SetMaxRate(bps float64) { c.rec.cc.SetMaxRate(bps) }

// Resume starts the rate controller from an earlier connection's model of
// the same path (bandwidth in bytes/s, minimum RTT, random loss rate or
// −1), instead of from its initial window; see
// congestion.Controller.Resume. Call it before any data is acknowledged;
// it reports whether the seed was taken.
func (c *Conn) Resume(bw float64, minRTT time.Duration, loss float64) bool {
	return c.rec.cc.Resume(bw, minRTT, loss)
}

// SetIdleTimeout changes how long the connection lives without hearing
// from its peer (d ≤ 0: DefaultConfig's). The peer keeps its own:
// both ends must raise theirs to ride out a longer outage.
func (c *Conn) SetIdleTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultConfig().IdleTimeout
	}
	c.cfg.IdleTimeout = d
}

// Close starts a graceful close: a CLOSE frame is sent and the connection
// drains for three probe timeouts.
func (c *Conn) Close(now time.Time, code uint64, reason string) {
	switch c.state {
	case stateClosing, stateDraining, stateClosed:
		return
	case stateHandshake:
		c.state = stateClosed
		c.err = ErrClosed
		return
	}
	c.closeLocal(now, code, reason, nil)
}

func (c *Conn) closeLocal(now time.Time, code uint64, reason string, err error) {
	if c.state == stateClosing || c.state == stateDraining || c.state == stateClosed {
		return
	}
	c.state = stateClosing
	c.closePending = true
	c.closeCode, c.closeReason = code, reason
	if err == nil {
		err = &CloseError{Code: code, Reason: reason}
	}
	c.err = err
	c.drainUntil = now.Add(3 * c.rec.pto())
}

// frameError closes the connection for a frame that broke the rules:
// exceeding the receive budget has its own code and counter, so an operator
// can tell a peer that floods ranges or memory from one that is buggy.
func (c *Conn) frameError(now time.Time, err error) {
	switch {
	case errors.Is(err, errRecvRanges):
		c.stats.RecvBudgetRanges++
	case errors.Is(err, errRecvMemory):
		c.stats.RecvBudgetMemory++
	default:
		c.protocolError(now, err)
		return
	}
	c.closeLocal(now, CodeRecvBudget, err.Error(), nil)
}

func (c *Conn) protocolError(now time.Time, err error) {
	c.stats.DroppedMalformed++
	c.closeLocal(now, CodeProtocolViolation, err.Error(), err)
}

// forget wipes keys; called when the connection is closed.
func (c *Conn) forget() {
	c.state = stateClosed
	c.sendKey.zero()
	c.recvCur.zero()
	c.recvPrev.zero()
	c.recvNext.zero()
	c.sendKey, c.recvCur, c.recvPrev, c.recvNext = nil, nil, nil, nil
	c.forgetRekey()
}

// Abandon drops the connection without telling the peer and wipes its keys.
func (c *Conn) Abandon() {
	if c.state != stateClosed {
		if c.err == nil {
			c.err = ErrClosed
		}
		c.forget()
	}
}

// Client reports whether this side initiated the connection.
func (c *Conn) Client() bool { return c.client }
