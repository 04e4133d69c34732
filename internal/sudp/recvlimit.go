package sudp

import (
	"time"
)

// recvLimit is a token bucket on the bytes of a connection's packets that
// its endpoint's receive loop processes. The loop is shared by every
// connection, and a peer holding a session can make each packet cost
// decryption and frame processing: past the loop's speed the socket buffer
// overflows and every peer's packets are dropped alike. A connection whose
// peer needs little (an enrolling host's: a few small messages) is given a
// rate, and its packets beyond it are dropped before decryption, which
// costs the loop a map lookup.
type recvLimit struct {
	rate, burst float64 // bytes a second and bucket size; rate 0: no limit
	tokens      float64
	last        time.Time
	dropped     uint64
}

// minPacketCharge is what the smallest packet costs the bucket. A packet's
// cost to the loop is not only its bytes (decryption) but a fixed part
// (lookup, lock, header, timers): charged by bytes alone, tiny packets
// would pass a byte cap at many times the packet rate of full ones.
const minPacketCharge = 512

// allow takes n bytes (at least minPacketCharge) from the bucket, or
// reports that the packet is over the rate.
func (l *recvLimit) allow(now time.Time, n int) bool {
	if l.rate <= 0 {
		return true
	}
	n = max(n, minPacketCharge)
	if now.After(l.last) {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
		l.last = now
	}
	if l.tokens < float64(n) {
		l.dropped++
		return false
	}
	l.tokens -= float64(n)
	return true
}

// LimitReceive caps what the peer can make this connection's endpoint
// process: bytesPerSecond, in bursts of up to burst bytes. Packets beyond it
// are dropped unread, as if lost on the way (a well-behaved peer's loss
// recovery copes; a flood costs the shared receive loop almost nothing).
// Counted as dropped_total{reason="receive_rate"}, logged once per
// connection. bytesPerSecond 0 removes the cap.
func (c *Conn) LimitReceive(bytesPerSecond float64, burst int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rlim = newRecvLimit(time.Now(), bytesPerSecond, burst)
}

func newRecvLimit(now time.Time, rate float64, burst int) recvLimit {
	return recvLimit{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// overReceiveRate is the receive loop's check of c's cap (c.mu held).
func (e *Endpoint) overReceiveRate(c *Conn, now time.Time, n int) bool {
	if c.rlim.allow(now, n) {
		return false
	}
	e.recvLimited.Add(1)
	if c.rlim.dropped == 1 {
		e.log.Warn("sudp: peer over its receive rate, dropping its packets", "peer", c.cc.RemoteAddr(), "bytes_per_second", c.rlim.rate)
	}
	return true
}
