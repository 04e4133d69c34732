package core

import (
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// Path validation (docs/protocol.md §10.6), after RFC 9000 §9.3. A packet
// that authenticates but comes from a new address proves only that its
// sender saw it: an attacker who copies a packet and races it from another
// address must not move the connection. So a new address is a candidate:
// it is challenged with a PATH_CHALLENGE while everything else keeps going
// to the validated address, and it becomes the path only when a
// PATH_RESPONSE carrying the challenge's data comes back from it (its owner
// holds the keys and receives at that address). Genuine NAT rebinding costs
// one round trip of packets sent to the dead mapping; a racing copy costs a
// small challenge, sent within the candidate's anti-amplification budget
// and left out of congestion control, since the attacker never
// acknowledges it.

// maxPathProbes bounds the candidate addresses validated at once: an
// attacker racing copies from many addresses displaces older candidates,
// never the validated path.
const maxPathProbes = 4

// pathProbe is a candidate address being validated.
type pathProbe struct {
	path     path // the candidate, with its anti-amplification counters
	data     [8]byte
	sent     bool
	deadline time.Time
	pn       uint64 // the packet that revealed it
	// chosen: this side asked to move there (ProbePath), so the
	// challenge is resent every chosenRetry until the deadline (the
	// peer's NAT may drop the first ones), the address is not held to
	// an anti-amplification budget (we picked it; nobody reflects
	// through it), and packets still arriving on the current path do
	// not abandon it (we keep using that path until the move).
	chosen   bool
	nextSend time.Time
}

// Active migration, for a connection that runs through a relay while a
// direct path to the same peer opens: ProbePath challenges the new
// address from this side. The peer sees an authenticated packet from a
// new address of ours and validates it as after a NAT rebinding (its own
// challenge, answered by us on the new path); this side moves when the
// peer's PATH_RESPONSE comes back from the probed address. Streams carry
// on: both paths deliver into the same packet-number space, so a packet
// that arrives both ways is a duplicate, dropped as any other.
const (
	chosenRetry  = 100 * time.Millisecond
	chosenWindow = 5 * time.Second
)

// ErrNotEstablished is ProbePath's error on a connection not (or no
// longer) established.
var ErrNotEstablished = errors.New("sudp: connection not established")

// ProbePath starts moving the connection to addr: see the comment on
// chosenRetry. Until the answer comes back everything keeps going to the
// current path; without one within chosenWindow nothing changes.
func (c *Conn) ProbePath(now time.Time, addr netip.AddrPort) error {
	if c.state != stateEstablished {
		return ErrNotEstablished
	}
	if addr == c.path.addr {
		return nil
	}
	if p := c.findPathProbe(addr); p != nil {
		p.chosen, p.nextSend, p.deadline = true, now, now.Add(chosenWindow)
		return nil
	}
	var data [8]byte
	if _, err := io.ReadFull(c.rand, data[:]); err != nil {
		return err
	}
	if len(c.pathProbes) >= maxPathProbes {
		c.pathProbes = append(c.pathProbes[:0], c.pathProbes[1:]...)
		c.stats.PathProbesFailed++
	}
	c.pathProbes = append(c.pathProbes, pathProbe{path: path{addr: addr}, data: data, deadline: now.Add(chosenWindow),
		pn: c.largestRecvPN, chosen: true, nextSend: now})
	c.stats.PathProbes++
	return nil
}

func (c *Conn) findPathProbe(addr netip.AddrPort) *pathProbe {
	for i := range c.pathProbes {
		if c.pathProbes[i].path.addr == addr {
			return &c.pathProbes[i]
		}
	}
	return nil
}

// notePath accounts for an authenticated packet from `from`, and makes a
// new address a candidate. Only the newest packets may (an old, reordered
// packet from a previous address must not).
func (c *Conn) notePath(now time.Time, from netip.AddrPort, pn uint64, n int) {
	if from == c.path.addr {
		c.path.recvBytes += uint64(n)
		if pn >= c.largestRecvPN {
			// The validated path still delivers packets newer than those
			// that revealed the candidates: they were racing copies (or
			// an older mapping), not a move. Stop challenging them.
			// A candidate whose challenge we still owe an answer keeps
			// its budget until the answer is out: the peer may be moving
			// on purpose (ProbePath) while its packets still arrive here,
			// and with both in one receive batch the answer would
			// otherwise never leave.
			c.dropPathProbes(func(p *pathProbe) bool { return p.pn < pn && !p.chosen && !c.responseOwed(p.path.addr) })
		}
		return
	}
	if p := c.findPathProbe(from); p != nil {
		p.path.recvBytes += uint64(n)
		return
	}
	if pn < c.largestRecvPN || c.state != stateEstablished {
		return
	}
	var data [8]byte
	if _, err := io.ReadFull(c.rand, data[:]); err != nil {
		return
	}
	if len(c.pathProbes) >= maxPathProbes {
		c.pathProbes = append(c.pathProbes[:0], c.pathProbes[1:]...)
		c.stats.PathProbesFailed++
	}
	c.pathProbes = append(c.pathProbes, pathProbe{
		path:     path{addr: from, recvBytes: uint64(n)},
		data:     data,
		deadline: now.Add(3 * c.rec.pto()),
		pn:       pn,
	})
	c.stats.PathProbes++
}

// dropPathProbes forgets the candidates for which drop is true, counting
// them as failed validations.
func (c *Conn) dropPathProbes(drop func(*pathProbe) bool) {
	kept := c.pathProbes[:0]
	for i := range c.pathProbes {
		if drop(&c.pathProbes[i]) {
			c.stats.PathProbesFailed++
			continue
		}
		kept = append(kept, c.pathProbes[i])
	}
	clear(c.pathProbes[len(kept):])
	c.pathProbes = kept
}

// onPathResponse moves the connection to a candidate that answered its
// challenge: the response comes from the candidate address, in a packet
// only the key holder could make.
func (c *Conn) onPathResponse(from netip.AddrPort, data [8]byte) {
	p := c.findPathProbe(from)
	if p == nil || !p.sent || p.data != data {
		return
	}
	c.path = p.path
	c.path.validated = true
	c.pathProbes = c.pathProbes[:0]
	c.stats.PathChanges++
}

// responseOwed reports whether a PATH_RESPONSE to addr is queued.
func (c *Conn) responseOwed(addr netip.AddrPort) bool {
	for i := range c.pathRespQ {
		if c.pathRespQ[i].to == addr {
			return true
		}
	}
	return false
}

// maxPathResponses bounds queued PATH_RESPONSEs: a peer may challenge a
// path, not make us a reflector.
const maxPathResponses = 4

// queuePathResponse answers a challenge on the current path or a
// candidate, keeping only the newest challenge per address.
func (c *Conn) queuePathResponse(from netip.AddrPort, data [8]byte) {
	if from != c.path.addr && c.findPathProbe(from) == nil {
		c.stats.DroppedMalformed++
		return
	}
	for i := range c.pathRespQ {
		if c.pathRespQ[i].to == from {
			c.pathRespQ[i].data = data
			return
		}
	}
	if len(c.pathRespQ) >= maxPathResponses {
		c.stats.DroppedMalformed++
		return
	}
	c.pathRespQ = append(c.pathRespQ, pathResp{to: from, data: data})
}

// pathChallengeSize is the size of a packet carrying only a PATH_CHALLENGE
// or a PATH_RESPONSE.
const pathChallengeSize = wire.DataOverhead + 9

// sendPathChallenge sends the first unsent challenge that the candidate's
// anti-amplification budget allows. It is not ack-eliciting for our
// recovery: an address that never answers (an attacker's) must not count
// as loss and shrink the congestion window of the validated path.
func (c *Conn) sendPathChallenge(now time.Time, buf []byte) (int, netip.AddrPort, bool) {
	if c.state != stateEstablished {
		return 0, netip.AddrPort{}, false
	}
	for i := range c.pathProbes {
		p := &c.pathProbes[i]
		switch {
		case p.chosen:
			if now.Before(p.nextSend) {
				continue
			}
			p.nextSend = now.Add(chosenRetry)
		case p.sent || p.path.budget() < pathChallengeSize:
			continue
		}
		p.sent = true
		b := c.startPacket(buf, false)
		b = wire.AppendPath(b, wire.FramePathChallenge, p.data)
		n, to, ok := c.finishPacket(now, b, p.path.addr, false, nil)
		p.path.sentBytes += uint64(n)
		return n, to, ok
	}
	return 0, netip.AddrPort{}, false
}

// pathProbeDeadline is when the oldest candidate gives up, or a chosen
// one's challenge is due again (zero: none).
func (c *Conn) pathProbeDeadline() time.Time {
	var t time.Time
	for i := range c.pathProbes {
		p := &c.pathProbes[i]
		if d := p.deadline; t.IsZero() || d.Before(t) {
			t = d
		}
		if p.chosen && !c.keyExpired && p.nextSend.Before(t) {
			t = p.nextSend
		}
	}
	return t
}

// expirePathProbes abandons candidates that did not answer in time; the
// connection never left its validated path, so nothing is reverted. A
// genuine move shows up again with the peer's next packet.
func (c *Conn) expirePathProbes(now time.Time) {
	c.dropPathProbes(func(p *pathProbe) bool { return !now.Before(p.deadline) })
}
