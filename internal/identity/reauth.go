package identity

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// NonceLen is the length of a re-authentication challenge's nonce.
const NonceLen = 32

// ReauthMAC is the agent's answer to the MMC's periodic challenge (the
// paper's Fig. 3, with HMAC-SHA-256 in place of MD5): a MAC under the
// re-authentication key over the session's Noise handshake hash, the
// challenge's identifier and its nonce. The handshake hash binds the answer
// to this session, so an answer cannot be replayed into another session,
// and the increasing identifier and fresh nonce stop replays within one.
func ReauthMAC(key [32]byte, handshakeHash [32]byte, seq uint64, nonce [NonceLen]byte) [32]byte {
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte("ferry v1 reauth"))
	m.Write(handshakeHash[:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	m.Write(b[:])
	m.Write(nonce[:])
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

// VerifyReauth checks an answer in constant time.
func VerifyReauth(key [32]byte, handshakeHash [32]byte, seq uint64, nonce [NonceLen]byte, mac []byte) bool {
	want := ReauthMAC(key, handshakeHash, seq, nonce)
	return hmac.Equal(want[:], mac)
}
