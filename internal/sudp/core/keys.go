package core

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Labels of the traffic key schedule (docs/protocol.md §6). Each direction of
// a session starts from the 32-byte secret the Noise split produced for it;
// every key update derives the next secret from the current one, so old keys
// cannot be recovered from new ones.
const (
	labelKey       = "ferry sudp key"
	labelIV        = "ferry sudp iv"
	labelKeyUpdate = "ferry sudp ku"
)

// keySet is one generation of one direction's packet protection:
// AES-256-GCM with a 96-bit nonce = iv XOR packet number (as TLS 1.3/QUIC),
// which is unique because packet numbers never repeat within a session.
type keySet struct {
	gen    uint64
	secret [32]byte
	iv     [12]byte
	aead   cipher.AEAD
	nonce  [12]byte // scratch, avoids a heap allocation per packet
	// firstPN is the lowest packet number seen (receive) or sent (send) in
	// this generation; it tells a reordered old-generation packet from a
	// new-generation one when the phase bit wraps.
	firstPN uint64
	used    bool
}

func newKeySet(secret [32]byte, gen uint64) (*keySet, error) {
	key, err := hkdf.Expand(sha256.New, secret[:], labelKey, 32)
	if err != nil {
		return nil, fmt.Errorf("sudp: derive key: %w", err)
	}
	defer clear(key)
	iv, err := hkdf.Expand(sha256.New, secret[:], labelIV, 12)
	if err != nil {
		return nil, fmt.Errorf("sudp: derive iv: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	k := &keySet{gen: gen, secret: secret, aead: aead}
	copy(k.iv[:], iv)
	return k, nil
}

// next derives the following generation.
func (k *keySet) next() (*keySet, error) {
	s, err := hkdf.Expand(sha256.New, k.secret[:], labelKeyUpdate, 32)
	if err != nil {
		return nil, err
	}
	var secret [32]byte
	copy(secret[:], s)
	clear(s)
	n, err := newKeySet(secret, k.gen+1)
	clear(secret[:])
	return n, err
}

func (k *keySet) phase() bool { return k.gen&1 == 1 }

func (k *keySet) makeNonce(pn uint64) []byte {
	k.nonce = k.iv
	var p [8]byte
	binary.BigEndian.PutUint64(p[:], pn)
	for i := 0; i < 8; i++ {
		k.nonce[4+i] ^= p[i]
	}
	return k.nonce[:]
}

// seal encrypts b[hdrLen:] in place, using b[:hdrLen] as associated data, and
// returns the whole packet with the tag appended.
func (k *keySet) seal(b []byte, hdrLen int, pn uint64) []byte {
	out := k.aead.Seal(b[hdrLen:hdrLen], k.makeNonce(pn), b[hdrLen:], b[:hdrLen])
	return b[:hdrLen+len(out)]
}

// open decrypts pkt[hdrLen:] in place and returns the plaintext.
func (k *keySet) open(pkt []byte, hdrLen int, pn uint64) ([]byte, error) {
	return k.aead.Open(pkt[hdrLen:hdrLen], k.makeNonce(pn), pkt[hdrLen:], pkt[:hdrLen])
}

// zero wipes what Go lets us wipe. The AES key schedule inside crypto/aes is
// not reachable; dropping the last reference is the best available.
func (k *keySet) zero() {
	if k == nil {
		return
	}
	clear(k.secret[:])
	clear(k.iv[:])
	k.aead = nil
}
