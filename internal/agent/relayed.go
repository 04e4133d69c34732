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
