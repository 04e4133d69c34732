package core

import (
	"net/netip"
	"time"
)

// Protocol constants (docs/protocol.md §7). Both ends assume the initial
// limits until the peer raises them with MAX_DATA, MAX_STREAM_DATA and
// MAX_STREAMS frames, so no transport parameters ride on the handshake.
const (
	InitialStreamWindow = 256 << 10
	InitialConnWindow   = 1 << 20
	InitialMaxStreams   = 16

	// PacketThreshold and TimeThreshold declare a packet lost (RFC 9002 §6.1).
	PacketThreshold   = 3
	timeThresholdNum  = 9
	timeThresholdDen  = 8
	timerGranularity  = time.Millisecond
	maxAckDelay       = 5 * time.Millisecond
	ackElicitingThres = 2 // ack at once after this many ack-eliciting packets

	maxAckRangesSent = 64
	// keyDiscardDelay keeps the previous receive generation for reordered
	// packets after a key update, in PTOs.
	keyDiscardPTOs = 3
)

// Config tunes one connection. The zero value is replaced field by field by
// DefaultConfig's values.
type Config struct {
	// MaxDatagramSize is the largest UDP payload sent (header and tag
	// included). 0 (the default): what a 1500-byte MTU carries on the
	// path's address family — MaxDatagramSizeIPv4 on IPv4,
	// MaxDatagramSizeIPv6 on IPv6 (DefaultConfig's value). A set value is
	// still capped at the family's on IPv6.
	MaxDatagramSize int
	// LongHeaders sends every data packet with the 18-byte long header
	// (docs/protocol.md §4) instead of the 6–9 byte short one (§4.2).
	// Receivers accept both; it exists to measure what the short header
	// gains.
	LongHeaders bool
	// StreamWindow and ConnWindow bound what a peer may send ahead of the
	// application's reads (receiver memory); they should exceed the path's
	// bandwidth-delay product for full speed.
	StreamWindow uint64
	ConnWindow   uint64
	// MaxStreams is how many streams of each kind the peer may have open.
	MaxStreams uint64
	// StreamSendBuffer bounds the bytes an application may have written to
	// one stream and not yet seen acknowledged (sender memory).
	StreamSendBuffer int
	// DatagramQueue bounds best-effort bytes waiting to be sent; older
	// messages are dropped first. MaxDatagramMessage bounds one message.
	DatagramQueue      int
	MaxDatagramMessage int
	// IdleTimeout closes a connection that hears nothing from its peer;
	// KeepAlive sends a PING when nothing was sent for that long.
	IdleTimeout time.Duration
	KeepAlive   time.Duration
	// HandshakeTimeout bounds how long a client retries its initiation.
	HandshakeTimeout time.Duration
	// Key update: a sender moves to the next key generation after this many
	// packets, bytes or this much time, whichever comes first. The packet
	// limit keeps AES-GCM far below its confidentiality bound (RFC 9001
	// §6.6: 2^23 packets); the time limit bounds what one key exposes.
	KeyUpdatePackets  uint64
	KeyUpdateBytes    uint64
	KeyUpdateInterval time.Duration
	// KeyRejectAfter is the hard limit on one key generation's age
	// (WireGuard's RejectAfterTime): a connection whose peer still sends
	// under a generation this old is closed with CodeKeyExpired. Default
	// 1.5 × KeyUpdateInterval.
	//
	// Our own send key past the limit does not close the connection: it
	// stops sending (nothing is protected by an expired key) and rekeys
	// by a re-handshake, which needs no traffic key. A connection that
	// loses its path thus waits for it as long as IdleTimeout allows and
	// rekeys when the peer is heard again.
	KeyRejectAfter time.Duration
	// RehandshakeInterval is how often a connection replaces its traffic
	// secrets with a fresh Diffie–Hellman between the two static keys
	// (a re-handshake, docs/protocol.md §6.3), so that a leaked traffic
	// key stops opening packets at the next one. A re-handshake also
	// starts whenever the send key nears KeyRejectAfter (its update is
	// stuck), and is how a connection whose keys all expired during an
	// outage rekeys when the peer is heard again. Keys that descend from
	// a Diffie–Hellman older than RehandshakeInterval + KeyRejectAfter
	// are expired (nothing is sent under them), so dropping the
	// re-handshake does not keep a leaked key useful. Negative: no
	// periodic re-handshake and no such limit.
	RehandshakeInterval time.Duration
	// MaxRate caps the sending rate in bytes per second (0: no cap).
	MaxRate float64
	// The receive budget (docs/protocol.md §7.5.1). Flow control bounds how
	// far ahead of the application a peer may send; these bound what the
	// pattern of its data may cost. A peer that crosses one is closed
	// with CodeRecvBudget.
	//
	// MaxRecvRanges bounds the disjoint ranges of received data over all
	// of a connection's streams (holes left by loss or reordering). The
	// default, ConnWindow / (2 × MaxDatagramSize), is the most a peer
	// that respects flow control can produce by losing every other
	// packet of a full window: no loss pattern of an honest sender
	// reaches it.
	MaxRecvRanges int
	// MaxRecvBuffer bounds the memory (in 4 KiB pages) holding received,
	// unread stream data. The default, ConnWindow plus two pages per
	// stream the peer may open, is what flow control already allows; a
	// lower value trades peak throughput for a tighter bound.
	MaxRecvBuffer int
}

// DefaultConfig returns the defaults used for zero fields.
func DefaultConfig() Config {
	return Config{
		MaxDatagramSize:     1452,
		StreamWindow:        16 << 20,
		ConnWindow:          24 << 20,
		MaxStreams:          256,
		StreamSendBuffer:    16 << 20,
		DatagramQueue:       1 << 20,
		MaxDatagramMessage:  1 << 20,
		IdleTimeout:         30 * time.Second,
		KeepAlive:           10 * time.Second,
		HandshakeTimeout:    20 * time.Second,
		KeyUpdatePackets:    1 << 22,
		KeyUpdateBytes:      4 << 30,
		KeyUpdateInterval:   2 * time.Minute,
		RehandshakeInterval: 2 * time.Minute,
	}
}

// The largest UDP payloads a 1500-byte MTU carries: 1500 less the IP
// header (20 bytes for IPv4, 40 for IPv6) and UDP's 8. On IPv4 that is
// 1.4 % fewer packets for the same bytes (the fixed per-packet overhead
// barely changes goodput: docs/BENCHMARKS.md §4.2.1).
const (
	MaxDatagramSizeIPv4 = 1472
	MaxDatagramSizeIPv6 = 1452
)

// maxDatagramFor is the largest datagram a 1500-byte MTU carries to addr.
func maxDatagramFor(addr netip.AddrPort) int {
	if addr.Addr().Unmap().Is4() {
		return MaxDatagramSizeIPv4
	}
	return MaxDatagramSizeIPv6
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxDatagramSize == 0 {
		c.MaxDatagramSize = d.MaxDatagramSize
	}
	c.MaxDatagramSize = max(c.MaxDatagramSize, 256)
	if c.StreamWindow == 0 {
		c.StreamWindow = d.StreamWindow
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = d.ConnWindow
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = d.MaxStreams
	}
	// A peer may send up to the protocol's initial limits before it hears
	// ours, so we can never advertise less than them.
	c.StreamWindow = max(c.StreamWindow, InitialStreamWindow)
	c.ConnWindow = max(c.ConnWindow, InitialConnWindow)
	c.MaxStreams = max(c.MaxStreams, InitialMaxStreams)
	if c.StreamSendBuffer == 0 {
		c.StreamSendBuffer = d.StreamSendBuffer
	}
	if c.DatagramQueue == 0 {
		c.DatagramQueue = d.DatagramQueue
	}
	if c.MaxDatagramMessage == 0 {
		c.MaxDatagramMessage = d.MaxDatagramMessage
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = d.KeepAlive
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.KeyUpdatePackets == 0 {
		c.KeyUpdatePackets = d.KeyUpdatePackets
	}
	if c.KeyUpdateBytes == 0 {
		c.KeyUpdateBytes = d.KeyUpdateBytes
	}
	if c.KeyUpdateInterval == 0 {
		c.KeyUpdateInterval = d.KeyUpdateInterval
	}
	if c.RehandshakeInterval == 0 {
		c.RehandshakeInterval = d.RehandshakeInterval
	}
	if c.MaxRecvRanges <= 0 {
		c.MaxRecvRanges = max(1024, int(c.ConnWindow/uint64(2*c.MaxDatagramSize)))
	}
	if c.MaxRecvBuffer <= 0 {
		// The data a peer may have unread spans at most ConnWindow
		// bytes, and each stream's first and last pages may be partial.
		c.MaxRecvBuffer = int(c.ConnWindow) + 2*2*int(c.MaxStreams)*recvPageSize
	}
	if c.KeyRejectAfter < c.KeyUpdateInterval {
		c.KeyRejectAfter = c.KeyUpdateInterval * 3 / 2
	}
	return c
}
