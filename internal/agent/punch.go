package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/punch"
	"github.com/ferry-vm/ferry/internal/sudp"
)

// Hole punching (package punch, docs/protocol.md §17). An introduction
// with a start time makes both agents act at that moment: the dialer
// dials with its initiation resent every punch.Retry, the listener sends
// punch datagrams to the dialer at the same pace; each one's packets
// open its own NAT to the other. An authenticated punch arriving from an
// address the dialer is not dialling (the listener's NAT gave the flow
// towards the dialer a new port) gets a dial of its own.

// maxWatches bounds the introductions a dialer watches punches for (as
// many as it may hold links).
const maxWatches = maxLinks

// punchWatch is a dialer's wait for the listener's punches.
type punchWatch struct {
	token punch.Token
	seen  []netip.AddrPort    // addresses already reported
	addrs chan netip.AddrPort // new source addresses, to dial
}

// punches holds the watches; its handler runs on the endpoint's reader
// goroutine: memory only, no blocking.
type punches struct {
	mu      sync.Mutex
	watches []*punchWatch
	// received counts punches by outcome: matched (an introduction's),
	// unmatched (no watch: late, or anyone's), malformed.
	received func(outcome string)
}

// watch starts watching for token's punches; stop ends it.
func (p *punches) watch(token punch.Token, known netip.AddrPort) (w *punchWatch, stop func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.watches) >= maxWatches {
		return nil, nil, errors.New("agent: too many punches in progress")
	}
	w = &punchWatch{token: token, seen: []netip.AddrPort{known}, addrs: make(chan netip.AddrPort, punch.MaxRedials)}
	p.watches = append(p.watches, w)
	return w, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for i, x := range p.watches {
			if x == w {
				p.watches = append(p.watches[:i], p.watches[i+1:]...)
				return
			}
		}
	}, nil
}

// foreign is the endpoint's handler for datagrams beside SUDP.
func (p *punches) foreign(from netip.AddrPort, b []byte) {
	tok, _, err := punch.Parse(b)
	if err != nil {
		p.count("malformed")
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var match *punchWatch
	for _, w := range p.watches {
		// Every watch is compared (constant time each): which one
		// matched is not told by how long the search took.
		if w.token.Equal(tok) {
			match = w
		}
	}
	if match == nil {
		p.count("unmatched")
		return
	}
	p.count("matched")
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	for _, s := range match.seen {
		if s == from {
			return
		}
	}
	if len(match.seen) > punch.MaxRedials {
		return
	}
	match.seen = append(match.seen, from)
	select {
	case match.addrs <- from:
	default:
	}
}

func (p *punches) count(outcome string) {
	if p.received != nil {
		p.received(outcome)
	}
}

// punchStart converts an introduction's start (MMC clock) to ours.
func (a *Agent) punchStart(in *message.Introduction) time.Time {
	return time.Unix(0, in.PunchAt).Add(-a.clock.offset())
}

// startPunches runs sendPunches for in, owned by the agent's Run. With
// untilLinked it stops once the topic's link exists (an introduction);
// without, it punches for the whole window (an upgrade of a relayed
// link, which exists already).
func (a *Agent) startPunches(in *message.Introduction, untilLinked bool) {
	var ticket [32]byte
	copy(ticket[:], in.Ticket)
	in = &message.Introduction{Topic: in.Topic, PeerID: in.PeerID, PeerAddr: in.PeerAddr, PunchAt: in.PunchAt, Window: in.Window}
	a.peerWG.Add(1)
	go func() {
		defer a.peerWG.Done()
		defer clear(ticket[:])
		a.sendPunches(a.peerCtx, in, ticket, untilLinked)
	}()
}

// sendPunches is the listener's side: punches to the dialer every
// punch.Retry from the start until the link exists, the window ends or
// ctx does.
func (a *Agent) sendPunches(ctx context.Context, in *message.Introduction, ticket [32]byte, untilLinked bool) {
	to, err := netip.ParseAddrPort(in.PeerAddr)
	if err != nil {
		a.log.Warn("agent: punch: bad peer address", "topic", in.Topic, "addr", in.PeerAddr)
		return
	}
	tok := punch.TokenFor(ticket, in.Topic)
	dg := make([]byte, 0, punch.Size)
	start := a.punchStart(in)
	end := start.Add(time.Duration(in.Window))
	if !sleepUntil(ctx, start) {
		return
	}
	t := time.NewTicker(punch.Retry)
	defer t.Stop()
	for seq := uint32(0); ; seq++ {
		if (untilLinked && a.peers.link(in.Topic) != nil) || time.Now().After(end) {
			return
		}
		dg = punch.Append(dg[:0], tok, seq)
		if err := a.ep.SendRaw(to, dg); err == nil {
			a.metrics.punchesSent.Inc()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// dialPunching is the dialer's side: from the start, a dial of the
// address the MMC saw, resending its initiation every punch.Retry, and
// one more dial of each new address the listener's punches come from;
// the first connection up wins, the others are closed.
func (a *Agent) dialPunching(ctx context.Context, in *message.Introduction, key, ticket [32]byte) (*sudp.Conn, error) {
	w, stop, err := a.punches.watch(punch.TokenFor(ticket, in.Topic), parseAddrPort(in.PeerAddr))
	if err != nil {
		return nil, err
	}
	defer stop()
	window := time.Duration(in.Window)
	if window <= 0 || window > punch.MaxWindow {
		window = punch.MaxWindow
	}
	if !sleepUntil(ctx, a.punchStart(in)) {
		return nil, ctx.Err()
	}
	dctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	type result struct {
		c    *sudp.Conn
		addr string
		err  error
	}
	results := make(chan result, 1+punch.MaxRedials)
	pending := 0
	dial := func(addr string) {
		pending++
		go func() {
			c, err := a.ep.DialWith(dctx, addr, key, ticket, sudp.DialOptions{Retry: punch.Retry, RetryFor: window})
			results <- result{c, addr, err}
		}()
	}
	dial(in.PeerAddr)
	var errs []error
	for {
		select {
		case addr := <-w.addrs:
			a.log.Info("agent: punch from a new address; dialling it too", "topic", in.Topic, "addr", addr.String())
			dial(addr.String())
			continue
		case r := <-results:
			pending--
			if r.err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.addr, r.err))
				if pending == 0 && dctx.Err() != nil {
					return nil, fmt.Errorf("agent: no direct path to %s within %v: %w", in.PeerID, window, errors.Join(errs...))
				}
				if pending == 0 {
					// Every dial failed before the window ended (refused,
					// not timed out): a punch may still name another
					// address until then.
					select {
					case addr := <-w.addrs:
						dial(addr.String())
						continue
					case <-dctx.Done():
						return nil, fmt.Errorf("agent: no direct path to %s within %v: %w", in.PeerID, window, errors.Join(errs...))
					}
				}
				continue
			}
			// The winner. The others are cancelled; any that still
			// completes is closed.
			cancel()
			if pending > 0 {
				go func(n int) {
					for range n {
						if r := <-results; r.c != nil {
							_ = r.c.Close()
						}
					}
				}(pending)
			}
			return r.c, nil
		}
	}
}

func parseAddrPort(s string) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(s)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
