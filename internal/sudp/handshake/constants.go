package handshake

import "time"

// Protocol identity. Both go into the Noise prologue, so two builds that
// disagree on either cannot complete a handshake even if every field parses.
const (
	// Version is the wire version of the handshake messages, carried in
	// their second byte and bound in the prologue.
	Version = 0x01
	// PrologueLabel starts the Noise prologue.
	PrologueLabel = "ferry-sudp"
	// MaxClusterIDLen is the longest cluster id the prologue can encode
	// (its length is a uint16).
	MaxClusterIDLen = 1<<16 - 1
)

// Message types: the first byte of a handshake datagram. They share the type
// space of SUDP datagrams with data packets (type 0x04, package wire).
const (
	TypeInitiation  = 0x01
	TypeResponse    = 0x02
	TypeCookieReply = 0x03
)

// Sizes of the primitives, as named by the Noise specification (DHLEN,
// HASHLEN) and WireGuard's protocol description (mac and cookie lengths).
const (
	DHLen          = 32 // X25519 public key, and every key of this package
	HashLen        = 32 // SHA-256
	TagLen         = 16 // AES-GCM and Poly1305 tags
	MACLen         = 16 // mac1 and mac2 are truncated HMAC-SHA256
	CookieLen      = 16 // a cookie is a truncated HMAC-SHA256
	CookieNonceLen = 24 // XChaCha20-Poly1305 nonce
	CIDLen         = 8  // connection ids are uint64
	TimestampLen   = 12 // uint64 seconds || uint32 nanoseconds (TAI64N-like)
	RespPayloadLen = 12 // int64 unix nanoseconds || login state || 3 reserved
	headerLen      = 4  // type || version || reserved(2)
	reservedOffset = 2

	// respPayloadReservedOffset is where the 3 reserved bytes start inside
	// the response payload.
	respPayloadReservedOffset = 9
)

// Noise IKpsk2 message sizes: message 1 is e, s (encrypted), payload;
// message 2 is e, payload. The psk token adds no bytes.
const (
	noiseInitiationLen = DHLen + (DHLen + TagLen) + (TimestampLen + TagLen) // 108
	noiseResponseLen   = DHLen + (RespPayloadLen + TagLen)                  // 60
)

// Initiation layout (152 bytes):
//
//	type(1)=0x01 | version(1) | reserved(2)=0 | sender_cid(8) |
//	noise msg1 (108) | mac1(16) | mac2(16)
const (
	initSenderOffset = headerLen
	initNoiseOffset  = initSenderOffset + CIDLen
	initMAC1Offset   = initNoiseOffset + noiseInitiationLen
	initMAC2Offset   = initMAC1Offset + MACLen
	// InitiationSize is the only valid length of an initiation.
	InitiationSize = initMAC2Offset + MACLen
)

// Response layout (112 bytes):
//
//	type(1)=0x02 | version(1) | reserved(2)=0 | sender_cid(8) (responder's) |
//	receiver_cid(8) (initiator's) | noise msg2 (60) | mac1(16) | mac2(16)
const (
	respSenderOffset   = headerLen
	respReceiverOffset = respSenderOffset + CIDLen
	respNoiseOffset    = respReceiverOffset + CIDLen
	respMAC1Offset     = respNoiseOffset + noiseResponseLen
	respMAC2Offset     = respMAC1Offset + MACLen
	// ResponseSize is the only valid length of a response.
	ResponseSize = respMAC2Offset + MACLen
)

// Cookie reply layout (68 bytes):
//
//	type(1)=0x03 | version(1) | reserved(2)=0 | receiver_cid(8) |
//	nonce(24) | encrypted cookie (16 + 16 tag)
const (
	cookieReceiverOffset = headerLen
	cookieNonceOffset    = cookieReceiverOffset + CIDLen
	cookieBoxOffset      = cookieNonceOffset + CookieNonceLen
	// CookieReplySize is the only valid length of a cookie reply.
	CookieReplySize = cookieBoxOffset + CookieLen + TagLen
)

// Labels of the key derivations, as in WireGuard: the mac1 key and the
// cookie-encryption key are hashes of the receiver's static public key with
// these 8-byte labels.
const (
	LabelMAC1   = "mac1----"
	LabelCookie = "cookie--"
)

// Timers.
const (
	// CookieSecretLifetime is how often the responder replaces the secret
	// its cookies are computed from. It keeps the previous secret too, so a
	// cookie stays valid for at least this long after it was issued.
	CookieSecretLifetime = 2 * time.Minute
	// CookieLifetime is how long an initiator uses a received cookie.
	CookieLifetime = 120 * time.Second
	// CookieLifetimeMargin is taken off CookieLifetime so that a cookie is
	// dropped before the responder could have rotated its secret twice,
	// allowing for the two clocks running at slightly different rates and
	// for the time the packets spend in flight.
	CookieLifetimeMargin = 10 * time.Second

	// LoadWindow is the period over which the responder measures its
	// initiation rate to decide whether it is under load.
	LoadWindow = time.Second
	// DefaultLoadThreshold is the initiation rate (per LoadWindow) above
	// which a responder demands cookies from everyone.
	DefaultLoadThreshold = 1000
)

// Amplification bound: before the initiator's address is proven, the
// responder must never send more than this many times the bytes it received.
// Both possible answers to an initiation are smaller than the initiation, so
// the factor is in fact below 1.
const AmplificationFactor = 3

// Compile-time checks: the sizes are the specified ones, and every answer to
// an initiation stays within the amplification bound.
var (
	_ = [1]struct{}{}[InitiationSize-152]
	_ = [1]struct{}{}[ResponseSize-112]
	_ = [1]struct{}{}[CookieReplySize-68]

	_ [AmplificationFactor*InitiationSize - ResponseSize]struct{}
	_ [AmplificationFactor*InitiationSize - CookieReplySize]struct{}
)
