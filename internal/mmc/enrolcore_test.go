package mmc

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
)

// enrolWorld is FuzzEnrolSession's model of the MMC around enrolment
// sessions: the records (as the store's agent commands would leave
// them), the open sessions (at most the enrolment slots, and as the
// driver does, one waiting session per key) and the clock. It carries
// out the sessions' actions the way serveEnrol does.
type enrolWorld struct {
	t        *testing.T
	lim      enrolLimits
	ttl      time.Duration
	slots    int
	now      time.Time
	keys     [8][32]byte
	records  map[string]store.Agent
	sessions []*worldSession
	waiting  map[string]*worldSession // the one waiting session per key (claimEnrolWait)
	last     []byte                   // the last raw message sent, for replays
	created  int                      // records ever created
}

type worldSession struct {
	key  int
	slot bool // holds an enrolment slot (until it first waits, as in serveEnrol)
	m    *enrolSession
}

func newEnrolWorld(t *testing.T) *enrolWorld {
	w := &enrolWorld{t: t, lim: enrolLimits{MaxPending: 3, Request: 10 * time.Second, Wait: time.Minute, Ack: 10 * time.Second},
		ttl: time.Hour, slots: 6, now: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC),
		records: map[string]store.Agent{}, waiting: map[string]*worldSession{}}
	for i := range w.keys {
		w.keys[i] = sha256.Sum256([]byte{byte(i)})
	}
	return w
}

func (w *enrolWorld) id(k int) string { return identity.NodeID(w.keys[k]) }

func (w *enrolWorld) pending() int {
	n := 0
	for _, a := range w.records {
		if a.State == store.StatePending {
			n++
		}
	}
	return n
}

// open starts a session of key k, if a slot is free (else the driver
// refuses it at once).
func (w *enrolWorld) open(k int) {
	busy := 0
	for _, s := range w.sessions {
		if s.slot {
			busy++
		}
	}
	if busy >= w.slots {
		return
	}
	w.sessions = append(w.sessions, &worldSession{key: k, slot: true, m: newEnrolSession(w.keys[k], w.lim, w.now)})
}

// run carries out a session's action, and those it leads to.
func (w *enrolWorld) run(s *worldSession, act enrolAction) {
	for steps := 0; ; steps++ {
		if steps > 8 {
			w.t.Fatalf("an event led to more than 8 actions (last %v)", act.Op)
		}
		id := w.id(s.key)
		switch act.Op {
		case enrolLookup:
			a, ok := w.records[id]
			act = s.m.Record(enrolView{Found: ok, Agent: a, Pending: w.pending()}, w.now)
			continue
		case enrolCreate:
			if _, dup := w.records[id]; dup {
				w.end(s) // AgentCreate refuses: the driver ends the session
				return
			}
			req := s.m.Request()
			a := store.Agent{ID: id, PublicKey: w.keys[s.key], Name: req.Facts.Hostname, State: store.StatePending, EnrolledAt: w.now, Facts: req.Facts}
			if req.Token == "good" {
				a.State, a.PendingCode = store.StateApproved, bytes.Repeat([]byte{byte(s.key)}, identity.CodeLen)
			} else if req.Token != "" {
				w.end(s) // a bad token: refused, nothing stored
				return
			}
			w.records[id] = a
			w.created++
			act = s.m.Record(enrolView{Found: true, Agent: a}, w.now)
			continue
		case enrolReply:
			if s.m.Waiting() {
				s.slot = false
				if old := w.waiting[id]; old != nil && old != s {
					w.end(old)
				}
				w.waiting[id] = s
			}
		case enrolConfirm:
			if a, ok := w.records[id]; ok && bytes.Equal(a.PendingCode, act.Code) {
				a.PendingCode = nil
				w.records[id] = a
			}
		}
		if act.Op != enrolNothing && act.Op != enrolReply && !s.m.Done() {
			w.t.Fatalf("action %v left the session open", act.Op)
		}
		if s.m.Done() {
			w.end(s)
		}
		return
	}
}

func (w *enrolWorld) end(s *worldSession) {
	for i, o := range w.sessions {
		if o == s {
			w.sessions = append(w.sessions[:i], w.sessions[i+1:]...)
			break
		}
	}
	for id, o := range w.waiting {
		if o == s {
			delete(w.waiting, id)
		}
	}
}

// decide applies an administrator's decision as agent.decide would, and
// wakes the key's sessions.
func (w *enrolWorld) decide(k int, to store.AgentState) {
	id := w.id(k)
	a, ok := w.records[id]
	if !ok {
		return
	}
	switch {
	case to == store.StateApproved && a.State == store.StatePending:
		a.PendingCode = bytes.Repeat([]byte{0xa0 | byte(k)}, identity.CodeLen)
	case to == store.StateRejected && a.State == store.StatePending:
	case to == store.StateRevoked && (a.State == store.StatePending || a.State == store.StateApproved):
		a.PendingCode = nil
	default:
		return
	}
	a.State = to
	w.records[id] = a
	w.wake(k)
}

func (w *enrolWorld) wake(k int) {
	for _, s := range append([]*worldSession(nil), w.sessions...) {
		if s.key == k && !s.m.Done() {
			w.run(s, s.m.Wake())
		}
	}
}

// advance moves the clock, fires the deadlines passed and expires the
// pending records older than the TTL.
func (w *enrolWorld) advance(d time.Duration) {
	w.now = w.now.Add(d)
	for _, s := range append([]*worldSession(nil), w.sessions...) {
		if dl := s.m.Deadline(); !dl.IsZero() && !w.now.Before(dl) {
			w.run(s, s.m.Timeout(w.now))
		}
	}
	for _, a := range expiredPending(w.agents(), w.now.Add(-w.ttl)) {
		delete(w.records, a.ID)
		for k := range w.keys {
			if w.id(k) == a.ID {
				w.wake(k)
			}
		}
	}
}

func (w *enrolWorld) agents() []store.Agent {
	out := make([]store.Agent, 0, len(w.records))
	for _, a := range w.records {
		out = append(out, a)
	}
	return out
}

// check asserts the bounds that must hold after every event.
func (w *enrolWorld) check() {
	if n := w.pending(); n > w.lim.MaxPending {
		w.t.Fatalf("%d pending records, limit %d", n, w.lim.MaxPending)
	}
	if len(w.records) > len(w.keys) {
		w.t.Fatalf("%d records for %d keys", len(w.records), len(w.keys))
	}
	// Slots bound the sessions not waiting; the waiting ones are one
	// per key.
	busy, waitingPerKey := 0, map[int]int{}
	for _, s := range w.sessions {
		if s.m.Done() {
			w.t.Fatal("an ended session is still listed")
		}
		if s.m.Waiting() {
			waitingPerKey[s.key]++
			if waitingPerKey[s.key] > 1 {
				w.t.Fatalf("key %d has two waiting sessions", s.key)
			}
		}
		if s.slot {
			busy++
		}
		if dl := s.m.Deadline(); s.m.phase != phaseRecord && (dl.IsZero() || !w.now.Before(dl)) {
			w.t.Fatalf("open session (phase %d) without a future deadline: %v (now %v)", s.m.phase, dl, w.now)
		}
		if s.m.Waiting() && s.m.Deadline().Sub(w.now) > w.lim.Wait {
			w.t.Fatalf("a waiting session's deadline is %v away, bound %v", s.m.Deadline().Sub(w.now), w.lim.Wait)
		}
	}
	if busy > w.slots {
		w.t.Fatalf("%d sessions hold slots, limit %d", busy, w.slots)
	}
	cutoff := w.now.Add(-w.ttl - w.lim.Wait)
	for _, a := range w.records {
		if a.State == store.StatePending && a.EnrolledAt.Before(cutoff) {
			w.t.Fatalf("pending record %s from %v outlived the TTL (now %v)", a.ID, a.EnrolledAt, w.now)
		}
	}
}

// FuzzEnrolSession drives enrolment sessions (the pure core serveEnrol
// runs) with sequences of events — sessions opened by a few keys,
// messages valid, malformed, oversized, replayed or out of order,
// decisions, the clock — and checks that nothing panics, the pending
// records stay within MaxPending and expire, each key has at most one
// waiting session and no session outlives its deadline, and the work
// (bytes allocated) per input byte stays within a budget.
func FuzzEnrolSession(f *testing.F) {
	req := func(tok string) []byte {
		b, _ := message.Marshal(message.EnrolRequest{Facts: identity.Facts{Hostname: "h", MACs: []string{"02:00:00:00:00:01"}}, Token: tok})
		return b
	}
	ack, _ := message.Marshal(message.EnrolAck{})
	hello, _ := message.Marshal(message.Hello{Facts: identity.Facts{Hostname: "h"}})
	raw := func(b []byte) []byte { return append([]byte{byte(len(b) >> 8), byte(len(b))}, b...) }
	seq := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	// op bytes: 0 open, 1 raw message, 2 request, 3 ack, 4 decide, 5 clock, 6 replay, 7 oversized, 8 close
	f.Add(seq([]byte{0, 0, 2, 0, 0}, []byte{5, 200}, []byte{5, 255}))                           // a pending session waits, is told to ask again
	f.Add(seq([]byte{0, 1, 2, 0, 1, 4, 1, 0}, []byte{3, 0}))                                    // pending, approved, acked
	f.Add(seq([]byte{0, 2, 2, 0, 2, 3, 0}))                                                     // token approval, ack
	f.Add(seq([]byte{0, 3, 1, 0}, raw(hello)))                                                  // wrong first message
	f.Add(seq([]byte{0, 3, 1, 0}, raw([]byte{0xa1, 0x01, 0x01})))                               // malformed
	f.Add(seq([]byte{0, 4, 7, 0}))                                                              // oversized
	f.Add(seq([]byte{0, 5, 1, 0}, raw(req("")), []byte{6, 0}))                                  // replayed request
	f.Add(seq([]byte{0, 0, 0, 1, 0, 2, 0, 3, 2, 0, 0, 2, 1, 0, 2, 2, 0, 2, 3, 0}, []byte{0, 4}, // a pending flood past MaxPending
		[]byte{2, 4, 0}, []byte{5, 255, 5, 255, 5, 255, 5, 255, 5, 255, 5, 255}, []byte{0, 4, 2, 0, 0}))
	f.Add(seq([]byte{0, 6, 3, 0}, []byte{2, 0, 0}))                   // ack before the request
	f.Add(seq([]byte{0, 7, 2, 0, 0, 0, 7, 2, 1, 0}, []byte{8, 0}))    // one key, two sessions
	f.Add(seq([]byte{0, 1, 2, 0, 0, 4, 1, 2}, []byte{0, 1, 2, 0, 0})) // revoked while waiting, comes back
	f.Add(seq([]byte{0, 2, 1, 0}, raw(ack), []byte{0, 2, 1, 0}, raw(req("bad"))))
	oversized := make([]byte, message.MaxSize+1)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 4096 {
			return
		}
		size := len(in)
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		w := newEnrolWorld(t)
		next := func() int {
			if len(in) == 0 {
				return 0
			}
			b := in[0]
			in = in[1:]
			return int(b)
		}
		session := func() *worldSession {
			n := next()
			if len(w.sessions) == 0 {
				return nil
			}
			return w.sessions[n%len(w.sessions)]
		}
		deliver := func(s *worldSession, b []byte) {
			if s == nil {
				return
			}
			w.last = b
			env, err := message.Unmarshal(b)
			w.run(s, s.m.Message(env, err))
		}
		for len(in) > 0 {
			switch next() % 9 {
			case 0:
				w.open(next() % len(w.keys))
			case 1:
				s := session()
				n := min(next()<<8|next(), len(in))
				b := in[:n]
				in = in[n:]
				deliver(s, b)
			case 2:
				s := session()
				tok := []string{"", "good", "bad"}[next()%3]
				deliver(s, req(tok))
			case 3:
				deliver(session(), ack)
			case 4:
				k := next() % len(w.keys)
				w.decide(k, []store.AgentState{store.StateApproved, store.StateRejected, store.StateRevoked}[next()%3])
			case 5:
				w.advance(time.Duration(next()) * 30 * time.Second)
			case 6:
				if s := session(); s != nil && w.last != nil {
					deliver(s, w.last)
				}
			case 7:
				if s := session(); s != nil {
					env, err := message.Unmarshal(oversized)
					if !errors.Is(err, message.ErrMalformed) {
						t.Fatalf("an oversized message decoded: %v", err)
					}
					w.run(s, s.m.Message(env, err))
				}
			case 8:
				if s := session(); s != nil {
					w.end(s) // the agent went away
				}
			}
			w.check()
		}
		// However the sequence ended, time bounds everything: after the
		// longest deadline and the TTL, no session and no pending record
		// is left.
		w.advance(w.lim.Wait + w.lim.Ack + w.lim.Request)
		w.advance(w.ttl)
		w.check()
		for _, s := range w.sessions {
			t.Fatalf("a session (phase %d) outlived every deadline", s.m.phase)
		}
		if n := w.pending(); n != 0 {
			t.Fatalf("%d pending records outlived the TTL", n)
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if grew, budget := after.TotalAlloc-before.TotalAlloc, uint64(256<<10+2048*size); grew > budget {
			t.Fatalf("allocated %d bytes for a %d-byte input (budget %d)", grew, size, budget)
		}
	})
}

// The machine's answers in the order an honest agent sees them.
func TestEnrolSessionHonest(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	lim := enrolLimits{MaxPending: 1, Request: 10 * time.Second, Wait: time.Minute, Ack: 10 * time.Second}
	pub := [32]byte{1}
	env := func(b message.Body) message.Envelope {
		raw, _ := message.Marshal(b)
		e, err := message.Unmarshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	m := newEnrolSession(pub, lim, now)
	if a := m.Message(env(message.EnrolRequest{Facts: identity.Facts{Hostname: "h"}}), nil); a.Op != enrolLookup {
		t.Fatalf("request: %+v", a)
	}
	if a := m.Record(enrolView{Pending: 1}, now); a.Op != enrolRefuse || !a.Retry || a.Metric != "pending-full" {
		t.Fatalf("beyond MaxPending: %+v", a)
	}
	m = newEnrolSession(pub, lim, now)
	m.Message(env(message.EnrolRequest{Facts: identity.Facts{Hostname: "h"}}), nil)
	if a := m.Record(enrolView{}, now); a.Op != enrolCreate {
		t.Fatalf("new key: %+v", a)
	}
	rec := store.Agent{ID: "a", PublicKey: pub, State: store.StatePending}
	if a := m.Record(enrolView{Found: true, Agent: rec}, now); a.Op != enrolReply || a.Reply.State != "pending" || !m.Waiting() {
		t.Fatalf("pending: %+v", a)
	}
	if !m.Deadline().Equal(now.Add(lim.Wait)) {
		t.Fatalf("wait deadline %v", m.Deadline())
	}
	rec.State, rec.PendingCode = store.StateApproved, make([]byte, identity.CodeLen)
	if a := m.Record(enrolView{Found: true, Agent: rec}, now.Add(time.Second)); a.Op != enrolReply || a.Reply.State != "approved" || len(a.Reply.Code) != identity.CodeLen {
		t.Fatalf("approved: %+v", a)
	}
	if a := m.Message(env(message.EnrolAck{}), nil); a.Op != enrolConfirm || len(a.Code) != identity.CodeLen || !m.Done() {
		t.Fatalf("ack: %+v", a)
	}
	// Waiting past the bound: ask again later.
	m = newEnrolSession(pub, lim, now)
	if a := m.Message(env(message.EnrolRequest{Facts: identity.Facts{Hostname: "h"}}), nil); a.Op != enrolLookup {
		t.Fatalf("request: %+v", a)
	}
	rec = store.Agent{ID: "a", PublicKey: pub, State: store.StatePending}
	m.Record(enrolView{Found: true, Agent: rec}, now)
	if a := m.Timeout(now.Add(lim.Wait)); a.Op != enrolRefuse || !a.Retry || !m.Done() {
		t.Fatalf("wait bound: %+v", a)
	}
}
