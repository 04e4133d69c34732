package store

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/identity"
)

// AgentState is where an agent is in its life cycle.
type AgentState string

// Agent states. Only approved agents may log in; rejected and revoked keys
// are refused at the handshake and stay on record for the audit trail.
const (
	StatePending  AgentState = "pending"
	StateApproved AgentState = "approved"
	StateRejected AgentState = "rejected"
	StateRevoked  AgentState = "revoked"
)

// Agent is the MMC's record of one agent.
//
// It holds the agent's public key and the psk K and re-authentication key
// derived from the registration code M — what the MMC needs to run the
// handshake and check challenge answers — but not M itself, and never the
// agent's private key. A copy of this record therefore does not let anyone
// log in as the agent: the Noise IK handshake also proves possession of the
// agent's static private key, which only the agent holds.
//
// Name is the host name the agent asked for at enrolment; it never
// changes. Among approved agents it is unique (AgentDecide refuses an
// approval that would make two): the MMC routes a host's VMs and
// migrations by this name, so a second holder could receive them.
type Agent struct {
	ID        string     `json:"id"`
	PublicKey [32]byte   `json:"public_key"`
	Name      string     `json:"name"`
	Site      string     `json:"site"`
	State     AgentState `json:"state"`
	// Facts are the host facts recorded at enrolment (never changed
	// after: the psk is derived from them); LastFacts those of the latest
	// login (they differ in volatile facts such as the IP).
	Facts     identity.Facts `json:"facts"`
	LastFacts identity.Facts `json:"last_facts"`
	// AgentIDDigest is the paper's Agent_Id = M | IP | MAC | disk-id, kept
	// as SHA-256 so the record names the enrolment without holding M.
	AgentIDDigest [32]byte `json:"agent_id_digest,omitempty"`
	PSK           [32]byte `json:"psk,omitempty"`
	ReauthKey     [32]byte `json:"reauth_key,omitempty"`
	// PendingCode holds M from approval until the agent confirms it stored
	// it (so an agent that lost the connection can fetch it again); it is
	// wiped at that confirmation.
	PendingCode []byte `json:"pending_code,omitempty"`

	EnrolledAt time.Time `json:"enrolled_at"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	DecidedBy  string    `json:"decided_by,omitempty"` // "admin", "token:<id>"
	LastSeen   time.Time `json:"last_seen,omitzero"`
	// LastHandshake is the newest handshake timestamp accepted from this
	// key: after an MMC restart, initiations not newer are replays.
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	LastAddr      string    `json:"last_addr,omitempty"`
	EnrolAddr     string    `json:"enrol_addr,omitempty"`
	// Refusal says why the latest approval of this agent was refused
	// (its host name is held by another agent), for the administrator;
	// RefusedAt is when. An approval clears both.
	Refusal   string    `json:"refusal,omitempty"`
	RefusedAt time.Time `json:"refused_at,omitzero"`
	// Version is the agent's release and Protocol its control protocol,
	// as its latest login said.
	Version  string `json:"version,omitempty"`
	Protocol uint16 `json:"protocol,omitempty"`
}

// ErrExists is returned by CreateAgent for an id already on record.
var ErrExists = errors.New("store: already exists")

// ErrNameTaken is an approval refused because another approved agent
// holds the host name. The refusal is recorded on the agent (Refusal).
var ErrNameTaken = fmt.Errorf("%w: host name taken", ErrConflict)

// Agent commands. Each one is what one of the MMC's agent flows writes;
// the conditions each checks are those the flow needs to hold at the
// moment of the write, not at the moment the MMC read the record.

// AgentCreate stores a new agent record on condition that its id is not
// on record (two enrolments of one key racing: the first wins).
type AgentCreate struct {
	Agent Agent `json:"agent"`
}

// AgentLogin records a login on condition that the agent is still
// approved: the facts it presented, when and from where, and its
// handshake time (kept only if newer than the stored one).
type AgentLogin struct {
	ID          string         `json:"id"`
	Facts       identity.Facts `json:"facts"`
	At          time.Time      `json:"at"`
	Addr        string         `json:"addr"`
	HandshakeAt time.Time      `json:"handshake_at"`
	Version     string         `json:"version,omitempty"`
	Protocol    uint16         `json:"protocol,omitempty"`
}

// AgentHandshake raises the agent's newest accepted handshake time to At
// (never lowers it), so that after a restart a recording of that
// handshake is still a replay.
type AgentHandshake struct {
	ID string    `json:"id"`
	At time.Time `json:"at"`
}

// AgentDecide records a decision about an agent. Allowed from:
//
//	approve: pending, and no other approved agent holds the agent's
//	         name (else ErrNameTaken, and the refusal is recorded);
//	reject:  pending;
//	revoke:  pending or approved (its keys and pending code are wiped).
//
// Anything else is ErrConflict. An approval carries the credentials the
// MMC derived from a fresh registration code: the command holds them so
// that every replica stores the same ones.
type AgentDecide struct {
	ID          string            `json:"id"`
	To          AgentState        `json:"to"`
	By          string            `json:"by"` // "admin", "token:<id>"
	At          time.Time         `json:"at"`
	Credentials *AgentCredentials `json:"credentials,omitempty"`
}

// AgentCredentials is what an approval stores: the psk K and
// re-authentication key derived from the registration code M, the
// Agent_Id digest, and M itself until the agent confirms it.
type AgentCredentials struct {
	PSK           [32]byte `json:"psk"`
	ReauthKey     [32]byte `json:"reauth_key"`
	AgentIDDigest [32]byte `json:"agent_id_digest"`
	Code          []byte   `json:"code"`
}

// AgentCodeConfirmed wipes the agent's pending registration code on
// condition that it is the code whose SHA-256 is CodeHash: a stale
// session confirming an older approval's code must not wipe a newer one.
// (The hash, not the code: the command need not carry the secret.)
type AgentCodeConfirmed struct {
	ID       string   `json:"id"`
	CodeHash [32]byte `json:"code_hash"`
}

func init() {
	register(func() Command { return &AgentCreate{} })
	register(func() Command { return &AgentLogin{} })
	register(func() Command { return &AgentHandshake{} })
	register(func() Command { return &AgentDecide{} })
	register(func() Command { return &AgentCodeConfirmed{} })
	register(func() Command { return &AgentExpire{} })
}

// Kind implements Command.
func (*AgentCreate) Kind() CommandKind        { return "agent.create" }
func (*AgentLogin) Kind() CommandKind         { return "agent.login" }
func (*AgentHandshake) Kind() CommandKind     { return "agent.handshake" }
func (*AgentDecide) Kind() CommandKind        { return "agent.decide" }
func (*AgentCodeConfirmed) Kind() CommandKind { return "agent.code-confirmed" }
func (*AgentExpire) Kind() CommandKind        { return "agent.expire" }

func (c *AgentCreate) apply(tx *bolt.Tx) (any, error) {
	if c.Agent.ID == "" {
		return nil, fmt.Errorf("%w: agent without an id", ErrConflict)
	}
	if tx.Bucket(bucketAgents).Get([]byte(c.Agent.ID)) != nil {
		return nil, fmt.Errorf("%w: agent %s", ErrExists, c.Agent.ID)
	}
	return c.Agent, put(tx, bucketAgents, c.Agent.ID, c.Agent)
}

func (c *AgentLogin) apply(tx *bolt.Tx) (any, error) {
	a, err := get[Agent](tx, bucketAgents, c.ID)
	if err != nil {
		return nil, err
	}
	if a.State != StateApproved {
		return nil, fmt.Errorf("%w: agent %s is %s, not approved", ErrConflict, a.ID, a.State)
	}
	a.LastFacts, a.LastSeen, a.LastAddr = c.Facts, c.At, c.Addr
	a.Version, a.Protocol = c.Version, c.Protocol
	if c.HandshakeAt.After(a.LastHandshake) {
		a.LastHandshake = c.HandshakeAt
	}
	return a, put(tx, bucketAgents, a.ID, a)
}

func (c *AgentHandshake) apply(tx *bolt.Tx) (any, error) {
	a, err := get[Agent](tx, bucketAgents, c.ID)
	if err != nil {
		return nil, err
	}
	if !c.At.After(a.LastHandshake) {
		return a, nil
	}
	a.LastHandshake = c.At
	return a, put(tx, bucketAgents, a.ID, a)
}

func (c *AgentDecide) apply(tx *bolt.Tx) (any, error) {
	a, err := get[Agent](tx, bucketAgents, c.ID)
	if err != nil {
		return nil, err
	}
	switch {
	case c.To == StateApproved && a.State == StatePending:
		cr := c.Credentials
		if cr == nil || len(cr.Code) != identity.CodeLen {
			return nil, fmt.Errorf("%w: approval of %s without credentials", ErrConflict, a.ID)
		}
		if holder, ok, err := nameHolder(tx, a.Name, a.ID); err != nil {
			return nil, err
		} else if ok {
			// Refused, and the refusal is state: the administrator
			// reads why on the agent's record.
			a.Refusal = fmt.Sprintf("host name %q is held by approved agent %s", a.Name, holder)
			a.RefusedAt = c.At
			if err := put(tx, bucketAgents, a.ID, a); err != nil {
				return nil, err
			}
			return a, recorded{fmt.Errorf("%w: %s", ErrNameTaken, a.Refusal)}
		}
		a.PSK, a.ReauthKey, a.AgentIDDigest = cr.PSK, cr.ReauthKey, cr.AgentIDDigest
		a.PendingCode = append([]byte(nil), cr.Code...)
		a.Refusal, a.RefusedAt = "", time.Time{}
	case c.To == StateRejected && a.State == StatePending:
	case c.To == StateRevoked && (a.State == StatePending || a.State == StateApproved):
		clear(a.PSK[:])
		clear(a.ReauthKey[:])
		clear(a.PendingCode)
		a.PendingCode = nil
	default:
		return nil, fmt.Errorf("%w: agent %s is %s", ErrConflict, a.ID, a.State)
	}
	switch {
	case c.To == StateApproved:
		err = holdName(tx, a.Name, a.ID)
	case a.State == StateApproved:
		err = releaseName(tx, a.Name, a.ID)
	}
	if err != nil {
		return nil, err
	}
	a.State, a.DecidedAt, a.DecidedBy = c.To, c.At, c.By
	return a, put(tx, bucketAgents, a.ID, a)
}

func (c *AgentCodeConfirmed) apply(tx *bolt.Tx) (any, error) {
	a, err := get[Agent](tx, bucketAgents, c.ID)
	if err != nil {
		return nil, err
	}
	if len(a.PendingCode) == 0 {
		return a, nil
	}
	h := sha256.Sum256(a.PendingCode)
	if subtle.ConstantTimeCompare(h[:], c.CodeHash[:]) != 1 {
		return a, nil // a newer approval's code: not this one to confirm
	}
	clear(a.PendingCode)
	a.PendingCode = nil
	return a, put(tx, bucketAgents, a.ID, a)
}

// AgentExpire deletes a pending agent record that waited too long for a
// decision, on condition that it is still pending and was enrolled at or
// before EnrolledBefore: an approval or rejection that landed first wins,
// and so does a newer enrolment of the same key. Anyone holding the
// bundle can create pending records, so they must not last for ever: an
// expired key is unknown again and may enrol afresh (the audit log keeps
// the trail). At is when the MMC expired it, for the audit.
type AgentExpire struct {
	ID             string    `json:"id"`
	EnrolledBefore time.Time `json:"enrolled_before"`
	At             time.Time `json:"at"`
}

func (c *AgentExpire) apply(tx *bolt.Tx) (any, error) {
	a, err := get[Agent](tx, bucketAgents, c.ID)
	if err != nil {
		return nil, err
	}
	if a.State != StatePending {
		return nil, fmt.Errorf("%w: agent %s is %s, not pending", ErrConflict, a.ID, a.State)
	}
	if a.EnrolledAt.After(c.EnrolledBefore) {
		return nil, fmt.Errorf("%w: agent %s enrolled at %s, after %s", ErrConflict, a.ID, a.EnrolledAt.Format(time.RFC3339), c.EnrolledBefore.Format(time.RFC3339))
	}
	return a, tx.Bucket(bucketAgents).Delete([]byte(a.ID))
}

// ExpireAgent applies AgentExpire and returns the record it deleted.
func (s *Store) ExpireAgent(c AgentExpire) (Agent, error) { return applyAs[Agent](s, &c) }

// CreateAgent applies AgentCreate.
func (s *Store) CreateAgent(a Agent) error {
	_, err := s.Apply(&AgentCreate{Agent: a})
	return err
}

// AgentLoggedIn applies AgentLogin.
func (s *Store) AgentLoggedIn(c AgentLogin) (Agent, error) { return applyAs[Agent](s, &c) }

// AgentHandshakeSeen applies AgentHandshake.
func (s *Store) AgentHandshakeSeen(id string, at time.Time) (Agent, error) {
	return applyAs[Agent](s, &AgentHandshake{ID: id, At: at})
}

// DecideAgent applies AgentDecide. On ErrNameTaken it returns the agent
// as recorded with its refusal.
func (s *Store) DecideAgent(c AgentDecide) (Agent, error) {
	v, err := s.Apply(&c)
	a, _ := v.(Agent)
	return a, err
}

// ConfirmCode applies AgentCodeConfirmed for the code delivered.
func (s *Store) ConfirmCode(id string, code []byte) (Agent, error) {
	return applyAs[Agent](s, &AgentCodeConfirmed{ID: id, CodeHash: sha256.Sum256(code)})
}

// Agent returns one agent.
func (s *Store) Agent(id string) (Agent, error) {
	var a Agent
	err := s.view(func(tx *bolt.Tx) (err error) {
		a, err = get[Agent](tx, bucketAgents, id)
		return err
	})
	return a, err
}

// Agents returns every agent record.
func (s *Store) Agents() ([]Agent, error) { return list[Agent](s, bucketAgents) }
