// Package handshake establishes SUDP sessions: a Noise IKpsk2 handshake
// (Noise_IKpsk2_25519_AESGCM_SHA256, via github.com/flynn/noise) wrapped in
// WireGuard's denial-of-service defences (mac1, mac2 and cookies). Like the
// rest of the SUDP core it is sans-I/O: the caller passes in packets, the
// time and a source of randomness, and sends whatever comes back.
//
// # Flow
//
//	initiator (agent)                               responder (MMC)
//	Initiation ──── type 1: sender_cid, e, s, {ts}, mac1, mac2 ────▶ HandleInitiation
//	           ◀─── type 3: cookie reply (only when it wants proof of address)
//	Initiation ──── type 1 again, now with mac2 = MAC(cookie, ...) ─▶
//	HandleResponse ◀─ type 2: sender_cid, receiver_cid, e, {ts, login state}, mac1
//
// The initiator knows the responder's static public key beforehand (pattern
// IK); the responder learns the initiator's from message 1, asks its Lookup
// for that peer's shared key K and mixes K in as the psk before writing
// message 2. Each side ends with two traffic secrets (Session.SendKey and
// RecvKey) for the data path, and the handshake hash for channel binding.
//
// The responder processes an initiation cheapest check first and keeps no
// state for one it refuses (see Responder.HandleInitiation). Its only answers
// before the initiator's address is proven are a 112-byte response or a
// 68-byte cookie reply to a 152-byte initiation, so it cannot be used to
// amplify a flood.
//
// # Mapping to the paper's mutual ("complex") C-R, Fig. 4
//
// The paper's MMC and agent each send a random nonce (rs, rc), each answer the
// other's with a keyed hash under K, and the MMC's last message carries its
// time ts and the login state. Here:
//
//   - rc and rs are the initiator's and responder's ephemeral X25519 keys:
//     fresh random values per handshake, like the nonces, but they also give
//     forward secrecy (the session keys come from the ephemeral-ephemeral
//     Diffie-Hellman, not from K alone).
//   - The keyed hash answers are the AEAD tags of the two Noise messages,
//     whose keys depend on both ephemerals, both static keys and (message 2
//     on) K, the psk. They cover the whole transcript, so a man in the middle
//     or a reflected message fails.
//   - The agent proves it is the enrolled host with its static key in
//     message 1; the MMC proves both its static key and K in message 2, which
//     also carries ts and the login state, as in the paper.
//   - The agent proves K by the first data packet it sends, which only
//     decrypts if its psk was right (key confirmation). Until then the
//     responder's Session is unconfirmed; see HandleInitiation.
//   - The paper's increasing identifier becomes the initiator's monotonic
//     timestamp in message 1: the responder refuses one that is not newer than
//     the last it accepted from that key, so a recorded initiation cannot be
//     replayed to open a session (it could not be completed anyway without
//     the ephemeral private key).
//
// # Beyond the paper
//
// The prologue binds the protocol name, version and cluster id, so no message
// of another cluster or version can be accepted. mac1 (HMAC keyed from the
// receiver's public key) lets both sides drop junk with one hash; under load
// the responder demands mac2, keyed with a cookie bound to the source address
// and port, before any Diffie-Hellman; a per-source token bucket (package
// ratelimit) caps the Diffie-Hellman work any one address can cause.
//
// Secrets are wiped where Go lets us reach them (ephemeral private keys,
// split cipher states, copies of K); state kept inside flynn/noise (its
// chaining key) and crypto/aes key schedules is left to the garbage collector.
package handshake
