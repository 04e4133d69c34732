package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/punch"
	"github.com/ferry-vm/ferry/internal/relay"
)

// Relayed links (package relay, docs/protocol.md §18). When the agents
// cannot punch a direct path the MMC allocates a pair of relay ports and
// introduces them again: each binds its public address at its port (a
// bind datagram from the endpoint's socket, MAC'd with the key the MMC
// gave it), then the link's SUDP connection runs to the relay port as if
// it were the peer. The relay forwards ciphertext between the two
// bindings; the connection stays end to end between the agents.

// foreignDispatch hands the datagrams beside SUDP to their protocol: hole
// punches and relay acks. It is the endpoint's Foreign handler, set up
// before the endpoint exists, so the relay client (which needs the
// endpoint) is filled in after.
type foreignDispatch struct {
	punches *punches
	relay   atomic.Pointer[relay.Client]
}

func (f *foreignDispatch) handle(from netip.AddrPort, b []byte) {
	switch b[0] {
	case punch.Type:
		f.punches.foreign(from, b)
	case relay.Magic:
		if c := f.relay.Load(); c != nil {
			c.Handle(from, b)
		}
	default:
		f.punches.count("malformed")
	}
}

// bindRelay binds this agent at the relay port an introduction names.
func (a *Agent) bindRelay(ctx context.Context, in *message.Introduction) (netip.AddrPort, error) {
	addr, err := netip.ParseAddrPort(in.RelayAddr)
	if err != nil {
		return addr, fmt.Errorf("agent: relay address %q: %w", in.RelayAddr, err)
	}
	var key [relay.KeySize]byte
	copy(key[:], in.RelayKey)
	defer clear(key[:])
	c := a.foreign.relay.Load()
	if c == nil {
		return addr, fmt.Errorf("agent: no relay client")
	}
	if err := c.Bind(ctx, addr, relay.AllocID(in.RelayAlloc), key); err != nil {
		return addr, fmt.Errorf("agent: bind at relay %s: %w", addr, err)
	}
	a.log.Info("agent: bound at relay", "topic", in.Topic, "relay", addr.String())
	a.keepRelayBinding(in, addr)
	return addr, nil
}

// relayRebind is how often an agent re-binds at its relay port while its
// relayed link lives: well inside the UDP mapping timeouts of common NATs
// (30 s and up), so the binding follows the agent's NAT if it rebinds.
const relayRebind = 15 * time.Second

// keepRelayBinding re-binds at addr every relayRebind for as long as
// topic's link lives (owned by the agent's Run).
func (a *Agent) keepRelayBinding(in *message.Introduction, addr netip.AddrPort) {
	c := a.foreign.relay.Load()
	if c == nil {
		return
	}
	var key [relay.KeySize]byte
	copy(key[:], in.RelayKey)
	id, topic := relay.AllocID(in.RelayAlloc), in.Topic
	a.peerWG.Add(1)
	go func() {
		defer a.peerWG.Done()
		defer clear(key[:])
		ctx, cancel := context.WithCancel(a.peerCtx)
		defer cancel()
		// The link comes up within the hello's timeout or not at all.
		deadline := time.Now().Add(peerHelloTimeout)
		var l *link
		for l = a.peers.link(topic); l == nil; l = a.peers.link(topic) {
			if time.Now().After(deadline) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		go func() {
			select {
			case <-l.c.Done():
				cancel()
			case <-ctx.Done():
			}
		}()
		_ = c.Keepalive(ctx, addr, id, key, relayRebind)
	}()
}

// upgradeLink is the dialer's side of moving a relayed link to a direct
// path (the MMC tries it now and then while the link lives): at the
// punch time it probes the listener's public address on the link's
// connection (sudp ProbePath: the challenges are this side's punches),
// and each new address the listener's punches come from; the listener
// punches towards us meanwhile (peer.punch). It returns nil once the
// connection has moved, an error if it has not by the window's end.
func (a *Agent) upgradeLink(ctx context.Context, in *message.Introduction) error {
	l := a.peers.link(in.Topic)
	if l == nil {
		return fmt.Errorf("agent: no link for %s to upgrade", in.Topic)
	}
	target, err := netip.ParseAddrPort(in.PeerAddr)
	if err != nil {
		return fmt.Errorf("agent: upgrade: peer address %q: %w", in.PeerAddr, err)
	}
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	var ticket [32]byte
	copy(ticket[:], in.Ticket)
	w, stop, err := a.punches.watch(punch.TokenFor(ticket, in.Topic), target)
	clear(ticket[:])
	if err != nil {
		return err
	}
	defer stop()
	relayed := l.c.RemoteAddr()
	window := min(max(time.Duration(in.Window), punch.MinWindow), punch.MaxWindow)
	if !sleepUntil(ctx, a.punchStart(in)) {
		return ctx.Err()
	}
	if err := l.c.ProbePath(target); err != nil {
		return fmt.Errorf("agent: upgrade: %w", err)
	}
	deadline := time.NewTimer(window)
	defer deadline.Stop()
	tick := time.NewTicker(punch.Retry)
	defer tick.Stop()
	for {
		if now := l.c.RemoteAddr(); now != relayed {
			a.log.Info("agent: relayed link moved to a direct path", "topic", in.Topic, "from", relayed.String(), "to", now.String())
			a.postConnected(in.Topic, in.PeerID, l.c)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.c.Done():
			return fmt.Errorf("agent: upgrade: the link closed")
		case addr := <-w.addrs:
			_ = l.c.ProbePath(addr)
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("agent: no direct path to %s within %v; the link stays relayed", in.PeerID, window)
		}
	}
}
