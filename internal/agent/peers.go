package agent

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/core"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// Direct agent-to-agent connections. The MMC introduces two agents for a
// job (a migration): the listening side is told to expect one connection
// from the other's key with a one-time ticket as the Noise psk; the dialing
// side connects with the same ticket. Nobody else's handshake gets past
// Lookup, and a ticket admits one connection only.

const (
	maxExpected      = 64   // introductions waiting for their connection
	maxLinks         = 64   // open direct connections
	maxWithdrawn     = 1024 // keys the MMC withdrew, remembered (oldest forgotten first)
	peerHelloTimeout = 10 * time.Second
	peerPrefix       = "peer:" // handshake.Peer.ID of an introduced peer
)

var errNoIntro = errors.New("agent: no introduction for this key")

type expectation struct {
	topic   string
	peerID  string
	ticket  [32]byte
	expires time.Time
}

// link is an open direct connection for a job.
type link struct {
	topic, peerID string
	c             *sudp.Conn
	peer          [32]byte // the peer's static key (addLink), read under p.mu
	opened        time.Time
}

// peers holds expectations and links. lookup runs on the endpoint's reader
// goroutine: memory only, no blocking.
type peers struct {
	mu     sync.Mutex
	expect map[[32]byte]*expectation // by the peer's static key
	// superseded are introductions replaced by a newer one of the same
	// key before their connection was claimed: the MMC introduces the
	// next job of the same two agents once the dialer has its link, and
	// the listener may not have read that link's hello yet. The ticket is
	// gone (no new handshake can use it); a connection whose handshake
	// already did may still claim it, once, until it expires.
	superseded map[supersededKey]*expectation
	links      map[string]*link // by topic
	// linked is closed (and replaced) whenever a link is added: a
	// destination's job waiting for its link (prepared beside the
	// introduction) takes it at once.
	linked chan struct{}
	// withdrawn are the keys of agents the MMC revoked (peer.withdraw):
	// no introduction of them is taken, no connection from them
	// admitted. order is their arrival, to forget the oldest first.
	withdrawn map[[32]byte]struct{}
	order     [][32]byte
	// models are the rate models links left, per path (pathmodel.go).
	models map[pathKey]pathModel
	now    func() time.Time
	// ended, if set, is told of every link as it is forgotten, with the
	// transport's statistics (the agent logs them: where a migration's
	// rate went).
	ended func(l *link, st core.ConnStats)
}

func newPeers() *peers {
	return &peers{expect: map[[32]byte]*expectation{}, links: map[string]*link{}, withdrawn: map[[32]byte]struct{}{}, now: time.Now,
		linked: make(chan struct{})}
}

var errWithdrawn = errors.New("agent: the MMC withdrew this peer (revoked)")

// withdraw forgets every introduction of key, refuses it from now on,
// and closes the links with the agent (by its id or key) at once; it
// returns the links it closed. The MMC sends it when it revokes that
// agent: a revoked agent must not keep a direct path into this host.
func (p *peers) withdraw(id string, key [32]byte) int {
	p.mu.Lock()
	if _, ok := p.withdrawn[key]; !ok {
		if len(p.order) >= maxWithdrawn {
			delete(p.withdrawn, p.order[0])
			p.order = p.order[1:]
		}
		p.withdrawn[key] = struct{}{}
		p.order = append(p.order, key)
	}
	if e := p.expect[key]; e != nil {
		clear(e.ticket[:])
		delete(p.expect, key)
	}
	for k := range p.superseded {
		if k.peer == key {
			delete(p.superseded, k)
		}
	}
	var doomed []*link
	for topic, l := range p.links {
		if l.peerID == id || l.peer == key {
			doomed = append(doomed, l)
			delete(p.links, topic)
		}
	}
	p.mu.Unlock()
	for _, l := range doomed {
		_ = l.c.CloseWithError(message.CodeRevoked, "peer revoked by the MMC")
	}
	return len(doomed)
}

func (p *peers) isWithdrawn(key [32]byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.withdrawn[key]
	return ok
}

// add registers an introduction on the listening side.
func (p *peers) add(in *message.Introduction, mmcOffset time.Duration) error {
	var key [32]byte
	copy(key[:], in.PeerKey)
	e := &expectation{topic: in.Topic, peerID: in.PeerID, expires: time.Unix(0, in.Expires).Add(-mmcOffset)}
	copy(e.ticket[:], in.Ticket)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.withdrawn[key]; ok {
		return errWithdrawn
	}
	p.expireLocked()
	if len(p.expect) >= maxExpected {
		return errors.New("agent: too many introductions waiting")
	}
	if old := p.expect[key]; old != nil {
		clear(old.ticket[:])
		p.supersedeLocked(key, old)
	}
	p.expect[key] = e
	return nil
}

type supersededKey struct {
	peer  [32]byte
	topic string
}

// supersedeLocked keeps old, replaced for key, for a connection that may
// already have used it; at most maxExpected, the first to expire going
// first.
func (p *peers) supersedeLocked(key [32]byte, old *expectation) {
	if p.superseded == nil {
		p.superseded = map[supersededKey]*expectation{}
	}
	if len(p.superseded) >= maxExpected {
		var first supersededKey
		var at time.Time
		for k, e := range p.superseded {
			if at.IsZero() || e.expires.Before(at) {
				first, at = k, e.expires
			}
		}
		delete(p.superseded, first)
	}
	p.superseded[supersededKey{key, old.topic}] = old
}

func (p *peers) expireLocked() {
	now := p.now()
	for k, e := range p.expect {
		if now.After(e.expires) {
			clear(e.ticket[:])
			delete(p.expect, k)
		}
	}
	for k, e := range p.superseded {
		if now.After(e.expires) {
			delete(p.superseded, k)
		}
	}
}

// lookup is the endpoint's handshake authoriser.
func (p *peers) lookup(pub [32]byte) (handshake.Peer, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.withdrawn[pub]; ok {
		return handshake.Peer{}, errWithdrawn
	}
	e := p.expect[pub]
	if e == nil || p.now().After(e.expires) {
		return handshake.Peer{}, errNoIntro
	}
	return handshake.Peer{ID: peerPrefix + e.topic, PSK: e.ticket, Allowed: true}, nil
}

// claim consumes the introduction a new inbound connection used: the
// first connection wins, the ticket is forgotten.
func (p *peers) claim(pub [32]byte, topic string) (*expectation, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.expect[pub]
	if e == nil || subtle.ConstantTimeCompare([]byte(e.topic), []byte(topic)) != 1 {
		// Replaced since this connection's handshake used it (the
		// handshake names the topic whose ticket it proved)?
		k := supersededKey{pub, topic}
		if old := p.superseded[k]; old != nil && !p.now().After(old.expires) {
			delete(p.superseded, k)
			return old, true
		}
		return nil, false
	}
	delete(p.expect, pub)
	clear(e.ticket[:])
	return e, true
}

func (p *peers) addLink(l *link) error {
	// Read from the connection before taking p.mu: nothing here calls
	// into a connection under it (see remember).
	l.peer = l.c.Session().PeerStatic
	p.mu.Lock()
	if _, ok := p.withdrawn[l.peer]; ok {
		// Withdrawn while the connection was being set up.
		p.mu.Unlock()
		return errWithdrawn
	}
	if len(p.links) >= maxLinks {
		p.mu.Unlock()
		return errors.New("agent: too many open peer connections")
	}
	old := p.links[l.topic]
	p.links[l.topic] = l
	close(p.linked)
	p.linked = make(chan struct{})
	p.mu.Unlock()
	if old != nil {
		_ = old.c.Close()
	}
	return nil
}

// link returns the open link of topic, or nil.
func (p *peers) link(topic string) *link {
	l, _ := p.linkOrWait(topic)
	return l
}

// linkOrWait returns the open link of topic, or nil and a channel closed
// when the next link is added.
func (p *peers) linkOrWait(topic string) (*link, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.links[topic], p.linked
}

// dropLink forgets topic's link if it is still c.
func (p *peers) dropLink(topic string, c *sudp.Conn) {
	p.mu.Lock()
	l := p.links[topic]
	if l == nil || l.c != c {
		p.mu.Unlock()
		return
	}
	delete(p.links, topic)
	p.mu.Unlock()
	p.gone(l)
}

func (p *peers) closeLink(topic string) bool {
	p.mu.Lock()
	l := p.links[topic]
	delete(p.links, topic)
	p.mu.Unlock()
	if l != nil {
		p.gone(l)
		_ = l.c.Close()
	}
	return l != nil
}

// gone keeps what link l measured — its path's rate model, and its
// statistics for p.ended — as it is forgotten. It calls into the
// connection: p.mu must not be held (see remember).
func (p *peers) gone(l *link) {
	p.remember(l)
	if p.ended != nil {
		p.ended(l, l.c.Stats())
	}
}

func (p *peers) closeAll() {
	p.mu.Lock()
	links := p.links
	p.links = map[string]*link{}
	for k, e := range p.expect {
		clear(e.ticket[:])
		delete(p.expect, k)
	}
	clear(p.superseded)
	p.mu.Unlock()
	for _, l := range links {
		_ = l.c.Close()
	}
}

// acceptPeers takes inbound connections from introduced agents until ctx
// ends.
func (a *Agent) acceptPeers(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := a.ep.Accept(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.admitPeer(ctx, c); err != nil {
				a.log.Warn("agent: refused a peer connection", "from", c.RemoteAddr().String(), "err", err)
				_ = c.CloseWithError(message.CodeProtocol, "not introduced")
			}
		}()
	}
}

// admitPeer checks an inbound connection's PeerHello against the
// introduction its handshake used, answers it and records the link.
func (a *Agent) admitPeer(ctx context.Context, c *sudp.Conn) error {
	sess := c.Session()
	topic, ok := strings.CutPrefix(sess.PeerID, peerPrefix)
	if !ok {
		return errors.New("unexpected peer id")
	}
	hello, _, err := message.First[message.PeerHello](ctx, c, peerHelloTimeout)
	if err != nil {
		return err
	}
	e, ok := a.peers.claim(sess.PeerStatic, topic)
	if !ok || hello.Topic != topic || hello.From != e.peerID {
		return fmt.Errorf("hello for %q from %q does not match the introduction", hello.Topic, hello.From)
	}
	if err := message.Send(ctx, c, message.PeerHello{Topic: topic, From: a.ID()}); err != nil {
		return err
	}
	l := &link{topic: topic, peerID: e.peerID, c: c, opened: time.Now()}
	a.resumeLink(l)
	if err := a.peers.addLink(l); err != nil {
		return err
	}
	a.log.Info("agent: peer connected", "topic", topic, "peer", e.peerID, "addr", c.RemoteAddr().String())
	a.postConnected(topic, e.peerID, c)
	return nil
}

// dialPeer connects to an introduced agent and exchanges PeerHellos.
func (a *Agent) dialPeer(ctx context.Context, in *message.Introduction) error {
	var key, ticket [32]byte
	copy(key[:], in.PeerKey)
	copy(ticket[:], in.Ticket)
	defer clear(ticket[:])
	if a.peers.isWithdrawn(key) {
		return fmt.Errorf("agent: dial peer %s: %w", in.PeerID, errWithdrawn)
	}
	var c *sudp.Conn
	var err error
	target := in.PeerAddr
	if in.RelayAddr != "" {
		ra, err := a.bindRelay(ctx, in)
		if err != nil {
			return err
		}
		target = ra.String()
	} else if in.PunchAt != 0 {
		if c, err = a.dialPunching(ctx, in, key, ticket); err != nil {
			return err
		}
	}
	dctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
	defer cancel()
	if c == nil {
		if c, err = a.ep.Dial(dctx, target, key, ticket); err != nil {
			return fmt.Errorf("agent: dial peer %s at %s: %w", in.PeerID, target, err)
		}
	}
	if err := message.Send(dctx, c, message.PeerHello{Topic: in.Topic, From: a.ID()}); err != nil {
		_ = c.Close()
		return err
	}
	// The listener's hello only confirms what the handshake proved (its
	// key is the one dialled, the ticket names the topic), so the link is
	// up now and the hello is checked beside it: waiting for it cost the
	// migration's first byte a round trip. A wrong or missing one closes
	// the link.
	l := &link{topic: in.Topic, peerID: in.PeerID, c: c, opened: time.Now()}
	a.resumeLink(l)
	if err := a.peers.addLink(l); err != nil {
		_ = c.Close()
		return err
	}
	a.peerWG.Add(1)
	go func() {
		defer a.peerWG.Done()
		hello, _, err := message.First[message.PeerHello](a.peerCtx, c, peerHelloTimeout)
		if err == nil && hello.Topic == in.Topic && hello.From == in.PeerID {
			return
		}
		select {
		case <-c.Done(): // the link ended first (or the agent stops)
		case <-a.peerCtx.Done():
		default:
			a.log.Warn("agent: peer sent a bad hello; link closed", "topic", in.Topic, "peer", in.PeerID, "err", err)
			a.peers.dropLink(in.Topic, c)
			_ = c.CloseWithError(message.CodeProtocol, "bad hello")
		}
	}()
	a.log.Info("agent: connected to peer", "topic", in.Topic, "peer", in.PeerID, "addr", c.RemoteAddr().String())
	a.postConnected(in.Topic, in.PeerID, c)
	return nil
}

func (a *Agent) postConnected(topic, peer string, c *sudp.Conn) {
	a.post(topic, board.KindPeerConnected, board.PeerConnected{Peer: peer, Addr: c.RemoteAddr().String(), RTT: c.Stats().SmoothedRTT.Microseconds()})
}

// post queues a blackboard entry for the MMC (sent by the session loop).
func (a *Agent) post(topic, kind string, v any) {
	b, err := message.EncodeBody(v)
	if err != nil {
		a.log.Error("agent: encoding a board entry", "kind", kind, "err", err)
		return
	}
	select {
	case a.posts <- message.BoardPost{Topic: topic, Kind: kind, Body: b}:
	default:
		a.log.Warn("agent: board queue full; entry dropped", "topic", topic, "kind", kind)
	}
}

// boardLog keeps the blackboard entries relayed to this agent (the newest
// few per topic), for the migration role and for tests.
type boardLog struct {
	mu      sync.Mutex
	entries map[string][]message.BoardEntry
	order   []string
}

const (
	boardLogTopics  = 64
	boardLogEntries = 256
)

func (l *boardLog) add(e message.BoardEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.entries == nil {
		l.entries = map[string][]message.BoardEntry{}
	}
	if _, ok := l.entries[e.Topic]; !ok {
		l.order = append(l.order, e.Topic)
		if len(l.order) > boardLogTopics {
			delete(l.entries, l.order[0])
			l.order = l.order[1:]
		}
	}
	es := append(l.entries[e.Topic], e)
	if len(es) > boardLogEntries {
		es = es[len(es)-boardLogEntries:]
	}
	l.entries[e.Topic] = es
}

// Board returns the blackboard entries of a topic relayed to this agent.
func (a *Agent) Board(topic string) []message.BoardEntry {
	a.board.mu.Lock()
	defer a.board.mu.Unlock()
	return append([]message.BoardEntry(nil), a.board.entries[topic]...)
}

// linkEnded logs what a link's transport did: how a migration's time
// splits between the path (rate, losses, congestion cuts) and the ends
// (application-limited time: nothing to send).
func (a *Agent) linkEnded(l *link, st core.ConnStats) {
	cs := st.Controller
	a.log.Info("agent: link closed", "topic", l.topic, "peer", l.peerID,
		"open_ms", time.Since(l.opened).Milliseconds(),
		"stream_bytes_sent", st.StreamBytesSent, "stream_bytes_received", st.StreamBytesRecv,
		"retransmitted_bytes", st.RetransmittedBytes, "packets_lost", st.PacketsLost,
		"app_limited_ms", st.AppLimited.Milliseconds(),
		"cc_state", cs.State, "btl_bw_bps", cs.BtlBw*8, "min_rtt_ms", cs.MinRTT.Milliseconds(),
		"random_loss", cs.RandomLoss, "congestion_events", cs.CongestionEvents, "resumed", cs.Resumed)
}
