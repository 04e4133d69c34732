package store

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// dumpAll reads every bucket (nested ones too) as path → value.
func dumpAll(t *testing.T, s *Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(prefix string, b *bolt.Bucket) error
	walk = func(prefix string, b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				return walk(prefix+string(k)+"/", b.Bucket(k))
			}
			out[prefix+string(k)] = string(v)
			return nil
		})
	}
	err := s.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error { return walk(string(name)+"/", b) })
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// batchScript is a log: enrolments, approvals (one refused as a name
// taken: a recorded error, written), logins of pending agents (refused:
// written nothing), metadata and expiries, at consecutive indexes.
func batchScript() []IndexedCommand {
	at := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	var cmds []Command
	for i := range 6 {
		id := fmt.Sprintf("a%d", i)
		cmds = append(cmds, &AgentCreate{Agent: Agent{ID: id, Name: fmt.Sprintf("h%d", i%4), State: StatePending, EnrolledAt: at}})
	}
	for i := range 6 {
		cmds = append(cmds, &AgentDecide{ID: fmt.Sprintf("a%d", i), To: StateApproved, By: "admin", At: at, Credentials: creds(byte(i))})
		cmds = append(cmds, &MetaEnsure{Key: fmt.Sprintf("k%d", i), Value: "v"})
	}
	cmds = append(cmds,
		&AgentLogin{ID: "a4", At: at},                      // a4 was refused (h0 held): ErrConflict, nothing written
		&AgentLogin{ID: "a1", At: at, Addr: "192.0.2.1:7"}, // approved: written
		&AgentExpire{ID: "a5", EnrolledBefore: at, At: at},
		&MetaEnsure{Key: "k0", Value: "other"}, // already set: result "v"
	)
	out := make([]IndexedCommand, len(cmds))
	for i, c := range cmds {
		out[i] = IndexedCommand{Index: uint64(i + 1), Cmd: c}
	}
	return out
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// A batch leaves the database and returns the results that applying its
// entries one by one does — batches with a refusal in them, with a
// recorded refusal, of every size, and replayed over entries already
// applied.
func TestApplyIndexedBatchEqualsOneByOne(t *testing.T) {
	script := batchScript()
	one := openTest(t)
	var want []BatchResult
	for _, ic := range script {
		v, err := one.ApplyIndexed(ic.Index, ic.Cmd)
		want = append(want, BatchResult{v, err})
	}
	wantDB := dumpAll(t, one)
	refused, recordedSeen := 0, 0
	for _, r := range want {
		switch {
		case errors.Is(r.Err, ErrNameTaken):
			recordedSeen++
		case r.Err != nil:
			refused++
		}
	}
	if refused == 0 || recordedSeen == 0 {
		t.Fatalf("the script must hold a refusal and a recorded refusal: %d, %d", refused, recordedSeen)
	}
	for _, size := range []int{1, 2, 3, 5, 8, len(script)} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := openTest(t)
			var got []BatchResult
			for i := 0; i < len(script); i += size {
				got = append(got, s.ApplyIndexedBatch(script[i:min(i+size, len(script))])...)
			}
			for i := range want {
				if errText(got[i].Err) != errText(want[i].Err) || !reflect.DeepEqual(got[i].Value, want[i].Value) {
					t.Errorf("entry %d (%s): batch %v / %v, one by one %v / %v", i+1, script[i].Cmd.Kind(), got[i].Value, got[i].Err, want[i].Value, want[i].Err)
				}
			}
			if d := dumpAll(t, s); !reflect.DeepEqual(d, wantDB) {
				t.Errorf("database differs from one-by-one application:\n%v\nwant\n%v", d, wantDB)
			}
			// Replayed (a restart replays the log after the snapshot):
			// nothing changes, every result is (nil, nil).
			for i, r := range s.ApplyIndexedBatch(script) {
				if r.Value != nil || r.Err != nil {
					t.Fatalf("replayed entry %d: %v / %v", i+1, r.Value, r.Err)
				}
			}
			if d := dumpAll(t, s); !reflect.DeepEqual(d, wantDB) {
				t.Error("a replay changed the database")
			}
		})
	}
}

// A failed transaction is a storage error on every entry of the batch.
func TestApplyIndexedBatchStorageFailure(t *testing.T) {
	s := openTest(t)
	s.Close()
	for i, r := range s.ApplyIndexedBatch(batchScript()[:3]) {
		if !errors.Is(r.Err, ErrStorage) {
			t.Fatalf("entry %d on a closed database: %v", i+1, r.Err)
		}
	}
}
