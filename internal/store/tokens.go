package store

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/identity"
)

// Token is a join token's record: only the hash of its secret is stored.
type Token struct {
	ID        string    `json:"id"`
	Hash      [32]byte  `json:"hash"`
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	UsesLeft  int       `json:"uses_left"`
	Used      int       `json:"used"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// Token errors, distinguished for the audit log; callers must not tell the
// presenter which one applied.
var (
	ErrTokenExpired = errors.New("store: join token expired")
	ErrTokenUsedUp  = errors.New("store: join token used up")
	ErrTokenInvalid = errors.New("store: join token invalid")
)

// PutToken stores a new token.
func (s *Store) PutToken(t Token) error {
	return s.db.Update(func(tx *bolt.Tx) error { return put(tx, bucketTokens, t.ID, t) })
}

// Tokens lists the tokens (hashes only).
func (s *Store) Tokens() ([]Token, error) { return list[Token](s, bucketTokens) }

// UseToken checks a presented token and, if it is valid, consumes one use,
// in one transaction: two agents racing with a single-use token cannot both
// get in.
func (s *Store) UseToken(id string, secret []byte, now time.Time) (Token, error) {
	var t Token
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		t, err = get[Token](tx, bucketTokens, id)
		if errors.Is(err, ErrNotFound) {
			return ErrTokenInvalid
		}
		if err != nil {
			return err
		}
		if !identity.TokenMatches(t.Hash, secret) {
			return ErrTokenInvalid
		}
		if !now.Before(t.Expires) {
			return ErrTokenExpired
		}
		if t.UsesLeft <= 0 {
			return ErrTokenUsedUp
		}
		t.UsesLeft--
		t.Used++
		return put(tx, bucketTokens, id, t)
	})
	if err != nil {
		return t, fmt.Errorf("token %s: %w", id, err)
	}
	return t, nil
}
