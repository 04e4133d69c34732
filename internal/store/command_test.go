package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/evacuation"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/migration"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Every registered command survives encoding, and decoding refuses what
// no encoder produces.
func TestCommandEncoding(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	rec := migration.Record{ID: "m1", VM: "vm1", From: "h1", To: "h2", FromAgent: "a1", ToAgent: "a2", State: migration.Transferring,
		Options: migration.Options{MaxRate: 1e6, Compress: true}, Created: at, Cleanup: []string{"abort:h2"}}
	facts := identity.Facts{Hostname: "h1", IPs: []string{"192.0.2.1"}, MACs: []string{"02:00:00:00:00:01"}, MachineID: "m", DiskID: "d"}
	agent := Agent{ID: "a1", PublicKey: [32]byte{1}, Name: "h1", Site: "s", State: StatePending, Facts: facts, LastFacts: facts,
		EnrolledAt: at, LastHandshake: at, EnrolAddr: "192.0.2.1:7000", Refusal: "r", RefusedAt: at}
	spec := hypervisor.Spec{Name: "web", Memory: 64 << 20, VCPUs: 2, Machine: "q35",
		Disks: []hypervisor.Disk{{Path: "/var/lib/ferry/web.qcow2", Format: "qcow2", Boot: true}}, NICs: []hypervisor.NIC{{Tap: "tap0", MAC: "52:54:00:12:34:56"}}}
	evac := evacuation.Record{ID: "e1", Scope: evacuation.ScopeSite, Source: "a", Target: "b", PerLink: 2, State: evacuation.Running, By: "admin",
		Items:   []evacuation.Item{{VM: "web", From: "h1", FromSite: "a", To: "h2", ToSite: "b", Memory: 1 << 30, Dirty: 1e6, State: evacuation.Moving, Migration: "m1", Started: at}},
		Created: at, Updated: at}
	samples := []Command{
		&MigrationCreate{Record: rec},
		&MigrationUpdate{Record: rec, IfVersion: 3},
		&MigrationCancel{ID: "m1", At: at},
		&MigrationCleanupDone{ID: "m1", Entry: "abort:h2"},
		&AgentCreate{Agent: agent},
		&AgentLogin{ID: "a1", Facts: facts, At: at, Addr: "192.0.2.1:7000", HandshakeAt: at},
		&AgentHandshake{ID: "a1", At: at},
		&AgentDecide{ID: "a1", To: StateApproved, By: "token:0123456789abcdef", At: at, Credentials: creds(3)},
		&AgentDecide{ID: "a1", To: StateRevoked, By: "admin", At: at},
		&AgentCodeConfirmed{ID: "a1", CodeHash: [32]byte{4}},
		&AgentExpire{ID: "a1", EnrolledBefore: at, At: at.Add(time.Hour)},
		&TokenCreate{Token: Token{ID: "0123456789abcdef", Hash: [32]byte{5}, Created: at, Expires: at.Add(time.Hour), UsesLeft: 2, CreatedBy: "admin"}},
		&TokenUse{ID: "0123456789abcdef", SecretHash: [32]byte{5}, At: at},
		&TokenUse{ID: "0123456789abcdef", SecretHash: [32]byte{5}, At: at, Purpose: PurposeMMC},
		&MemberSet{Member: Member{ID: "m1", Addr: "192.0.2.1:7946", Key: [32]byte{6}, Admin: "https://192.0.2.1:7947", Added: at}},
		&MemberRemove{ID: "m1"},
		&MemberJoin{Token: TokenUse{ID: "0123456789abcdef", SecretHash: [32]byte{5}, At: at, Purpose: PurposeMMC}, Member: Member{ID: "m2", Addr: "192.0.2.2:7946", Key: [32]byte{7}, Added: at}},
		&LeaderTerm{ID: "m1", RaftTerm: 4, At: at},
		&AuditAppend{Entries: []AuditEntry{{Time: at, Actor: "admin", Action: "agent.approve", Target: "a1", Source: "127.0.0.1:1", Outcome: "ok", Detail: "by admin"}}},
		&EventAdd{Event: Event{Time: at, AgentAt: at, Agent: "a1", Host: "h1", AgentSeq: 7, Alarm: true, Level: "error", Kind: "host-name-taken", Message: "m"}},
		&PolicyPut{Doc: json.RawMessage(`{"version":2,"mode":"auto"}`)},
		&VMCreate{VM: VM{Name: "web", Agent: "a1", Created: at, Spec: spec}},
		&VMDefine{Name: "web", IfAgent: "a1", Spec: spec},
		&VMDelete{Name: "web", IfAgent: "a1"},
		&VMDelete{Name: "web"},
		&VMAdopt{Name: "web", Agent: "a1", At: at},
		&MetaEnsure{Key: "cluster", Value: "c1"},
		&TokenRevoke{ID: "0123456789abcdef", By: "admin", At: at},
		&AuditPrune{Before: at, MaxEntries: 100000, Limit: 10000},
		&AuditPrune{MaxEntries: 5},
		&EvacuationCreate{Record: evac},
		&EvacuationUpdate{Record: evac, IfVersion: 2},
		&EvacuationCancel{ID: "e1", At: at},
		&RecordsPrune{EventsBefore: at, RecordsBefore: at.Add(-time.Hour), Limit: 1000},
		&AlarmAck{Seq: 7, By: "admin", At: at},
		&MigrationSetRate{ID: "m1", MaxRate: 2e6, At: at},
	}
	seen := map[CommandKind]bool{}
	for _, c := range samples {
		seen[c.Kind()] = true
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("%s: %v", c.Kind(), err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("%s: decoded %#v, want %#v", c.Kind(), got, c)
		}
	}
	for k := range commands {
		if !seen[k] {
			t.Errorf("command %s has no encoding sample here", k)
		}
	}
	for _, bad := range []string{``, `{}`, `{"kind":"nope","body":{}}`, `{"kind":"migration.cancel","body":{"id":"m1","extra":1}}`,
		`{"kind":"migration.cancel","body":{"id":"m1"}} trailing`, `{"kind":"migration.cancel","body":[]}`} {
		if _, err := DecodeCommand([]byte(bad)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("DecodeCommand(%q) = %v, want ErrBadCommand", bad, err)
		}
	}
}

// A write conditional on a version another write replaced is refused and
// changes nothing; an administrator's cancel is such a write.
func TestMigrationVersions(t *testing.T) {
	s := openTest(t)
	m, err := s.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", State: migration.Planned})
	if err != nil || m.ID != "m1" || m.Version != 1 {
		t.Fatalf("create: %+v, %v", m, err)
	}
	if _, err := s.CreateMigration(migration.Record{VM: "vm1", State: migration.Planned}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second open migration of vm1: %v", err)
	}
	read := m
	m.State = migration.Preparing
	if m, err = s.UpdateMigration(m, read.Version); err != nil || m.Version != 2 {
		t.Fatalf("update: %+v, %v", m, err)
	}
	if _, err := s.CancelMigration("m1", time.Now()); err != nil {
		t.Fatal(err)
	}
	m.State = migration.Transferring
	if _, err := s.UpdateMigration(m, 2); !errors.Is(err, ErrStale) {
		t.Fatalf("a write past an unseen cancel: %v", err)
	}
	cur, _ := s.Migration("m1")
	if cur.State != migration.Preparing || !cur.CancelRequested || cur.Version != 3 {
		t.Fatalf("stored %+v", cur)
	}
	if _, err := s.CancelMigration("m1", time.Now()); !errors.Is(err, ErrConflict) || !errors.Is(err, migration.ErrNotCancellable) {
		t.Fatalf("a second cancel: %v", err)
	}
	cur.State, cur.Cleanup = migration.Failed, []string{"abort:h2", "finish:h1"}
	if cur, err = s.UpdateMigration(cur, cur.Version); err != nil {
		t.Fatal(err)
	}
	reopened := cur
	reopened.State = migration.RollingBack
	if _, err := s.UpdateMigration(reopened, cur.Version); !errors.Is(err, ErrConflict) {
		t.Fatalf("a decided outcome rewritten: %v", err)
	}
	if _, err := s.CleanupDone("m1", "abort:h2"); err != nil {
		t.Fatal(err)
	}
	if cur, _ = s.Migration("m1"); !reflect.DeepEqual(cur.Cleanup, []string{"finish:h1"}) {
		t.Fatalf("cleanups %v", cur.Cleanup)
	}
	if _, err := s.CreateMigration(migration.Record{VM: "vm1", State: migration.Planned}); err != nil {
		t.Fatalf("a new migration once the first ended: %v", err)
	}
}

// FuzzDecodeCommand: any input decodes to a command or a clear error,
// and a decoded command encodes again.
func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"kind":"migration.cancel","body":{"id":"m1","at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"migration.set-bandwidth","body":{"id":"m1","max_bandwidth":2000000,"at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"alarm.ack","body":{"seq":1,"by":"admin","at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"evacuation.cancel","body":{"id":"e1","at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"records.prune","body":{"events_before":"2026-12-06T10:00:00Z","records_before":"2026-11-06T10:00:00Z","limit":1000}}`))
	f.Add([]byte(`{"kind":"evacuation.update","body":{"record":{"id":"e1","scope":"host","source":"h1","per_link":2,"state":"running","by":"admin","options":{},"items":[{"vm":"web","from":"h1","from_site":"a","memory":1,"dirty_rate":0,"state":"queued"}],"created":"2026-12-06T10:00:00Z","updated":"2026-12-06T10:00:00Z"},"if_version":1}}`))
	f.Add([]byte(`{"kind":"migration.update","body":{"record":{"id":"m1","state":"planned"},"if_version":1}}`))
	f.Add([]byte(`{"kind":"migration.cleanup-done","body":{"id":"m1","entry":"abort:h2"}}`))
	f.Add([]byte(`{"kind":"migration.create","body":{"record":{"vm":"vm1","from":"h1","to":"h2","state":"planned"}}}`))
	f.Add([]byte(`{"kind":"agent.create","body":{"agent":{"id":"a1","public_key":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32],"name":"h1","site":"s","state":"pending","facts":{"hostname":"h1","ips":["192.0.2.1"],"macs":[],"machine_id":"","disk_id":"d"},"enrolled_at":"2026-12-06T10:00:00Z"}}}`))
	f.Add([]byte(`{"kind":"agent.login","body":{"id":"a1","facts":{"hostname":"h1","ips":null},"at":"2026-12-06T10:00:00Z","addr":"192.0.2.1:7000","handshake_at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"agent.handshake","body":{"id":"a1","at":"2026-12-06T10:00:00.5Z"}}`))
	f.Add([]byte(`{"kind":"agent.decide","body":{"id":"a1","to":"approved","by":"admin","at":"2026-12-06T10:00:00Z","credentials":{"psk":[1],"reauth_key":[2],"agent_id_digest":[3],"code":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}}`))
	f.Add([]byte(`{"kind":"agent.decide","body":{"id":"a1","to":"revoked","by":"admin","at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"agent.code-confirmed","body":{"id":"a1","code_hash":[255,0,7]}}`))
	f.Add([]byte(`{"kind":"token.create","body":{"token":{"id":"0123456789abcdef","hash":[5],"created":"2026-12-06T10:00:00Z","expires":"2026-12-06T11:00:00Z","uses_left":2,"used":0}}}`))
	f.Add([]byte(`{"kind":"token.use","body":{"id":"0123456789abcdef","secret_hash":[5],"at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"audit.append","body":{"entries":[{"seq":0,"time":"2026-12-06T10:00:00Z","actor":"admin","action":"agent.approve","outcome":"ok"}]}}`))
	f.Add([]byte(`{"kind":"event.add","body":{"event":{"seq":0,"time":"2026-12-06T10:00:00Z","agent":"a1","host":"h1","agent_seq":3,"alarm":true,"level":"error","kind":"host-name-taken","message":"m"}}}`))
	f.Add([]byte(`{"kind":"policy.put","body":{"doc":{"version":1,"mode":"dry-run"}}}`))
	f.Add([]byte(`{"kind":"vm.create","body":{"vm":{"name":"web","agent":"a1","spec":{"name":"web","memory":67108864,"vcpus":1,"workload":{}},"created":"2026-12-06T10:00:00Z"}}}`))
	f.Add([]byte(`{"kind":"vm.define","body":{"name":"web","if_agent":"a1","spec":{"name":"web","memory":67108864,"vcpus":1,"workload":{},"disks":[{"path":"/d","size":1}]}}}`))
	f.Add([]byte(`{"kind":"vm.delete","body":{"name":"web"}}`))
	f.Add([]byte(`{"kind":"vm.delete","body":{"name":"web","if_agent":"a1"}}`))
	f.Add([]byte(`{"kind":"vm.adopt","body":{"name":"web","agent":"a1","at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"migration.update","body":{"record":{"id":"m1","vm":"vm1","from":"h1","to":"h2","from_agent":"a1","to_agent":"a2","state":"switch-over"},"if_version":4}}`))
	f.Add([]byte(`{"kind":"meta.ensure","body":{"key":"cluster","value":"c1"}}`))
	f.Add([]byte(`{"kind":"token.revoke","body":{"id":"0123456789abcdef","by":"admin","at":"2026-12-06T10:00:00Z"}}`))
	f.Add([]byte(`{"kind":"audit.prune","body":{"before":"2026-09-07T10:00:00Z","max_entries":100000,"limit":10000}}`))
	f.Add([]byte(`{"kind":"audit.prune","body":{"max_entries":5}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("error not ErrBadCommand: %v", err)
			}
			return
		}
		if _, err := EncodeCommand(c); err != nil {
			t.Fatalf("decoded %s does not encode: %v", c.Kind(), err)
		}
	})
}

// The typed write methods go through the Applier when one is set (a
// replicated store proposes them to its log), the applier's result is
// theirs, ApplyIndexed bypasses it (the FSM's local write must not be
// proposed again), and SetApplier(nil) restores direct writes.
func TestApplierRoutesWrites(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	s := openTest(t)
	var seen []CommandKind
	var index uint64
	s.SetApplier(func(c Command) (any, error) {
		seen = append(seen, c.Kind())
		// A log's FSM: encode, decode, apply locally at the next index.
		b, err := EncodeCommand(c)
		if err != nil {
			return nil, err
		}
		d, err := DecodeCommand(b)
		if err != nil {
			return nil, err
		}
		index++
		return s.ApplyIndexed(index, d)
	})
	writes := []struct {
		name  string
		write func() error
		kind  CommandKind
	}{
		{"PutToken", func() error {
			return s.PutToken(Token{ID: "0123456789abcdef", Hash: [32]byte{5}, Created: at, Expires: at.Add(time.Hour), UsesLeft: 1, CreatedBy: "admin"})
		}, "token.create"},
		{"AddEvent", func() error {
			fresh, err := s.AddEvent(Event{Time: at, AgentAt: at, Agent: "a1", Host: "h1", AgentSeq: 1, Level: "info", Kind: "k", Message: "m"})
			if err == nil && !fresh {
				err = errors.New("a first event reported as a repeat")
			}
			return err
		}, "event.add"},
		{"AppendAudit", func() error {
			return s.AppendAudit(AuditEntry{Time: at, Actor: "admin", Action: "a", Target: "t", Outcome: "ok"})
		}, "audit.append"},
		{"EnsureMeta", func() error {
			v, err := s.EnsureMeta("k", "v")
			if err == nil && v != "v" {
				err = errors.New("EnsureMeta returned " + v)
			}
			return err
		}, "meta.ensure"},
	}
	for _, w := range writes {
		n := len(seen)
		if err := w.write(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		if len(seen) != n+1 || seen[n] != w.kind {
			t.Fatalf("%s: applier saw %v, want one %s", w.name, seen[n:], w.kind)
		}
	}
	if got, err := s.AppliedIndex(); err != nil || got != uint64(len(writes)) {
		t.Fatalf("applied index %d (%v), want %d: the writes did not reach the store through ApplyIndexed", got, err, len(writes))
	}

	// The applier's refusal is the write's.
	refuse := errors.New("not the leader")
	s.SetApplier(func(Command) (any, error) { return nil, refuse })
	if err := s.AppendAudit(AuditEntry{Time: at, Actor: "admin", Action: "b", Outcome: "ok"}); !errors.Is(err, refuse) {
		t.Fatalf("AppendAudit with a refusing applier: %v", err)
	}
	// ApplyIndexed is the local path, never the applier's.
	if _, err := s.ApplyIndexed(index+1, &AuditAppend{Entries: []AuditEntry{{Time: at, Actor: "fsm", Action: "c", Outcome: "ok"}}}); err != nil {
		t.Fatalf("ApplyIndexed went through the applier: %v", err)
	}

	s.SetApplier(nil)
	if err := s.AppendAudit(AuditEntry{Time: at, Actor: "admin", Action: "d", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Audit(0, 0); len(got) != 3 {
		t.Fatalf("%d audit entries, want 3 (applier, ApplyIndexed, direct)", len(got))
	}
}

// An evacuation's record is rewritten only at the version read, a cancel
// makes the driver's next write stale, and a finished group is final.
func TestEvacuationVersions(t *testing.T) {
	s := openTest(t)
	at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	r, err := s.CreateEvacuation(evacuation.Record{Scope: evacuation.ScopeHost, Source: "h1", State: evacuation.Running, Created: at,
		Items: []evacuation.Item{{VM: "web", From: "h1", State: evacuation.Queued}}})
	if err != nil || r.ID != "e1" || r.Version != 1 {
		t.Fatalf("create: %+v %v", r, err)
	}
	if r2, _ := s.CreateEvacuation(evacuation.Record{Scope: evacuation.ScopeHost, Source: "h2", State: evacuation.Running}); r2.ID != "e2" {
		t.Fatalf("second id %q, want e2", r2.ID)
	}
	read := r
	r.Started(0, "m1", at)
	if r, err = s.UpdateEvacuation(r, read.Version); err != nil || r.Version != 2 {
		t.Fatalf("update: %+v %v", r, err)
	}
	if _, err := s.CancelEvacuation("e1", at); err != nil {
		t.Fatal(err)
	}
	// The driver read version 2; the cancel made it 3.
	if _, err := s.UpdateEvacuation(r, 2); !errors.Is(err, ErrStale) {
		t.Fatalf("write past a cancel: %v, want ErrStale", err)
	}
	cur, _ := s.Evacuation("e1")
	if !cur.CancelRequested || cur.Items[0].Migration != "m1" {
		t.Fatalf("stored %+v", cur)
	}
	cur.State = evacuation.Cancelled
	if cur, err = s.UpdateEvacuation(cur, cur.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateEvacuation(cur, cur.Version); !errors.Is(err, ErrConflict) {
		t.Fatalf("rewrite of a finished group: %v, want ErrConflict", err)
	}
	if _, err := s.CancelEvacuation("e1", at); !errors.Is(err, ErrConflict) {
		t.Fatalf("cancel of a finished group: %v, want ErrConflict", err)
	}
	if _, err := s.Evacuation("e9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	if all, _ := s.Evacuations(); len(all) != 2 {
		t.Fatalf("%d groups, want 2", len(all))
	}
}

// Retention removes what ended before its cut-offs and nothing open,
// nothing a running evacuation names, nothing owed a cleanup; its limit
// makes it a series of short transactions.
func TestRecordsPrune(t *testing.T) {
	s := openTest(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 5 {
		if _, err := s.AddEvent(Event{Time: t0.Add(time.Duration(i) * time.Hour), Kind: "k", Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	mig := func(vm string, st migration.State, updated time.Time, cleanup ...string) string {
		m, err := s.CreateMigration(migration.Record{VM: vm, State: migration.Planned})
		if err != nil {
			t.Fatal(err)
		}
		m.State, m.Updated, m.Cleanup = st, updated, cleanup
		if st.Open() {
			m.State = migration.Transferring
		}
		if _, err := s.UpdateMigration(m, m.Version); err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	old := t0.Add(-48 * time.Hour)
	gone := mig("a", migration.Completed, old)
	open := mig("b", migration.Transferring, old)
	named := mig("c", migration.Failed, old)
	owed := mig("d", migration.Cancelled, old, "abort:h2")
	recent := mig("e", migration.Completed, t0)
	if _, err := s.CreateEvacuation(evacuation.Record{State: evacuation.Running, Items: []evacuation.Item{{VM: "c", Migration: named, State: evacuation.Moving}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEvacuation(evacuation.Record{State: evacuation.Completed, Finished: old}); err != nil {
		t.Fatal(err)
	}

	// A limit of 2: the two oldest events, then More.
	res, err := s.PruneRecords(RecordsPrune{EventsBefore: t0.Add(150 * time.Minute), RecordsBefore: t0.Add(-time.Hour), Limit: 2})
	if err != nil || res.Events != 2 || !res.More {
		t.Fatalf("first pass: %+v %v", res, err)
	}
	res, err = s.PruneRecords(RecordsPrune{EventsBefore: t0.Add(150 * time.Minute), RecordsBefore: t0.Add(-time.Hour)})
	if err != nil || res.Events != 1 || res.Migrations != 1 || res.Evacuations != 1 || res.More {
		t.Fatalf("second pass: %+v %v", res, err)
	}
	evs, _ := s.Events(0, 0, false)
	if len(evs) != 2 || evs[0].Message != "3" {
		t.Fatalf("events left %+v, want 3 and 4", evs)
	}
	for id, want := range map[string]bool{gone: false, open: true, named: true, owed: true, recent: true} {
		if _, err := s.Migration(id); (err == nil) != want {
			t.Errorf("migration %s kept %v, want %v", id, err == nil, want)
		}
	}
	if gs, _ := s.Evacuations(); len(gs) != 1 || !gs[0].State.Open() {
		t.Fatalf("evacuations left %+v, want the running one", gs)
	}
	// Zero cut-offs keep everything.
	if res, err := s.PruneRecords(RecordsPrune{}); err != nil || res != (RecordsPruned{}) {
		t.Fatalf("no cut-offs: %+v %v", res, err)
	}
}

// A cap changes on an open migration until its transfer ends; a bad cap,
// an unknown id, an armed or ended migration change nothing.
func TestSetMigrationRate(t *testing.T) {
	s := openTest(t)
	at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	m, err := s.CreateMigration(migration.Record{VM: "vm1", From: "h1", To: "h2", State: migration.Planned})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.SetMigrationRate(m.ID, 2e6, at)
	if err != nil || got.MaxRate != 2e6 || got.Version != m.Version+1 {
		t.Fatalf("set: %+v %v", got, err)
	}
	for _, bad := range []float64{-1, math.NaN(), math.Inf(1)} {
		if _, err := s.SetMigrationRate(m.ID, bad, at); !errors.Is(err, ErrConflict) {
			t.Errorf("cap %v: %v", bad, err)
		}
	}
	if _, err := s.SetMigrationRate("m999", 1, at); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	got.State, got.ArmedAt = migration.Transferring, at
	if got, err = s.UpdateMigration(got, got.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMigrationRate(m.ID, 1e6, at); !errors.Is(err, ErrConflict) {
		t.Errorf("armed: %v", err)
	}
	got.State = migration.Completed
	if _, err = s.UpdateMigration(got, got.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMigrationRate(m.ID, 1e6, at); !errors.Is(err, ErrConflict) {
		t.Errorf("ended: %v", err)
	}
	if r, _ := s.Migration(m.ID); r.MaxRate != 2e6 {
		t.Fatalf("the cap is %v after refused changes, want 2e6", r.MaxRate)
	}
}
