package identity

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"io"
)

// CodeLen is the length of the registration code M: 256 random bits (the
// issue asks for at least 128).
const CodeLen = 32

// Code is the registration code M the MMC issues when an administrator
// approves an agent. It is sent once, over the encrypted enrolment session,
// and kept by the agent in its data directory (0600).
type Code [CodeLen]byte

// NewCode draws a registration code from rng (crypto/rand in production).
func NewCode(rng io.Reader) (Code, error) {
	var m Code
	if _, err := io.ReadFull(rng, m[:]); err != nil {
		return m, fmt.Errorf("identity: registration code: %w", err)
	}
	return m, nil
}

// HKDF labels. Each derived key has its own label, so no two uses of one
// secret can ever produce the same bytes.
const (
	labelPSK    = "ferry v1 psk K"
	labelReauth = "ferry v1 reauth key"
	labelEnrol  = "ferry v1 enrolment psk"
)

// DerivePSK returns K, the Noise psk of an enrolled agent's sessions:
// HKDF-SHA-256 with M as the secret, the cluster id as salt, and the stable
// facts (MACs, disk id) in the info. The IP is not part of it: NAT and DHCP
// change addresses; the facts that identify the machine do not.
func DerivePSK(m Code, clusterID string, f Facts) [32]byte {
	return derive(m[:], clusterID, append([]byte(labelPSK+"\x00"), f.StableBinding()...))
}

// DeriveReauthKey returns the key of the periodic challenge–response. It is
// separate from K so that the handshake's psk is used for nothing else.
func DeriveReauthKey(m Code, clusterID string) [32]byte {
	return derive(m[:], clusterID, []byte(labelReauth))
}

// EnrolPSK is the psk of enrolment sessions, for keys the MMC does not know
// yet. Anyone holding the bootstrap bundle can derive it: it only admits a
// session restricted to enrolment messages, which the MMC rate-limits and
// an administrator (or a join token) must still approve. What it buys is
// that only holders of the bundle can reach even that far.
func EnrolPSK(clusterID string) [32]byte {
	return derive([]byte(clusterID), "", []byte(labelEnrol))
}

func derive(secret []byte, salt string, info []byte) [32]byte {
	var out [32]byte
	b, err := hkdf.Key(sha256.New, secret, []byte(salt), string(info), len(out))
	if err != nil {
		// Only possible for lengths beyond 255×32 bytes.
		panic("identity: hkdf: " + err.Error())
	}
	copy(out[:], b)
	clear(b)
	return out
}
