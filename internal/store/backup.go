package store

import (
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// A backup (`ferry ctl mmcs snapshot`) is a Snapshot written out with a
// header naming the state it holds; disaster recovery (`ferry mmc
// restore`) turns it into the database of a fresh data directory whose
// MMC starts a new one-member cluster on it. The methods here serve
// both: reading the header's fields from the snapshot's own transaction
// (so they describe exactly the image written), and preparing the
// restored database offline, before any raft log exists.

// AppliedIndex is the replicated log's index as of the snapshot.
func (sn *Snapshot) AppliedIndex() (uint64, error) {
	if sn.tx == nil {
		return 0, fmt.Errorf("store: snapshot closed")
	}
	return appliedIndex(sn.tx)
}

// FenceTerm is the fencing term as of the snapshot.
func (sn *Snapshot) FenceTerm() (uint64, error) {
	if sn.tx == nil {
		return 0, fmt.Errorf("store: snapshot closed")
	}
	return fenceTerm(sn.tx)
}

// RaiseFenceTerm sets the fencing term to at least min and returns the
// term in force. Like ResetAppliedIndex it is local maintenance, never a
// replicated command: a restore applies it to a database no log has
// touched yet, before the MMC seeds a new cluster with it. The old
// cluster may have gone on electing leaders after the backup was taken,
// and agents refuse a leader whose term is below the highest they
// obeyed: the restored cluster's first leader must take a term above
// every one the old cluster can have reached.
func (s *Store) RaiseFenceTerm(min uint64) (uint64, error) {
	var t uint64
	err := s.update(func(tx *bolt.Tx) error {
		cur, err := fenceTerm(tx)
		if err != nil {
			return err
		}
		t = max(cur, min)
		if t == cur {
			return nil
		}
		return tx.Bucket(bucketMeta).Put([]byte(fenceTermKey), strconv.AppendUint(nil, t, 10))
	})
	return t, err
}
