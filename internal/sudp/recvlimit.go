package sudp

import (
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// recvLimit caps the bytes of a connection's packets that its endpoint's
// receive loop processes. The loop is shared by every connection, and a
// peer holding a session can make each packet cost decryption and frame
// processing: past the loop's speed the socket buffer overflows and every
// peer's packets are dropped alike. Each connection whose peer the layer
// above knows the needs of is given a bucket (shared by all of that peer's
// connections), and its packets beyond it are dropped before decryption,
// which costs the loop a map lookup.
type recvLimit struct {
	bucket  *ratelimit.Bucket // nil: no limit
	dropped uint64            // this connection's packets dropped
}

// minPacketCharge is what the smallest packet costs the bucket. A packet's
// cost to the loop is not only its bytes (decryption) but a fixed part
// (lookup, lock, header, timers): charged by bytes alone, tiny packets
// would pass a byte cap at many times the packet rate of full ones.
const minPacketCharge = 512

// allow takes n bytes (at least minPacketCharge) from the bucket, or
// reports that the packet is over the rate.
func (l *recvLimit) allow(now time.Time, n int) bool {
	if l.bucket.Allow(now, max(n, minPacketCharge)) {
		return true
	}
	l.dropped++
	return false
}

// refund returns what allow took for a packet that did not authenticate:
// junk at one of the peer's connection ids — which anyone who saw a packet
// of it can send, from any address — must not spend the peer's bucket.
// (Junk costs the loop a failed decryption; a hostile peer's authentic
// packets are what the cap is for.)
func (l *recvLimit) refund(n int) {
	l.bucket.Refund(max(n, minPacketCharge))
}

// LimitReceive caps what the peer can make this connection's endpoint
// process: bytesPerSecond, in bursts of up to burst bytes. Packets beyond it
// are dropped unread, as if lost on the way (a well-behaved peer's loss
// recovery copes; a flood costs the shared receive loop almost nothing).
// Counted as dropped_total{reason="receive_rate"}, logged once per
// connection. bytesPerSecond 0 removes the cap. (A cap shared by all of a
// peer's connections comes from handshake.Peer.RecvLimit.)
func (c *Conn) LimitReceive(bytesPerSecond float64, burst int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rlim.bucket = nil
	if bytesPerSecond > 0 {
		c.rlim.bucket = ratelimit.NewBucket(time.Now(), bytesPerSecond, burst)
	}
}

// overReceiveRate is the receive loop's check of c's cap (c.mu held).
func (e *Endpoint) overReceiveRate(c *Conn, now time.Time, n int) bool {
	if c.rlim.allow(now, n) {
		return false
	}
	e.recvLimited.Add(1)
	if c.rlim.dropped == 1 {
		e.log.Warn("sudp: peer over its receive rate, dropping its packets", "peer", c.cc.RemoteAddr(), "bytes_per_second", c.rlim.bucket.Rate())
	}
	return true
}
