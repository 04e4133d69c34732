package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp"
)

// Bind retry schedule: the first retry soon (a lost bind should not cost a
// migration a second), then backing off to once a second.
const (
	bindRetryFirst = 200 * time.Millisecond
	bindRetryMax   = time.Second
)

// Client is an agent's side of the relay: it sends binds from the agent's
// SUDP endpoint socket — so the relay binds the very NAT mapping the SUDP
// connection's packets will come from — and takes the bind-acks the
// endpoint's Foreign handler gives it (Handle).
type Client struct {
	ep  *sudp.Endpoint
	log *slog.Logger

	mu      sync.Mutex // guards waiters and counter
	waiters map[*waiter]struct{}
	counter uint64 // last bind counter sent

	acks, refused atomic.Uint64
}

type waiter struct {
	relay  netip.AddrPort
	id     AllocID
	key    [KeySize]byte
	lo, hi uint64 // counters this bind sent
	done   chan struct{}
	acked  bool
}

// NewClient makes the relay client of ep. The endpoint's Config.Foreign
// must pass it the datagrams that start with Magic (Handle).
func NewClient(ep *sudp.Endpoint, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{ep: ep, log: log, waiters: make(map[*waiter]struct{})}
}

// ClientStats counts bind-acks: accepted, and refused (malformed, not
// authentic, from elsewhere than the relay port, or for no pending bind).
type ClientStats struct {
	Acks, Refused uint64
}

// Stats returns the client's counters.
func (c *Client) Stats() ClientStats {
	return ClientStats{Acks: c.acks.Load(), Refused: c.refused.Load()}
}

// nextCounter returns a bind counter above every one sent before. It starts
// from the clock so that it also grows across an agent restart. c.mu is
// held.
func (c *Client) nextCounter() uint64 {
	c.counter = max(c.counter+1, uint64(time.Now().UnixNano()))
	return c.counter
}

// ErrBindTimeout wraps the context's error when no ack came.
var ErrBindTimeout = errors.New("relay: no bind-ack")

// Bind binds the endpoint's public address to one side of allocation id at
// relayAddr (the side's port), authenticating with key, and returns once the
// relay acknowledged it. It retries (each try with a fresh counter) until
// ctx ends.
func (c *Client) Bind(ctx context.Context, relayAddr netip.AddrPort, id AllocID, key [KeySize]byte) error {
	relayAddr = netip.AddrPortFrom(relayAddr.Addr().Unmap(), relayAddr.Port())
	w := &waiter{relay: relayAddr, id: id, key: key, done: make(chan struct{})}
	clear(key[:])
	c.mu.Lock()
	c.waiters[w] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, w)
		clear(w.key[:])
		c.mu.Unlock()
	}()
	retry := bindRetryFirst
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%w from %s: %w", ErrBindTimeout, relayAddr, ctx.Err())
		case <-t.C:
		}
		c.mu.Lock()
		n := c.nextCounter()
		if w.lo == 0 {
			w.lo = n
		}
		w.hi = n
		msg := AppendMsg(make([]byte, 0, MsgSize), Msg{Kind: KindBind, ID: id, Counter: n}, &w.key)
		c.mu.Unlock()
		if err := c.ep.SendRaw(relayAddr, msg); err != nil {
			return fmt.Errorf("relay: send bind to %s: %w", relayAddr, err)
		}
		t.Reset(retry)
		retry = min(retry*2, bindRetryMax)
	}
}

// Handle takes a datagram starting with Magic from the endpoint's Foreign
// handler (on its reader goroutine: it does not block, and keeps nothing
// of b). Anything but an authentic ack for a pending bind is counted as
// refused.
func (c *Client) Handle(from netip.AddrPort, b []byte) {
	m, err := ParseMsg(b)
	if err != nil || m.Kind != KindAck {
		c.refused.Add(1)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.waiters {
		if w.acked || w.id != m.ID || w.relay != from || m.Counter < w.lo || m.Counter > w.hi {
			continue
		}
		if !VerifyMsg(b, &w.key) {
			continue
		}
		w.acked = true
		close(w.done)
		c.acks.Add(1)
		return
	}
	c.refused.Add(1)
}

// Keepalive re-binds every interval until ctx ends, so that the binding
// follows the agent's NAT when it rebinds (the relay drops what comes from
// an address that is not bound) and the NAT mapping towards the relay
// stays open even while the link is quiet. Failed re-binds are logged and
// retried at the next interval. It returns ctx's error.
func (c *Client) Keepalive(ctx context.Context, relayAddr netip.AddrPort, id AllocID, key [KeySize]byte, interval time.Duration) error {
	defer clear(key[:])
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		bctx, cancel := context.WithTimeout(ctx, interval)
		err := c.Bind(bctx, relayAddr, id, key)
		cancel()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("relay: re-bind failed", "relay", relayAddr, "id", fmt.Sprintf("%016x", uint64(id)), "err", err)
		}
	}
}
