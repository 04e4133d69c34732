package mmc

import (
	"context"
	"sync"
)

// pairLocks serialises introductions between the same two agents. A
// listening agent holds one expectation per peer key (the handshake's
// Lookup sees only the key, and picks the ticket by it): a second
// introduction of the same two agents while the first's connection is
// still being made would replace the first's ticket, and the first's
// dialer would find no path. Two migrations between the same hosts (an
// evacuation runs several at once) are therefore introduced one after
// the other — the first's link is up in a few round trips.
type pairLocks struct {
	mu    sync.Mutex
	pairs map[[2]string]chan struct{}
}

// acquire waits until no other introduction of a and b (either order)
// runs, or ctx ends; release ends this one.
func (p *pairLocks) acquire(ctx context.Context, a, b string) (release func(), err error) {
	if b < a {
		a, b = b, a
	}
	k := [2]string{a, b}
	for {
		p.mu.Lock()
		if p.pairs == nil {
			p.pairs = map[[2]string]chan struct{}{}
		}
		busy, ok := p.pairs[k]
		if !ok {
			done := make(chan struct{})
			p.pairs[k] = done
			p.mu.Unlock()
			return func() {
				p.mu.Lock()
				delete(p.pairs, k)
				p.mu.Unlock()
				close(done)
			}, nil
		}
		p.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
