package identity

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// Bundle is what an agent needs to find and trust the MMCs: their SUDP
// addresses and static public keys, and the cluster id that every
// handshake's prologue binds. An administrator hands it to agents out of
// band (a file, or the one-line string); agents never learn MMC keys from
// the network, so a forged MMC is refused at the first handshake.
type Bundle struct {
	ClusterID string   `json:"cluster"`
	MMCs      []MMCRef `json:"mmcs"`
}

// MMCRef names one MMC.
type MMCRef struct {
	Addr string `json:"addr"` // host:port of its SUDP listener
	Key  string `json:"key"`  // its static public key, base64 (handshake.EncodeKey)
}

const bundlePrefix = "ferry-bundle-v1:"

// Encode returns the one-line form: a prefix and base64url of the JSON.
func (b Bundle) Encode() string {
	j, _ := json.Marshal(b)
	return bundlePrefix + base64.RawURLEncoding.EncodeToString(j)
}

// ParseBundle reads Encode's output (surrounding space is ignored) and
// checks every field.
func ParseBundle(s string) (Bundle, error) {
	var b Bundle
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), bundlePrefix)
	if !ok {
		return b, fmt.Errorf("identity: not a bootstrap bundle (want the %q line printed by 'ferry mmc bundle')", bundlePrefix)
	}
	if len(rest) > 64<<10 {
		return b, errors.New("identity: bundle too long")
	}
	j, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return b, fmt.Errorf("identity: bundle: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(j)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, fmt.Errorf("identity: bundle: %w", err)
	}
	if b.ClusterID == "" || len(b.MMCs) == 0 {
		return b, errors.New("identity: bundle names no cluster or no MMC")
	}
	for _, m := range b.MMCs {
		if m.Addr == "" {
			return b, errors.New("identity: bundle: MMC without an address")
		}
		if _, err := handshake.ParseKey(m.Key); err != nil {
			return b, fmt.Errorf("identity: bundle: MMC %s: %w", m.Addr, err)
		}
	}
	return b, nil
}

// Keys returns the MMCs' public keys.
func (b Bundle) Keys() ([][32]byte, error) {
	out := make([][32]byte, 0, len(b.MMCs))
	for _, m := range b.MMCs {
		k, err := handshake.ParseKey(m.Key)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}
