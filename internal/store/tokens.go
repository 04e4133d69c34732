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
	// Revoked is when an administrator revoked the token (zero: not
	// revoked); a revoked token approves no enrolment, whatever its
	// expiry and uses left.
	Revoked   time.Time `json:"revoked,omitzero"`
	RevokedBy string    `json:"revoked_by,omitempty"`
	// Purpose is what the token admits: "" an agent's enrolment,
	// PurposeMMC a new member of the MMC cluster. A token is good for
	// its own purpose only.
	Purpose string `json:"purpose,omitempty"`
}

// PurposeMMC is the purpose of a token that admits an MMC to the cluster.
const PurposeMMC = "mmc"

// Token errors, distinguished for the audit log; callers must not tell the
// presenter which one applied.
var (
	ErrTokenExpired = errors.New("store: join token expired")
	ErrTokenUsedUp  = errors.New("store: join token used up")
	ErrTokenInvalid = errors.New("store: join token invalid")
	ErrTokenRevoked = errors.New("store: join token revoked")
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
	Purpose    string    `json:"purpose,omitempty"`
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
	if subtle.ConstantTimeCompare(t.Hash[:], c.SecretHash[:]) != 1 || t.Purpose != c.Purpose {
		return nil, fmt.Errorf("token %s: %w", c.ID, ErrTokenInvalid)
	}
	if !t.Revoked.IsZero() {
		return nil, fmt.Errorf("token %s: %w", c.ID, ErrTokenRevoked)
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

// UseToken applies TokenUse for a presented secret of an agent's join
// token.
func (s *Store) UseToken(id string, secret []byte, now time.Time) (Token, error) {
	return s.UseTokenFor("", id, secret, now)
}

// UseTokenFor applies TokenUse for a presented secret of a token with
// the given purpose.
func (s *Store) UseTokenFor(purpose, id string, secret []byte, now time.Time) (Token, error) {
	return applyAs[Token](s, &TokenUse{ID: id, SecretHash: identity.TokenHash(secret), At: now, Purpose: purpose})
}

// TokenRevoke revokes a token on condition that it exists and is not
// revoked already; its record stays (listed as revoked) so that the audit
// log's references to it keep their meaning.
type TokenRevoke struct {
	ID string    `json:"id"`
	By string    `json:"by"`
	At time.Time `json:"at"`
}

func init() { register(func() Command { return &TokenRevoke{} }) }

// Kind implements Command.
func (*TokenRevoke) Kind() CommandKind { return "token.revoke" }

func (c *TokenRevoke) apply(tx *bolt.Tx) (any, error) {
	t, err := get[Token](tx, bucketTokens, c.ID)
	if err != nil {
		return nil, err
	}
	if !t.Revoked.IsZero() {
		return nil, fmt.Errorf("%w: token %s was revoked at %s", ErrConflict, c.ID, t.Revoked.Format(time.RFC3339))
	}
	t.Revoked, t.RevokedBy = c.At, c.By
	return t, put(tx, bucketTokens, t.ID, t)
}

// RevokeToken applies TokenRevoke and returns the token as revoked.
func (s *Store) RevokeToken(id, by string, at time.Time) (Token, error) {
	return applyAs[Token](s, &TokenRevoke{ID: id, By: by, At: at})
}
