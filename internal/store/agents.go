package store

import (
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
type Agent struct {
	ID        string     `json:"id"`
	PublicKey [32]byte   `json:"public_key"`
	Name      string     `json:"name"`
	Site      string     `json:"site"`
	State     AgentState `json:"state"`
	// Facts are the host facts recorded at enrolment; LastFacts those of
	// the latest login (they differ in volatile facts such as the IP).
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
}

// PutAgent creates or replaces an agent record.
func (s *Store) PutAgent(a Agent) error {
	return s.db.Update(func(tx *bolt.Tx) error { return put(tx, bucketAgents, a.ID, a) })
}

// ErrExists is returned by CreateAgent for an id already on record.
var ErrExists = errors.New("store: already exists")

// CreateAgent stores a new record, failing if the id is taken (two
// enrolments of one key racing: the first wins).
func (s *Store) CreateAgent(a Agent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketAgents).Get([]byte(a.ID)) != nil {
			return fmt.Errorf("%w: agent %s", ErrExists, a.ID)
		}
		return put(tx, bucketAgents, a.ID, a)
	})
}

// Agent returns one agent.
func (s *Store) Agent(id string) (Agent, error) {
	var a Agent
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		a, err = get[Agent](tx, bucketAgents, id)
		return err
	})
	return a, err
}

// Agents returns every agent record.
func (s *Store) Agents() ([]Agent, error) { return list[Agent](s, bucketAgents) }

// UpdateAgent applies fn to the stored record inside one transaction and
// stores the result, so that concurrent decisions cannot interleave.
func (s *Store) UpdateAgent(id string, fn func(*Agent) error) (Agent, error) {
	var a Agent
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		a, err = get[Agent](tx, bucketAgents, id)
		if err != nil {
			return err
		}
		if err := fn(&a); err != nil {
			return err
		}
		if a.ID != id {
			return fmt.Errorf("store: update changed the agent id")
		}
		return put(tx, bucketAgents, id, a)
	})
	return a, err
}
