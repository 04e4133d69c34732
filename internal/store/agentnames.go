package store

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketAgentNames indexes approved agents by host name: key '=' + name,
// value the agent's id. Approving an agent must find whether another
// approved agent holds its name; a scan decoding every agent record made
// each approval O(agents), so enrolling 10 000 agents cost O(n²) and,
// on the raft FSM's single goroutine, stalled every later write.
//
// The index is derived data: openDB rebuilds it from the agents bucket
// on every open (a database from before it, a snapshot restored, or one
// an older binary wrote), so it can never disagree with the records for
// long, and every replica derives the same index from the same records.
// Only two transitions change it: an approval adds the name, a
// revocation of an approved agent removes it (AgentDecide). The '='
// prefix keeps an empty name a valid bbolt key.
var bucketAgentNames = []byte("agent-names")

func agentNameKey(name string) []byte { return append([]byte{'='}, name...) }

// indexAgentNames rebuilds bucketAgentNames. Where (against the rules)
// two approved agents hold one name, the lower id holds it in the index,
// as the scan that came before the index found it first.
func indexAgentNames(tx *bolt.Tx) error {
	if tx.Bucket(bucketAgentNames) != nil {
		if err := tx.DeleteBucket(bucketAgentNames); err != nil {
			return err
		}
	}
	idx, err := tx.CreateBucket(bucketAgentNames)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketAgents).ForEach(func(k, raw []byte) error {
		var o struct {
			Name  string     `json:"name"`
			State AgentState `json:"state"`
		}
		if err := json.Unmarshal(raw, &o); err != nil {
			return fmt.Errorf("store: decode agents/%s: %w", k, err)
		}
		if o.State != StateApproved || idx.Get(agentNameKey(o.Name)) != nil {
			return nil
		}
		return idx.Put(agentNameKey(o.Name), k)
	})
}

// nameHolder finds the approved agent other than self holding name. A
// pending agent holds no name: anyone with the bundle can create one,
// so letting pending records hold names would let them squat a name
// ahead of the host it belongs to. The first approval wins.
func nameHolder(tx *bolt.Tx, name, self string) (string, bool, error) {
	id := tx.Bucket(bucketAgentNames).Get(agentNameKey(name))
	if id == nil || string(id) == self {
		return "", false, nil
	}
	return string(id), true, nil
}

// holdName records that the approved agent id holds name.
func holdName(tx *bolt.Tx, name, id string) error {
	return tx.Bucket(bucketAgentNames).Put(agentNameKey(name), []byte(id))
}

// releaseName forgets name if id holds it.
func releaseName(tx *bolt.Tx, name, id string) error {
	b := tx.Bucket(bucketAgentNames)
	if string(b.Get(agentNameKey(name))) != id {
		return nil
	}
	return b.Delete(agentNameKey(name))
}
