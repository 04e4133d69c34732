package mmc

import (
	"cmp"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// registry is the MMC's in-memory view of its agents: the snapshot of
// their records that the SUDP handshake's Lookup reads (on the endpoint's
// reader goroutine, so memory only), the index of host names to the one
// approved agent holding each, the live sessions, and the enrolment
// sessions waiting for a decision. It owns its lock; nothing else touches
// its maps. Every record it holds was written to the store first.
type registry struct {
	// mirror is told of each change with the lock held, so what it
	// mirrors (the inventory) sees the changes in the registry's order:
	// a replaced session's end, say, never takes its successor offline.
	// It must not call back into the registry.
	mirror registryMirror

	mu    sync.RWMutex
	byKey map[[32]byte]*agentEntry // snapshot for Lookup
	// pending counts byKey's pending entries: every enrolment asks for
	// it, and counting them took a pass over every agent (10 000 agents
	// enrolling: 2 % of the MMC's CPU, growing with the fleet).
	pending  int
	sessions map[string]*session                   // live, by agent id
	waiters  map[string]map[chan struct{}]struct{} // enrolment sessions waiting for a decision, by agent id
	// enrolWait holds, per key, the one enrolment session waiting for a
	// decision (claimEnrolWait): a newer session of the key ends it.
	enrolWait map[string]*enrolClaim
	// hostAgent maps a host name to the key of the one approved agent
	// holding it (see indexName): actions and migrations for a host go
	// to that agent's session only.
	hostAgent map[string][32]byte

	// intros remembers introductions between agents (links.go); it
	// has a lock of its own.
	intros *introductions
}

// registryMirror is what follows the registry's changes (the inventory:
// whether an agent is managed, whether it is online).
type registryMirror interface {
	agentChanged(store.Agent)
	agentRemoved(id string)
	onlineChanged(id string, online bool)
}

// agentEntry is what the handshake path needs about an agent.
type agentEntry struct {
	id          string
	name, site  string // for the host list, read without the store
	state       store.AgentState
	psk         [32]byte
	codePending bool // approved, registration code not yet confirmed by the agent
	notAfter    time.Time
	decidedAt   time.Time // orders approvals for the host-name index
	// recv is the key's receive cap (recvcap.go), one bucket for all its
	// sessions, kept across publishes while its kind of cap holds.
	recv *ratelimit.Bucket
	// events is the agent's event budget (eventbudget.go), made at its
	// first login and kept across publishes and sessions.
	events *agentEvents
}

func entryOf(a store.Agent) *agentEntry {
	return &agentEntry{id: a.ID, name: a.Name, site: a.Site, state: a.State, psk: a.PSK, codePending: a.State == store.StateApproved && len(a.PendingCode) > 0,
		notAfter: a.LastHandshake, decidedAt: a.DecidedAt}
}

func newRegistry(m registryMirror) *registry {
	return &registry{
		mirror:    m,
		byKey:     make(map[[32]byte]*agentEntry),
		sessions:  make(map[string]*session),
		waiters:   make(map[string]map[chan struct{}]struct{}),
		enrolWait: make(map[string]*enrolClaim),
		intros:    newIntroductions(),
		hostAgent: make(map[string][32]byte),
	}
}

// load publishes the stored records at startup, in the order of approval,
// so that of two approved agents of one name (a database written before
// approvals checked names) the first approved holds it, on every start.
func (r *registry) load(agents []store.Agent) {
	agents = slices.Clone(agents)
	slices.SortFunc(agents, func(a, b store.Agent) int {
		return cmp.Or(a.DecidedAt.Compare(b.DecidedAt), strings.Compare(a.ID, b.ID))
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range agents {
		r.publishLocked(a)
	}
}

// publish puts a stored record in the handshake snapshot and the
// host-name index. A revocation published here is final for sessions:
// from then on register refuses the agent, and session(id) returns any
// session registered before (see register).
func (r *registry) publish(a store.Agent) {
	r.mu.Lock()
	r.publishLocked(a)
	r.mu.Unlock()
}

// eventsOf returns the event budget of pub's agent, made at now the first
// time.
func (r *registry) eventsOf(pub [32]byte, now time.Time) *agentEvents {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.byKey[pub]
	if e == nil {
		return &agentEvents{b: newEventBudget(now)}
	}
	if e.events == nil {
		e.events = &agentEvents{b: newEventBudget(now)}
	}
	return e.events
}

func (r *registry) publishLocked(a store.Agent) {
	if cur := r.byKey[a.PublicKey]; cur != nil && final(cur.state) && !final(a.State) {
		// A rejection or revocation is final in the store (agent.decide
		// moves nothing out of it), so a record read before it — a login
		// publishing its facts after a concurrent revocation landed —
		// must not make the snapshot say approved again.
		return
	}
	e := entryOf(a)
	if cur := r.byKey[a.PublicKey]; cur != nil && cur.recv != nil && cur.recv.Rate() == recvRateOf(e) {
		e.recv = cur.recv
	} else {
		e.recv = newRecvCap(time.Now(), e) // the SUDP driver's clock

	}
	if cur := r.byKey[a.PublicKey]; cur != nil {
		e.events = cur.events
		if cur.state == store.StatePending {
			r.pending--
		}
	}
	if e.state == store.StatePending {
		r.pending++
	}
	r.byKey[a.PublicKey] = e
	r.indexName(a.PublicKey, e)
	if r.mirror != nil {
		r.mirror.agentChanged(a)
	}
}

// indexName brings the holder of e's host name up to date after e
// changed (r.mu held). The holder keeps the name while it is approved;
// an approved agent takes a name nobody holds; when the holder stops
// being approved, the earliest approved other agent of that name (only a
// database from before approvals checked names has one) takes it over.
// So a lookup is one map access, and the same records give the same
// holder.
func (r *registry) indexName(pub [32]byte, e *agentEntry) {
	holder, held := r.hostAgent[e.name]
	if held && holder != pub {
		if h := r.byKey[holder]; h != nil && h.state == store.StateApproved && h.name == e.name {
			return // held by another approved agent
		}
	}
	if e.state == store.StateApproved {
		r.hostAgent[e.name] = pub
		return
	}
	if !held || holder != pub {
		return
	}
	delete(r.hostAgent, e.name)
	var next *agentEntry
	var nextPub [32]byte
	for k, o := range r.byKey {
		if o.state != store.StateApproved || o.name != e.name {
			continue
		}
		if next == nil || cmp.Or(o.decidedAt.Compare(next.decidedAt), strings.Compare(o.id, next.id)) < 0 {
			next, nextPub = o, k
		}
	}
	if next != nil {
		r.hostAgent[e.name] = nextPub
	}
}

// lookup is the handshake's view of a static key: a copy of its entry, so
// the caller reads it without the lock.
func (r *registry) lookup(pub [32]byte) (agentEntry, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e := r.byKey[pub]; e != nil {
		return *e, true
	}
	return agentEntry{}, false
}

// pendingCount is the number of agents waiting for a decision.
func (r *registry) pendingCount() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.pending
}

// Why register refused a session.
var (
	errNotApproved = errors.New("mmc: agent not approved")
	errNotHolder   = errors.New("mmc: host name held by another approved agent")
)

// register makes ss the live session of agent ss.id (key pub) and returns
// the session it replaces, which the caller ends. It refuses
// (errNotApproved) unless the snapshot has the key approved, checked in
// the same critical section that publish writes revocations in: a
// revocation either happened before (and registration fails) or sees
// this session through session(id) afterwards (and ends it). It refuses
// (errNotHolder) an agent that does not hold its host name: two approved
// agents of one name exist only in a database written before approvals
// checked names, and only the first approved gets sessions as that host.
func (r *registry) register(pub [32]byte, ss *session) (old *session, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.byKey[pub]; e == nil || e.state != store.StateApproved {
		return nil, errNotApproved
	}
	if holder, ok := r.hostAgent[ss.name]; !ok || holder != pub {
		return nil, errNotHolder
	}
	old = r.sessions[ss.id]
	r.sessions[ss.id] = ss
	if r.mirror != nil {
		r.mirror.onlineChanged(ss.id, true)
	}
	return old, nil
}

// unregister removes ss if it is still its agent's live session. Only the
// current session's end takes the agent offline (a replaced one ends
// after its successor registered).
func (r *registry) unregister(ss *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[ss.id] != ss {
		return
	}
	delete(r.sessions, ss.id)
	if r.mirror != nil {
		r.mirror.onlineChanged(ss.id, false)
	}
}

// session is agent id's live session (nil if offline; only approved
// agents have one).
func (r *registry) session(id string) *session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.sessions[id]
}

// online reports whether an agent has a live session.
func (r *registry) online(id string) bool {
	return r.session(id) != nil
}

// sessionByHost finds the live session of the host named name: the
// session of the one approved agent holding that name, never of another
// agent that claims it.
func (r *registry) sessionByHost(name string) *session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pub, ok := r.hostAgent[name]
	if !ok {
		return nil
	}
	e := r.byKey[pub]
	if e == nil {
		return nil
	}
	return r.sessions[e.id]
}

// holder is the agent id of the approved agent holding host name.
func (r *registry) holder(name string) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pub, ok := r.hostAgent[name]
	if !ok {
		return "", false
	}
	if e := r.byKey[pub]; e != nil {
		return e.id, true
	}
	return "", false
}

// hostHolder is a host name with the approved agent holding it and that
// agent's live session (nil if offline).
type hostHolder struct {
	id, name, site string
	ss             *session
}

// holders lists every held host name, in no particular order.
func (r *registry) holders() []hostHolder {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]hostHolder, 0, len(r.hostAgent))
	for name, pub := range r.hostAgent {
		if e := r.byKey[pub]; e != nil {
			out = append(out, hostHolder{e.id, name, e.site, r.sessions[e.id]})
		}
	}
	return out
}

// live lists every live session, for the caller to use outside the lock
// (a slow agent must not hold up the registry).
func (r *registry) live() []*session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*session, 0, len(r.sessions))
	for _, ss := range r.sessions {
		out = append(out, ss)
	}
	return out
}

// subscribe returns a channel closed at the next decision about id, and
// the function that withdraws it (every session withdraws its own, so the
// map holds only live waiters).
func (r *registry) subscribe(id string) (<-chan struct{}, func()) {
	w := make(chan struct{})
	r.mu.Lock()
	if r.waiters[id] == nil {
		r.waiters[id] = make(map[chan struct{}]struct{})
	}
	r.waiters[id][w] = struct{}{}
	r.mu.Unlock()
	return w, func() {
		r.mu.Lock()
		if ws := r.waiters[id]; ws != nil {
			delete(ws, w)
			if len(ws) == 0 {
				delete(r.waiters, id)
			}
		}
		r.mu.Unlock()
	}
}

// wake tells the enrolment sessions waiting for a decision about id that
// there is one.
func (r *registry) wake(id string) {
	r.mu.Lock()
	for w := range r.waiters[id] {
		close(w)
	}
	delete(r.waiters, id)
	r.mu.Unlock()
}

// enrolClaim is an enrolment session waiting for a decision.
type enrolClaim struct{ stop func() }

// claimEnrolWait makes the calling session the one enrolment session of
// id waiting for a decision, ending (stop) the one it replaces: a key
// holds at most one waiting session, however many it opens. The returned
// function withdraws the claim if it is still the current one.
func (r *registry) claimEnrolWait(id string, stop func()) func() {
	cl := &enrolClaim{stop: stop}
	r.mu.Lock()
	old := r.enrolWait[id]
	r.enrolWait[id] = cl
	r.mu.Unlock()
	if old != nil {
		old.stop()
	}
	return func() {
		r.mu.Lock()
		if r.enrolWait[id] == cl {
			delete(r.enrolWait, id)
		}
		r.mu.Unlock()
	}
}

// enrolWaiting is the number of enrolment sessions waiting for a decision.
func (r *registry) enrolWaiting() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.enrolWait)
}

// remove forgets an expired pending record (its key is unknown again).
// Only a pending record is removed: a decision published meanwhile
// stays.
func (r *registry) remove(a store.Agent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.byKey[a.PublicKey]; e == nil || e.state != store.StatePending || e.id != a.ID {
		return
	}
	delete(r.byKey, a.PublicKey)
	r.pending--
	if r.mirror != nil {
		r.mirror.agentRemoved(a.ID)
	}
}

// final reports whether an agent state is one no decision leaves.
func final(st store.AgentState) bool {
	return st == store.StateRejected || st == store.StateRevoked
}
