package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// KeyFile is the name of a node's private key inside its data directory.
const KeyFile = "node.key"

// LoadOrCreateKey returns the static key pair kept in dir/node.key,
// creating dir (0700) and the key (0600) on first use. A key file readable
// by group or others is refused rather than used: a private key that may
// have leaked must be replaced by the operator, not silently trusted.
func LoadOrCreateKey(dir string, rng io.Reader) (noise.DHKey, error) {
	return LoadOrCreateKeyFile(filepath.Join(dir, KeyFile), rng)
}

// LoadOrCreateKeyFile is LoadOrCreateKey for a key kept at path, wherever
// that is (its directory is created 0700 if missing).
func LoadOrCreateKeyFile(path string, rng io.Reader) (noise.DHKey, error) {
	k, err := loadKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return noise.DHKey{}, fmt.Errorf("identity: create the key's directory: %w", err)
	}
	k, err = handshake.GenerateKeypair(rng)
	if err != nil {
		return noise.DHKey{}, err
	}
	var priv [32]byte
	copy(priv[:], k.Private)
	defer clear(priv[:])
	if err := WriteSecretFile(path, []byte(handshake.EncodeKey(priv)+"\n")); err != nil {
		return noise.DHKey{}, err
	}
	return k, nil
}

func loadKey(path string) (noise.DHKey, error) {
	b, err := ReadSecretFile(path)
	if err != nil {
		return noise.DHKey{}, err
	}
	defer clear(b)
	priv, err := handshake.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return noise.DHKey{}, fmt.Errorf("identity: %s: %w", path, err)
	}
	defer clear(priv[:])
	return handshake.KeypairFromPrivate(priv)
}

// ReadSecretFile reads a file that must not be accessible to group or
// others.
func ReadSecretFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity: %s has mode %v; secrets must be 0600 (chmod 600 it if it was never exposed, or delete it to start afresh)", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return b, nil
}

// WriteSecretFile writes data to path with mode 0600, atomically: a crash
// leaves either the old file or the new one, never a torn secret.
func WriteSecretFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	// Make the rename itself durable: an agent acknowledges its
	// registration code right after saving it, and the MMC then forgets
	// the code — a crash must not lose the file.
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("identity: sync %s: %w", filepath.Dir(path), err)
	}
	return nil
}

// NodeID names a node by its public key: "ag-" or "mmc-" style prefixes are
// the caller's; this is the first 8 bytes of SHA-256 of the key, in hex.
// It is stable across address changes and re-enrolments with the same key.
func NodeID(pub [32]byte) string {
	h := sha256.Sum256(pub[:])
	return hex.EncodeToString(h[:8])
}
