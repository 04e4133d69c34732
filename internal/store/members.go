package store

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/identity"
)

// The MMC cluster's members as the replicated store knows them: what raft's
// configuration does not hold (a member's static key, its admin URL) and
// what every member needs to authenticate the others and to send agents
// to the leader. Raft's configuration stays the authority on who votes;
// these records follow it (a member is recorded before it is added to the
// configuration and forgotten after it is removed).

var bucketMembers = []byte("members")

// Member is one MMC of the cluster.
type Member struct {
	ID    string    `json:"id"`    // raft id: the MMC's node id
	Addr  string    `json:"addr"`  // SUDP address (raft and agents)
	Key   [32]byte  `json:"key"`   // static public key
	Admin string    `json:"admin"` // admin API URL
	Added time.Time `json:"added"`
}

// MemberSet records a member (or updates its address and admin URL) on
// condition that no other member holds its key or address.
type MemberSet struct {
	Member Member `json:"member"`
}

// MemberRemove forgets a member (no error if it is not on record).
type MemberRemove struct {
	ID string `json:"id"`
}

// LeaderTerm is a new leader taking office: the fencing term its orders
// to agents carry becomes one more than any term before it. The term is
// kept in the store rather than taken from raft's, so that it never goes
// back: raft's term restarts when a cluster is rebuilt from a snapshot,
// the store's content (and this counter) does not.
type LeaderTerm struct {
	ID       string    `json:"id"`        // the new leader's raft id
	RaftTerm uint64    `json:"raft_term"` // for the record
	At       time.Time `json:"at"`
}

func init() {
	register(func() Command { return &MemberSet{} })
	register(func() Command { return &MemberRemove{} })
	register(func() Command { return &LeaderTerm{} })
}

// Kind implements Command.
func (*MemberSet) Kind() CommandKind    { return "member.set" }
func (*MemberRemove) Kind() CommandKind { return "member.remove" }
func (*LeaderTerm) Kind() CommandKind   { return "cluster.leader-term" }

// ErrMemberConflict is a member whose key or address another member holds.
var ErrMemberConflict = errors.New("store: another member has this key or address")

func (c *MemberSet) apply(tx *bolt.Tx) (any, error) {
	m := c.Member
	if m.ID == "" || m.Addr == "" {
		return nil, errors.New("member needs an id and an address")
	}
	b, err := tx.CreateBucketIfNotExists(bucketMembers)
	if err != nil {
		return nil, err
	}
	var conflict error
	err = b.ForEach(func(k, raw []byte) error {
		if string(k) == m.ID {
			return nil
		}
		o, err := get[Member](tx, bucketMembers, string(k))
		if err != nil {
			return err
		}
		if o.Key == m.Key || o.Addr == m.Addr {
			conflict = fmt.Errorf("%w: %s", ErrMemberConflict, o.ID)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if conflict != nil {
		return nil, conflict
	}
	if old, err := get[Member](tx, bucketMembers, m.ID); err == nil {
		m.Added = old.Added
	}
	return m, put(tx, bucketMembers, m.ID, m)
}

func (c *MemberRemove) apply(tx *bolt.Tx) (any, error) {
	b := tx.Bucket(bucketMembers)
	if b == nil {
		return nil, nil
	}
	return nil, b.Delete([]byte(c.ID))
}

const fenceTermKey = "cluster.fence-term"

func (c *LeaderTerm) apply(tx *bolt.Tx) (any, error) {
	t, err := fenceTerm(tx)
	if err != nil {
		return nil, err
	}
	t++
	return t, tx.Bucket(bucketMeta).Put([]byte(fenceTermKey), strconv.AppendUint(nil, t, 10))
}

func fenceTerm(tx *bolt.Tx) (uint64, error) {
	v := tx.Bucket(bucketMeta).Get([]byte(fenceTermKey))
	if v == nil {
		return 0, nil
	}
	t, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", fenceTermKey, err)
	}
	return t, nil
}

// SetMember applies MemberSet.
func (s *Store) SetMember(m Member) (Member, error) { return applyAs[Member](s, &MemberSet{Member: m}) }

// RemoveMember applies MemberRemove.
func (s *Store) RemoveMember(id string) error {
	_, err := s.Apply(&MemberRemove{ID: id})
	return err
}

// TakeLeaderTerm applies LeaderTerm and returns the new fencing term.
func (s *Store) TakeLeaderTerm(id string, raftTerm uint64, at time.Time) (uint64, error) {
	return applyAs[uint64](s, &LeaderTerm{ID: id, RaftTerm: raftTerm, At: at})
}

// FenceTerm is the latest fencing term taken (0: none yet).
func (s *Store) FenceTerm() (uint64, error) {
	var t uint64
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		t, err = fenceTerm(tx)
		return err
	})
	return t, err
}

// Members lists the cluster's members on record.
func (s *Store) Members() ([]Member, error) {
	var out []Member
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMembers)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error {
			m, err := get[Member](tx, bucketMembers, string(k))
			if err != nil {
				return err
			}
			out = append(out, m)
			return nil
		})
	})
	return out, err
}

// MemberJoin admits a new member with a join token in one transaction:
// the token's use (TokenUse, purpose PurposeMMC) and the member's record
// (MemberSet) both happen or neither does. A join retried after its
// leader was lost while committing it finds the member on record with
// this key and the token spent by it: it succeeds again without
// spending anything (a spent token with no such member stays refused).
type MemberJoin struct {
	Token  TokenUse `json:"token"`
	Member Member   `json:"member"`
}

func init() { register(func() Command { return &MemberJoin{} }) }

// Kind implements Command.
func (*MemberJoin) Kind() CommandKind { return "member.join" }

func (c *MemberJoin) apply(tx *bolt.Tx) (any, error) {
	if c.Token.Purpose != PurposeMMC {
		return nil, fmt.Errorf("token %s: %w", c.Token.ID, ErrTokenInvalid)
	}
	if b := tx.Bucket(bucketMembers); b != nil {
		if old, err := get[Member](tx, bucketMembers, c.Member.ID); err == nil && old.Key == c.Member.Key && old.Addr == c.Member.Addr {
			t, err := get[Token](tx, bucketTokens, c.Token.ID)
			if err == nil && subtle.ConstantTimeCompare(t.Hash[:], c.Token.SecretHash[:]) == 1 && t.Purpose == PurposeMMC && t.UsesLeft == 0 {
				return old, nil
			}
		}
	}
	if _, err := c.Token.apply(tx); err != nil {
		return nil, err
	}
	return (&MemberSet{Member: c.Member}).apply(tx)
}

// JoinMember applies MemberJoin for a presented token secret.
func (s *Store) JoinMember(tokenID string, secret []byte, m Member) (Member, error) {
	return applyAs[Member](s, &MemberJoin{Token: TokenUse{ID: tokenID, SecretHash: identity.TokenHash(secret), At: m.Added, Purpose: PurposeMMC}, Member: m})
}
