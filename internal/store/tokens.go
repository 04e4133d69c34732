package store

import (
	"crypto/subtle"
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

// TokenCreate stores a new token on condition that its id is not on
// record.
type TokenCreate struct {
	Token Token `json:"token"`
}

// TokenUse consumes one use of a token on condition that it exists, the
// presented secret hashes to the stored hash (SecretHash: the hash, so
// the command never carries the secret), it has not expired at At and
// has a use left — checked and consumed in one transaction, so two
// agents racing with a single-use token cannot both get in.
type TokenUse struct {
	ID         string    `json:"id"`
	SecretHash [32]byte  `json:"secret_hash"`
	At         time.Time `json:"at"`
}

func init() {
	register(func() Command { return &TokenCreate{} })
	register(func() Command { return &TokenUse{} })
}

// Kind implements Command.
func (*TokenCreate) Kind() CommandKind { return "token.create" }
func (*TokenUse) Kind() CommandKind    { return "token.use" }

func (c *TokenCreate) apply(tx *bolt.Tx) (any, error) {
	if tx.Bucket(bucketTokens).Get([]byte(c.Token.ID)) != nil {
		return nil, fmt.Errorf("%w: token %s", ErrExists, c.Token.ID)
	}
	return c.Token, put(tx, bucketTokens, c.Token.ID, c.Token)
}

func (c *TokenUse) apply(tx *bolt.Tx) (any, error) {
	t, err := get[Token](tx, bucketTokens, c.ID)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("token %s: %w", c.ID, ErrTokenInvalid)
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(t.Hash[:], c.SecretHash[:]) != 1 {
		return nil, fmt.Errorf("token %s: %w", c.ID, ErrTokenInvalid)
	}
	if !c.At.Before(t.Expires) {
		return nil, fmt.Errorf("token %s: %w", c.ID, ErrTokenExpired)
	}
	if t.UsesLeft <= 0 {
		return nil, fmt.Errorf("token %s: %w", c.ID, ErrTokenUsedUp)
	}
	t.UsesLeft--
	t.Used++
	return t, put(tx, bucketTokens, t.ID, t)
}

// PutToken applies TokenCreate.
func (s *Store) PutToken(t Token) error {
	_, err := s.Apply(&TokenCreate{Token: t})
	return err
}

// Tokens lists the tokens (hashes only).
func (s *Store) Tokens() ([]Token, error) { return list[Token](s, bucketTokens) }

// UseToken applies TokenUse for a presented secret.
func (s *Store) UseToken(id string, secret []byte, now time.Time) (Token, error) {
	return applyAs[Token](s, &TokenUse{ID: id, SecretHash: identity.TokenHash(secret), At: now})
}
