package agent

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-vm/ferry/internal/fence"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
)

// The agent's view of the MMC cluster lives in the outbox database
// (bucket "mmc"): the cluster it belongs to, the highest leader term it
// has obeyed (fencing) and the member list the MMC last sent.
var (
	bucketMMC  = []byte("mmc")
	keyCluster = []byte("cluster")
	keyTerm    = []byte("term")
	keyMembers = []byte("members")
)

// mmcMember is one MMC the agent may dial: the handshake pins Key.
type mmcMember struct {
	Addr string   `json:"addr"`
	Key  [32]byte `json:"key"`
}

type storedMembers struct {
	Version uint64      `json:"version"`
	MMCs    []mmcMember `json:"mmcs"`
}

// memberBackoff spaces the attempts at one member that keeps failing.
type memberBackoff struct {
	failures  int
	notBefore time.Time
}

// mmcs is what the agent knows of the MMC cluster: its members and the
// order to dial them in, and the highest term it has obeyed. With a nil
// db (VolatileEvents) it lives in memory only.
type mmcs struct {
	mu       sync.Mutex
	db       *bolt.DB
	version  uint64
	list     []mmcMember
	last     [32]byte   // key of the member that last served a session
	redirect *mmcMember // dial this one next (one attempt)
	backoff  map[[32]byte]memberBackoff
	term     uint64
}

// openMMCs loads the persisted term and member list; without a stored
// list the bundle's members are the list (version 0: any update from the
// MMC replaces them).
func openMMCs(db *bolt.DB, b identity.Bundle) (*mmcs, error) {
	keys, err := b.Keys()
	if err != nil || len(keys) == 0 {
		return nil, fmt.Errorf("agent: bundle: no MMC keys (%v)", err)
	}
	m := &mmcs{db: db, backoff: map[[32]byte]memberBackoff{}}
	for i, k := range keys {
		m.list = append(m.list, mmcMember{Addr: b.MMCs[i].Addr, Key: k})
	}
	if db == nil {
		return m, nil
	}
	err = db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(bucketMMC)
		if err != nil {
			return err
		}
		if c := bk.Get(keyCluster); string(c) != b.ClusterID {
			// Another cluster's members and terms (the data directory
			// was re-enrolled elsewhere) mean nothing here: its terms
			// would fence the new cluster's orders.
			for _, k := range [][]byte{keyTerm, keyMembers} {
				if err := bk.Delete(k); err != nil {
					return err
				}
			}
			if err := bk.Put(keyCluster, []byte(b.ClusterID)); err != nil {
				return err
			}
		}
		if v := bk.Get(keyTerm); len(v) == 8 {
			m.term = binary.BigEndian.Uint64(v)
		}
		if v := bk.Get(keyMembers); v != nil {
			var st storedMembers
			if json.Unmarshal(v, &st) != nil || len(st.MMCs) == 0 {
				// A damaged list: the bundle still names members. The
				// next session's update replaces it.
				return nil
			}
			m.version, m.list = st.Version, st.MMCs
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("agent: MMC state: %w", err)
	}
	return m, nil
}

// obey applies the fencing decision to an order of the given term: nil
// means obey it. A higher term is persisted (bbolt commits are fsync'd)
// before obey returns, so a crash after acting cannot forget it; if it
// cannot be persisted the order is refused.
func (m *mmcs) obey(term uint64) (highest uint64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ok, next := fence.Decide(m.term, term)
	if !ok {
		return m.term, &fence.RefusedError{Term: term, Highest: m.term}
	}
	if next != m.term && m.db != nil {
		err := m.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMMC).Put(keyTerm, binary.BigEndian.AppendUint64(nil, next))
		})
		if err != nil {
			return m.term, fmt.Errorf("agent: persisting term %d: %w", next, err)
		}
	}
	m.term = next
	return next, nil
}

func (m *mmcs) highestTerm() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.term
}

// update keeps a member list newer than the one held (persisted first);
// it reports whether it did.
func (m *mmcs) update(ms message.Members) (bool, error) {
	list := make([]mmcMember, 0, len(ms.MMCs))
	for _, x := range ms.MMCs {
		var k [32]byte
		copy(k[:], x.Key) // 32 bytes: checked by the decoder
		list = append(list, mmcMember{Addr: x.Addr, Key: k})
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if ms.Version <= m.version {
		return false, nil
	}
	if m.db != nil {
		b, err := json.Marshal(storedMembers{Version: ms.Version, MMCs: list})
		if err != nil {
			return false, err
		}
		if err := m.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMMC).Put(keyMembers, b) }); err != nil {
			return false, fmt.Errorf("agent: persisting MMC members: %w", err)
		}
	}
	m.version, m.list = ms.Version, list
	return true, nil
}

// redirectTo makes the named member the next one dialled.
func (m *mmcs) redirectTo(x message.Member) {
	var k [32]byte
	copy(k[:], x.Key)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.redirect = &mmcMember{Addr: x.Addr, Key: k}
}

// candidates is the order in which to dial members now (and takes the
// redirect, which is tried once).
func (m *mmcs) candidates(now time.Time) []mmcMember {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := dialOrder(m.list, m.last, m.redirect, m.backoff, now)
	m.redirect = nil
	return out
}

// dialOrder is the order in which an agent dials the MMC members: a
// member named by a redirect first, then the one that last served, then
// the others in list order — skipping members still backing off after a
// failure. If every member is backing off, the one free soonest: the
// caller's own backoff already spaced the attempt.
func dialOrder(list []mmcMember, last [32]byte, redirect *mmcMember, backoff map[[32]byte]memberBackoff, now time.Time) []mmcMember {
	var out []mmcMember
	if redirect != nil {
		out = append(out, *redirect)
	}
	ready := func(x mmcMember) bool { return !now.Before(backoff[x.Key].notBefore) }
	taken := func(x mmcMember) bool {
		return slices.ContainsFunc(out, func(y mmcMember) bool { return y.Key == x.Key && y.Addr == x.Addr })
	}
	if i := slices.IndexFunc(list, func(x mmcMember) bool { return x.Key == last }); i >= 0 && ready(list[i]) && !taken(list[i]) {
		out = append(out, list[i])
	}
	for _, x := range list {
		if ready(x) && !taken(x) {
			out = append(out, x)
		}
	}
	if len(out) == 0 && len(list) > 0 {
		soonest := list[0]
		for _, x := range list[1:] {
			if backoff[x.Key].notBefore.Before(backoff[soonest.Key].notBefore) {
				soonest = x
			}
		}
		out = append(out, soonest)
	}
	return out
}

// failed notes a failed handshake with a member: it is skipped for a
// doubling while (1 s, 2 s, … up to maxBackoff) while others are tried.
func (m *mmcs) failed(x mmcMember, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.backoff[x.Key]
	b.failures++
	b.notBefore = now.Add(min(time.Second<<min(b.failures-1, 10), maxBackoff))
	m.backoff[x.Key] = b
}

// worked notes a member that completed a handshake: it is dialled first
// next time.
func (m *mmcs) worked(x mmcMember) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.backoff, x.Key)
	m.last = x.Key
}
