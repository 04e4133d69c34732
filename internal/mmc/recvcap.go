package mmc

import (
	"time"

	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// The MMC's SUDP endpoint has one receive loop for every agent's session,
// and each packet a peer sends costs that loop decryption and frame
// processing. Every session is therefore capped before decryption, at what
// its kind of peer needs (handshake.Peer.RecvLimit, set by lookup, so the cap
// holds from the first packet; one bucket a key on record, shared by all its
// sessions, so a new session brings no fresh burst): a flood over it costs the loop a lookup per
// packet, one peer cannot monopolise the loop, and the other sessions keep
// their round trip (docs/BENCHMARKS.md §9). Packets are charged at least
// 512 bytes each (sudp's minPacketCharge), so tiny ones do not multiply the
// packet rate.
const (
	// An enrolling or pending host's session carries a few small messages
	// (its request with the host's facts, an acknowledgement, the wait for
	// a decision), and anyone with the bundle can open one. The burst
	// takes a whole enrolment at once.
	enrolRecvRate  = 64 << 10  // bytes a second
	enrolRecvBurst = 256 << 10 // bytes
	// An approved agent's session carries control traffic only — load
	// reports, events, blackboard entries, migration reports; migration
	// streams run between agents, never through the MMC. The largest
	// message (256 KiB) and a report naming thousands of VMs fit in the
	// burst many times over; an agent that outruns the rate sees loss, as
	// on a slow link, and its congestion control backs off.
	agentRecvRate  = 1 << 20 // bytes a second
	agentRecvBurst = 8 << 20 // bytes
)

// recvRateOf is the receive rate of a key in e's state: an agent's once it
// is approved and has confirmed its code, an enrolling host's until then.
func recvRateOf(e *agentEntry) float64 {
	if e.state == store.StateApproved && !e.codePending {
		return agentRecvRate
	}
	return enrolRecvRate
}

// newRecvCap is a full bucket for a key in e's state.
func newRecvCap(now time.Time, e *agentEntry) *ratelimit.Bucket {
	if recvRateOf(e) == agentRecvRate {
		return ratelimit.NewBucket(now, agentRecvRate, agentRecvBurst)
	}
	return ratelimit.NewBucket(now, enrolRecvRate, enrolRecvBurst)
}
