package mmc

import (
	"fmt"
	"slices"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/store"
)

// The decisions of one enrolment session, sans I/O: serveEnrol (enrol.go)
// feeds it what arrives (messages, the key's record, a decision's wake-up,
// the deadline) and carries out the one action each step returns. Being
// pure, it is what FuzzEnrolSession drives with hostile sequences.

// enrolLimits bound one enrolment session.
type enrolLimits struct {
	MaxPending int           // pending records beyond which a new key is deferred
	Request    time.Duration // for the EnrolRequest after the handshake
	Wait       time.Duration // for a decision while pending; then "ask again later"
	Ack        time.Duration // for the EnrolAck after the code was sent
}

type enrolPhase uint8

const (
	phaseRequest    enrolPhase = iota // waiting for the EnrolRequest
	phaseRecord                       // looking up (or creating) the key's record
	phaseWaiting                      // told "pending"; waiting for a decision
	phaseDelivering                   // code sent; waiting for the ack
	phaseDone
)

// enrolOp is what the driver must do next.
type enrolOp uint8

const (
	enrolNothing enrolOp = iota // wait for the next event
	enrolLookup                 // read the key's record, then call Record
	enrolCreate                 // record the request (pending, or approved by its token), then call Record
	enrolReply                  // send Reply, then wait
	enrolFinal                  // send Reply, then end the session
	enrolRefuse                 // send Refused{Reason, Retry} and close; count Metric and audit Audit if set
	enrolBad                    // a protocol violation: count and audit Audit (Err), close
	enrolConfirm                // the ack of Code arrived: confirm it, then end
	enrolEnd                    // end the session silently
)

// enrolAction is one step's output.
type enrolAction struct {
	Op     enrolOp
	Reply  message.EnrolReply
	Reason string
	Retry  bool
	Metric string // handshakes-refused reason label of a refusal
	Audit  string // audit action of a refusal or violation
	Err    error  // what the violation was
	Code   []byte // the code an ack confirms
}

// enrolView is the key's record as the driver read it.
type enrolView struct {
	Found   bool
	Agent   store.Agent
	Pending int // pending records in the registry now (for a new key)
}

// enrolSession is one enrolment session's state.
type enrolSession struct {
	lim      enrolLimits
	pub      [32]byte
	phase    enrolPhase
	req      message.EnrolRequest
	created  bool // this session asked for the record's creation (once only)
	waited   bool // entered phaseWaiting once: the wait bound is set
	deadline time.Time
	code     []byte
}

func newEnrolSession(pub [32]byte, lim enrolLimits, now time.Time) *enrolSession {
	return &enrolSession{lim: lim, pub: pub, phase: phaseRequest, deadline: now.Add(lim.Request)}
}

// Deadline is when the driver must call Timeout (zero: none pending).
func (m *enrolSession) Deadline() time.Time { return m.deadline }

// Waiting reports whether the session waits for a decision (and so,
// in the driver, no longer holds an enrolment slot).
func (m *enrolSession) Waiting() bool { return m.phase == phaseWaiting }

// Done reports whether the session has ended.
func (m *enrolSession) Done() bool { return m.phase == phaseDone }

// Request is the EnrolRequest as received (facts normalised).
func (m *enrolSession) Request() message.EnrolRequest { return m.req }

func (m *enrolSession) end(a enrolAction) enrolAction {
	m.phase = phaseDone
	m.deadline = time.Time{}
	clear(m.code)
	m.code = nil
	return a
}

func (m *enrolSession) bad(audit string, err error) enrolAction {
	return m.end(enrolAction{Op: enrolBad, Audit: audit, Err: err})
}

// Message is a message from the agent; err is set if it did not decode
// (message.ErrMalformed).
func (m *enrolSession) Message(env message.Envelope, err error) enrolAction {
	switch m.phase {
	case phaseRequest:
		if err != nil {
			return m.bad("enrol.malformed", err)
		}
		if env.Type != message.TypeEnrolRequest {
			return m.bad("enrol.unexpected", fmt.Errorf("%v, want %v", env.Type, message.TypeEnrolRequest))
		}
		req, err := message.Decode[message.EnrolRequest](env)
		if err != nil {
			return m.bad("enrol.malformed", err)
		}
		req.Facts = req.Facts.Normalize()
		m.req, m.phase, m.deadline = req, phaseRecord, time.Time{}
		return enrolAction{Op: enrolLookup}
	case phaseDelivering:
		if err == nil && env.Type == message.TypeEnrolAck {
			code := m.code
			m.code = nil // handed to the action: end must not wipe it
			return m.end(enrolAction{Op: enrolConfirm, Code: code})
		}
		if err != nil {
			return m.bad("enrol.malformed", err)
		}
		return m.bad("enrol.unexpected", fmt.Errorf("%v instead of an enrolment ack", env.Type))
	case phaseRecord, phaseWaiting:
		if err != nil {
			return m.bad("enrol.malformed", err)
		}
		return m.bad("enrol.unexpected", fmt.Errorf("%v while waiting for a decision", env.Type))
	}
	return enrolAction{Op: enrolEnd}
}

// Wake is a decision about the key (or its expiry): read the record again.
func (m *enrolSession) Wake() enrolAction {
	if m.phase != phaseWaiting {
		return enrolAction{}
	}
	return enrolAction{Op: enrolLookup}
}

// Timeout is the deadline passing.
func (m *enrolSession) Timeout(now time.Time) enrolAction {
	if m.deadline.IsZero() || now.Before(m.deadline) {
		return enrolAction{}
	}
	switch m.phase {
	case phaseWaiting:
		// A pending key does not keep a session (nor anything else) for
		// longer than the bound: the agent asks again after its backoff,
		// and an approval meanwhile waits for it on the record.
		return m.end(enrolAction{Op: enrolRefuse, Reason: "enrolment still pending; ask again later", Retry: true, Metric: "pending-wait"})
	case phaseDone:
		return enrolAction{Op: enrolEnd}
	}
	// A silent agent (no request, no ack): it comes back if it cares.
	return m.end(enrolAction{Op: enrolEnd})
}

// Record is the key's record as read (or as created) after a lookup.
func (m *enrolSession) Record(v enrolView, now time.Time) enrolAction {
	if m.phase != phaseRecord && m.phase != phaseWaiting {
		return enrolAction{}
	}
	if !v.Found {
		if m.created || m.waited {
			// The record went away under us: it expired.
			return m.end(enrolAction{Op: enrolRefuse, Reason: "enrolment expired without a decision; enrol again", Retry: true, Metric: "pending-expired"})
		}
		if m.req.Token == "" && v.Pending >= m.lim.MaxPending {
			return m.end(enrolAction{Op: enrolRefuse, Reason: "too many pending enrolments; retry later", Retry: true, Metric: "pending-full",
				Audit: fmt.Sprintf("%d enrolments already pending (limit %d)", v.Pending, m.lim.MaxPending)})
		}
		m.created = true
		return enrolAction{Op: enrolCreate}
	}
	a := v.Agent
	if a.PublicKey != m.pub {
		// Two keys whose 64-bit ids collide: never mix their records.
		return m.bad("enrol.id-collision", fmt.Errorf("agent id in use by another key"))
	}
	switch a.State {
	case store.StateApproved:
		if len(a.PendingCode) != identity.CodeLen {
			return m.end(enrolAction{Op: enrolRefuse, Reason: "already enrolled"})
		}
		m.code = slices.Clone(a.PendingCode)
		m.phase, m.deadline = phaseDelivering, now.Add(m.lim.Ack)
		return enrolAction{Op: enrolReply, Reply: message.EnrolReply{State: string(store.StateApproved), AgentID: a.ID, Code: m.code, Facts: a.Facts}}
	case store.StateRejected, store.StateRevoked:
		return m.end(enrolAction{Op: enrolFinal, Reply: message.EnrolReply{State: string(a.State), AgentID: a.ID, Reason: "enrolment " + string(a.State)}})
	case store.StatePending:
		if a.Refusal != "" {
			// Its approval was refused (the name is taken): tell the
			// agent why rather than let it wait unknowing.
			return m.end(enrolAction{Op: enrolRefuse, Reason: nameTakenReason(a.Name)})
		}
		if !m.waited {
			m.waited, m.deadline = true, now.Add(m.lim.Wait)
		}
		m.phase = phaseWaiting
		if !now.Before(m.deadline) {
			return m.Timeout(now)
		}
		return enrolAction{Op: enrolReply, Reply: message.EnrolReply{State: string(store.StatePending), AgentID: a.ID, Facts: a.Facts}}
	}
	return m.bad("enrol.state", fmt.Errorf("record in unknown state %q", a.State))
}

// expiredPending lists the pending agents enrolled at or before cutoff
// (now minus the pending TTL), oldest first: the records agent.expire
// removes.
func expiredPending(agents []store.Agent, cutoff time.Time) []store.Agent {
	var out []store.Agent
	for _, a := range agents {
		if a.State == store.StatePending && !a.EnrolledAt.After(cutoff) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(x, y store.Agent) int { return x.EnrolledAt.Compare(y.EnrolledAt) })
	return out
}
