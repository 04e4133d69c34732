package ratelimit

import "time"

// Defaults are wireguard-go's handshake limiter numbers: a source may start
// 20 handshakes a second on average, 5 back to back. An honest peer retries a
// lost initiation every few seconds, so it never comes near them; a flood
// from one address is cut to a trickle of Diffie-Hellman work.
const (
	// DefaultRate is the sustained number of initiations a second a source
	// may send.
	DefaultRate = 20
	// DefaultBurst is how many initiations a source with a full bucket may
	// send back to back.
	DefaultBurst = 5
	// DefaultMaxEntries bounds how many sources are tracked at once.
	DefaultMaxEntries = 65536

	// MinIdle is the shortest idle time after which a source is forgotten.
	// A source is only forgotten once its bucket is also full again, so
	// forgetting it loses nothing: a new entry starts with a full bucket.
	MinIdle = time.Second

	// IPv6PrefixBits is the granularity of IPv6 sources. One subscriber
	// typically holds a whole /64 and can pick any address in it, so
	// limiting per /128 would limit nothing.
	IPv6PrefixBits = 64

	// CollectPerCall bounds how many stale entries one Allow removes, so the
	// garbage collection is spread over calls (amortised O(1)) instead of a
	// pause after a quiet period.
	CollectPerCall = 8
)
