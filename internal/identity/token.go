package identity

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Join tokens pre-approve enrolment (as kubelet bootstrap tokens or
// Tailscale auth keys). A token reads
//
//	fjt1.<id>.<secret>
//
// with a 64-bit id in hex (the MMC's lookup key, safe to log) and a 256-bit
// secret in unpadded base64url. The MMC stores only SHA-256 of the secret.
const tokenPrefix = "fjt1."

// ErrMalformedToken is returned for a string that is not a join token.
var ErrMalformedToken = errors.New("identity: malformed join token")

// NewToken returns a fresh token string, its id and the hash to store.
func NewToken(rng io.Reader) (token, id string, hash [32]byte, err error) {
	var idb [8]byte
	var secret [32]byte
	defer clear(secret[:])
	if _, err = io.ReadFull(rng, idb[:]); err != nil {
		return "", "", hash, fmt.Errorf("identity: token: %w", err)
	}
	if _, err = io.ReadFull(rng, secret[:]); err != nil {
		return "", "", hash, fmt.Errorf("identity: token: %w", err)
	}
	id = hex.EncodeToString(idb[:])
	token = tokenPrefix + id + "." + base64.RawURLEncoding.EncodeToString(secret[:])
	return token, id, TokenHash(secret[:]), nil
}

// ParseToken splits a token into its id and secret.
func ParseToken(s string) (id string, secret []byte, err error) {
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok || len(s) > 128 {
		return "", nil, ErrMalformedToken
	}
	id, sec, ok := strings.Cut(rest, ".")
	if !ok || len(id) != 16 {
		return "", nil, ErrMalformedToken
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", nil, ErrMalformedToken
	}
	secret, err = base64.RawURLEncoding.Strict().DecodeString(sec)
	if err != nil || len(secret) != 32 {
		return "", nil, ErrMalformedToken
	}
	return id, secret, nil
}

// TokenHash is what the MMC stores for a token secret.
func TokenHash(secret []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("ferry v1 join token\x00"))
	h.Write(secret)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// TokenMatches compares a presented secret with a stored hash in constant
// time.
func TokenMatches(stored [32]byte, secret []byte) bool {
	got := TokenHash(secret)
	return subtle.ConstantTimeCompare(stored[:], got[:]) == 1
}
