package handshake

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"

	"github.com/flynn/noise"
	"golang.org/x/crypto/curve25519"
)

// cipherSuite is SUDP's only suite: X25519, AES-256-GCM, SHA-256, giving the
// protocol name Noise_IKpsk2_25519_AESGCM_SHA256. AES-GCM is what the data
// path uses too, and is hardware-accelerated on every hypervisor host.
var cipherSuite = noise.NewCipherSuite(noise.DH25519, noise.CipherAESGCM, noise.HashSHA256)

// encodedKeyLen is the length of EncodeKey's output: base64 of 32 bytes.
const encodedKeyLen = 44

// GenerateKeypair returns a new X25519 static key pair drawn from rng, or from
// crypto/rand if rng is nil.
func GenerateKeypair(rng io.Reader) (noise.DHKey, error) {
	if rng == nil {
		rng = rand.Reader
	}
	k, err := cipherSuite.GenerateKeypair(rng)
	if err != nil {
		return noise.DHKey{}, fmt.Errorf("handshake: generate key pair: %w", err)
	}
	return k, nil
}

// EncodeKey returns the 44-character standard base64 form of a key, the form
// used in configuration files (as WireGuard's).
func EncodeKey(k [32]byte) string {
	return base64.StdEncoding.EncodeToString(k[:])
}

// ParseKey parses EncodeKey's output. It accepts only the canonical form (so a
// key has exactly one spelling, and two configurations naming one key compare
// equal as strings), and refuses the all-zero key, which is never a valid
// public key, private key or psk.
func ParseKey(s string) ([32]byte, error) {
	var k [32]byte
	if len(s) != encodedKeyLen {
		return k, fmt.Errorf("handshake: key must be %d base64 characters, got %d", encodedKeyLen, len(s))
	}
	// 44 characters can decode to 33 bytes when unpadded: leave room, and
	// wipe the buffer, which may hold a private key.
	var buf [encodedKeyLen / 4 * 3]byte
	defer clear(buf[:])
	n, err := base64.StdEncoding.Strict().Decode(buf[:], []byte(s))
	if err != nil {
		return k, fmt.Errorf("handshake: key is not canonical base64: %w", err)
	}
	if n != len(k) {
		return k, fmt.Errorf("handshake: key decodes to %d bytes, want %d", n, len(k))
	}
	copy(k[:], buf[:n])
	if isZero(k[:]) {
		return k, errors.New("handshake: key is all zero")
	}
	return k, nil
}

// checkStatic verifies a static key pair is well-formed and consistent, so a
// configuration mistake shows up at start-up rather than as handshakes that
// fail for no visible reason.
func checkStatic(k noise.DHKey) error {
	if len(k.Private) != DHLen || len(k.Public) != DHLen {
		return fmt.Errorf("%w: static key pair must be %d-byte X25519 keys", ErrInvalidArgument, DHLen)
	}
	pub, err := curve25519.X25519(k.Private, curve25519.Basepoint)
	if err != nil {
		return fmt.Errorf("%w: static private key: %v", ErrInvalidArgument, err)
	}
	if subtle.ConstantTimeCompare(pub, k.Public) != 1 {
		return fmt.Errorf("%w: static public key does not match the private key", ErrInvalidArgument)
	}
	return nil
}

// cloneKey copies a key pair so the caller's later changes cannot reach us.
func cloneKey(k noise.DHKey) noise.DHKey {
	return noise.DHKey{Private: bytes.Clone(k.Private), Public: bytes.Clone(k.Public)}
}

func isZero(b []byte) bool {
	var acc byte
	for _, x := range b {
		acc |= x
	}
	return acc == 0
}

// KeypairFromPrivate rebuilds a static key pair from its private half (as
// stored in a key file). The caller keeps ownership of priv and may wipe it.
func KeypairFromPrivate(priv [32]byte) (noise.DHKey, error) {
	if isZero(priv[:]) {
		return noise.DHKey{}, fmt.Errorf("%w: all-zero private key", ErrInvalidArgument)
	}
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return noise.DHKey{}, fmt.Errorf("%w: private key: %v", ErrInvalidArgument, err)
	}
	return noise.DHKey{Private: bytes.Clone(priv[:]), Public: pub}, nil
}
