package message

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/migration"
)

// Type identifies a message body on the wire.
type Type uint16

// Body is a message body: it knows its own type, so a sender never names
// it separately (and cannot name the wrong one).
type Body interface{ Type() Type }

// Message types. Numbers are wire values: never reuse one. Adding a kind
// is a constant and its name here, the body type with its Type method
// (and a check method if it has fields to bound) below, and a handler on
// the side that receives it.
const (
	TypeEnrolRequest    Type = 1
	TypeEnrolReply      Type = 2
	TypeHello           Type = 3
	TypeWelcome         Type = 4
	TypeRefused         Type = 5
	TypeChallenge       Type = 6
	TypeChallengeAnswer Type = 7
	TypeTimeRequest     Type = 8
	TypeTimeReply       Type = 9
	TypeEnrolAck        Type = 10
	TypeReport          Type = 11
	TypeAction          Type = 12
	TypeActionResult    Type = 13
	TypePolicy          Type = 14
	TypePolicyAck       Type = 15
	TypeEvent           Type = 16
	TypeEventAck        Type = 17
	TypeBoardPost       Type = 18
	TypeBoardEntry      Type = 19
	TypeBoardRead       Type = 20
	TypePeerHello       Type = 21
	TypeMembers         Type = 22
	TypeRedirect        Type = 23
	TypeJoinRequest     Type = 24
	TypeJoinReply       Type = 25
	TypeJoinReady       Type = 26
	TypeJoinDone        Type = 27
	TypeLeader          Type = 28
)

var typeNames = map[Type]string{
	TypeEnrolRequest:    "enrol-request",
	TypeEnrolReply:      "enrol-reply",
	TypeHello:           "hello",
	TypeWelcome:         "welcome",
	TypeRefused:         "refused",
	TypeChallenge:       "challenge",
	TypeChallengeAnswer: "challenge-answer",
	TypeTimeRequest:     "time-request",
	TypeTimeReply:       "time-reply",
	TypeEnrolAck:        "enrol-ack",
	TypeReport:          "report",
	TypeAction:          "action",
	TypeActionResult:    "action-result",
	TypePolicy:          "policy",
	TypePolicyAck:       "policy-ack",
	TypeEvent:           "event",
	TypeEventAck:        "event-ack",
	TypeBoardPost:       "board-post",
	TypeBoardEntry:      "board-entry",
	TypeBoardRead:       "board-read",
	TypePeerHello:       "peer-hello",
	TypeMembers:         "members",
	TypeRedirect:        "redirect",
	TypeJoinRequest:     "join-request",
	TypeJoinReply:       "join-reply",
	TypeJoinReady:       "join-ready",
	TypeJoinDone:        "join-done",
	TypeLeader:          "leader",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type-%d", uint16(t))
}

// EnrolRequest is an unknown agent's first message: who it is and,
// optionally, a join token that pre-approves it.
type EnrolRequest struct {
	Facts identity.Facts `cbor:"1,keyasint"`
	Name  string         `cbor:"2,keyasint"`
	Site  string         `cbor:"3,keyasint"`
	Token string         `cbor:"4,keyasint,omitempty"`
}

// Type implements Body.
func (EnrolRequest) Type() Type { return TypeEnrolRequest }

func (m *EnrolRequest) check() error {
	for _, s := range []string{m.Name, m.Site, m.Token} {
		if err := identity.CheckLabel(s, 128); err != nil {
			return err
		}
	}
	return m.Facts.Validate()
}

// EnrolReply tells an enrolling agent where it stands. On approval it
// carries the registration code M and the facts the MMC recorded (the psk is
// derived from them).
type EnrolReply struct {
	State   string         `cbor:"1,keyasint"` // pending, approved, rejected
	AgentID string         `cbor:"2,keyasint"`
	Code    []byte         `cbor:"3,keyasint,omitempty"`
	Facts   identity.Facts `cbor:"4,keyasint"`
	Reason  string         `cbor:"5,keyasint,omitempty"`
}

// Type implements Body.
func (EnrolReply) Type() Type { return TypeEnrolReply }

func (m *EnrolReply) check() error {
	if m.Code != nil && len(m.Code) != identity.CodeLen {
		return errors.New("registration code has the wrong length")
	}
	return nil
}

// EnrolAck confirms that the agent stored its registration code; the MMC
// then forgets the code and admits the key to full sessions.
type EnrolAck struct{}

// Type implements Body.
func (EnrolAck) Type() Type { return TypeEnrolAck }

// Hello is an enrolled agent's first message in a session: its current
// facts, checked against the enrolled ones.
type Hello struct {
	Facts   identity.Facts `cbor:"1,keyasint"`
	Name    string         `cbor:"2,keyasint"`
	Site    string         `cbor:"3,keyasint"`
	Version string         `cbor:"4,keyasint"`
	// Standby opens a watch session instead of a login: the member
	// answers with Leader now and whenever the leadership moves, and
	// orders nothing. An agent keeps one at a member other than the one
	// serving it, so that it learns of a new leader as soon as the
	// cluster elects one instead of when its session times out.
	Standby bool `cbor:"5,keyasint,omitempty"`
	// Protocol is the control protocol the agent speaks
	// (ProtocolVersion; 0 from agents older than the field: protocol 1).
	Protocol uint16 `cbor:"6,keyasint,omitempty"`
}

// Type implements Body.
func (Hello) Type() Type { return TypeHello }

func (m *Hello) check() error {
	for _, s := range []string{m.Name, m.Site, m.Version} {
		if err := identity.CheckLabel(s, 128); err != nil {
			return err
		}
	}
	return m.Facts.Validate()
}

// Welcome accepts a Hello. Term is the serving leader's term (as on its
// orders): an agent raises the highest term it has obeyed to it, so a
// deposed leader it reaches later can order it nothing, and refuses a
// Welcome below that term (a stale member: it tries another).
type Welcome struct {
	AgentID string `cbor:"1,keyasint"`
	Term    uint64 `cbor:"2,keyasint,omitempty"`
	// Version is the MMC's release (`ferry version`), Protocol the
	// control protocol it speaks: the agent logs a release that differs
	// from its own.
	Version  string `cbor:"3,keyasint,omitempty"`
	Protocol uint16 `cbor:"4,keyasint,omitempty"`
}

// Type implements Body.
func (Welcome) Type() Type { return TypeWelcome }

// MaxMembers bounds an MMC member list (a cluster is one MMC per site and
// a witness: a handful).
const MaxMembers = 16

// Member is one MMC of the cluster as agents dial it.
type Member struct {
	Addr string `cbor:"1,keyasint"` // host:port of its SUDP listener
	Key  []byte `cbor:"2,keyasint"` // its X25519 static public key
}

func (m *Member) check() error {
	if len(m.Key) != 32 {
		return errors.New("member: key must be 32 bytes")
	}
	if m.Addr == "" {
		return errors.New("member: no address")
	}
	return identity.CheckLabel(m.Addr, 128)
}

// Members is the MMC telling a logged-in agent the cluster's current
// members, after Welcome and whenever they change. Version increases with
// every change (the raft configuration index); an agent keeps the list
// with the highest version it was sent, across restarts, and dials those
// members from then on instead of its bundle's.
type Members struct {
	Version uint64   `cbor:"1,keyasint"`
	MMCs    []Member `cbor:"2,keyasint"`
}

// Type implements Body.
func (Members) Type() Type { return TypeMembers }

func (m *Members) check() error {
	if len(m.MMCs) == 0 || len(m.MMCs) > MaxMembers {
		return fmt.Errorf("members: %d members, want 1–%d", len(m.MMCs), MaxMembers)
	}
	for i := range m.MMCs {
		if err := m.MMCs[i].check(); err != nil {
			return err
		}
	}
	return nil
}

// Redirect answers a Hello (or an EnrolRequest) at an MMC that cannot
// serve the agent — a member that is not the leader: the agent should dial
// Leader next. The MMC then closes the session with CodeNotLeader.
type Redirect struct {
	Leader Member `cbor:"1,keyasint"`
}

// Type implements Body.
func (Redirect) Type() Type { return TypeRedirect }

func (m *Redirect) check() error { return m.Leader.check() }

// Refused ends a session with a reason the agent logs.
type Refused struct {
	Reason string `cbor:"1,keyasint"`
	Retry  bool   `cbor:"2,keyasint,omitempty"` // a temporary condition: try again later
}

// Type implements Body.
func (Refused) Type() Type { return TypeRefused }

// Challenge is the MMC's periodic re-authentication challenge: an
// increasing identifier and a fresh nonce.
type Challenge struct {
	Seq   uint64 `cbor:"1,keyasint"`
	Nonce []byte `cbor:"2,keyasint"`
}

// Type implements Body.
func (Challenge) Type() Type { return TypeChallenge }

func (m *Challenge) check() error {
	if len(m.Nonce) != identity.NonceLen {
		return errors.New("nonce has the wrong length")
	}
	return nil
}

// ChallengeAnswer carries identity.ReauthMAC for a Challenge.
type ChallengeAnswer struct {
	Seq uint64 `cbor:"1,keyasint"`
	MAC []byte `cbor:"2,keyasint"`
}

// Type implements Body.
func (ChallengeAnswer) Type() Type { return TypeChallengeAnswer }

// TimeRequest and TimeReply are the NTP-style exchange: T1 is the agent's
// send time, T2 the MMC's receive time, T3 the MMC's send time (Unix
// nanoseconds); the agent notes T4 on receipt.
type TimeRequest struct {
	T1 int64 `cbor:"1,keyasint"`
}

// Type implements Body.
func (TimeRequest) Type() Type { return TypeTimeRequest }

// TimeReply answers a TimeRequest.
type TimeReply struct {
	T1 int64 `cbor:"1,keyasint"`
	T2 int64 `cbor:"2,keyasint"`
	T3 int64 `cbor:"3,keyasint"`
}

// Type implements Body.
func (TimeReply) Type() Type { return TypeTimeReply }

// Close codes with which the MMC ends agent sessions (SUDP application
// error codes); an agent treats CodeRevoked and CodeFactsChanged as final.
const (
	CodeRevoked      = 0x100 + iota // the agent was revoked
	CodeReauthFailed                // wrong or late challenge answer
	CodeFactsChanged                // a stable host fact changed
	CodeProtocol                    // unexpected or malformed message
	CodeReplaced                    // a newer session of the same agent
	CodeNotLeader                   // sent a Redirect: dial the leader it names
)

// HostStats is a host's resource use as the monitor (SMA) measures it:
// S = {S_Cpu, S_Mem, S_Net} of the paper, plus swap activity.
type HostStats struct {
	CPU     float64 `cbor:"1,keyasint" json:"cpu"`      // 0–1 of all cores
	Mem     float64 `cbor:"2,keyasint" json:"mem"`      // 0–1 of RAM in use
	SwapIn  float64 `cbor:"3,keyasint" json:"swap_in"`  // bytes/s
	SwapOut float64 `cbor:"4,keyasint" json:"swap_out"` // bytes/s
	Net     float64 `cbor:"5,keyasint" json:"net"`      // bytes/s, both directions
	Cores   int     `cbor:"6,keyasint" json:"cores"`
	MemSize uint64  `cbor:"7,keyasint" json:"mem_bytes"`
}

// VMReport is one VM in a report.
type VMReport struct {
	VM    hypervisor.VM    `cbor:"1,keyasint"`
	Stats hypervisor.Stats `cbor:"2,keyasint"`
}

// Report is the monitor's periodic report of its host and VMs.
type Report struct {
	Time int64      `cbor:"1,keyasint"` // agent's clock, Unix ns
	Host HostStats  `cbor:"2,keyasint"`
	VMs  []VMReport `cbor:"3,keyasint"`
}

// Type implements Body.
func (Report) Type() Type { return TypeReport }

func (m *Report) check() error {
	if len(m.VMs) > 4096 {
		return errors.New("too many VMs in one report")
	}
	for _, v := range m.VMs {
		if err := identity.CheckLabel(v.VM.ID, 128); err != nil {
			return err
		}
		if err := identity.CheckLabel(v.VM.Name, 128); err != nil {
			return err
		}
	}
	return nil
}

// Action is a command from the MMC for the agent's hypervisor or its
// migration role. Every op is an order: each is fenced by Term.
type Action struct {
	ID       uint64               `cbor:"1,keyasint"`
	Op       string               `cbor:"2,keyasint"` // vm.*, peer.*, migrate.* (see the agent's act)
	VM       string               `cbor:"3,keyasint,omitempty"`
	Spec     *hypervisor.Spec     `cbor:"4,keyasint,omitempty"`
	Workload *hypervisor.Workload `cbor:"5,keyasint,omitempty"`
	Intro    *Introduction        `cbor:"6,keyasint,omitempty"`
	Mig      *migration.Order     `cbor:"7,keyasint,omitempty"`
	Withdraw *Withdrawal          `cbor:"8,keyasint,omitempty"` // peer.withdraw
	// Term is the term of the MMC leader that gave the order (fencing:
	// an agent refuses an order whose term is below the highest it has
	// obeyed; see package fence). Zero: an MMC without fencing.
	Term uint64 `cbor:"9,keyasint,omitempty"`
}

// Type implements Body.
func (Action) Type() Type { return TypeAction }

func (m *Action) check() error {
	if m.Withdraw != nil {
		if len(m.Withdraw.PeerKey) != 32 {
			return errors.New("withdrawal: key must be 32 bytes")
		}
		if err := identity.CheckLabel(m.Withdraw.PeerID, 128); err != nil {
			return err
		}
	}
	if m.Intro != nil {
		if err := m.Intro.check(); err != nil {
			return err
		}
	}
	if m.Mig != nil {
		for _, s := range []string{m.Mig.ID, m.Mig.Topic, m.Mig.VM} {
			if err := identity.CheckLabel(s, 128); err != nil {
				return err
			}
		}
		return m.Mig.Check()
	}
	return nil
}

// Withdrawal is the MMC withdrawing an agent it revoked from another it
// introduced it to (peer.withdraw): close every direct link with that
// agent at once, drop any introduction of its key, and admit no new
// connection from it.
type Withdrawal struct {
	PeerID  string `cbor:"1,keyasint"`
	PeerKey []byte `cbor:"2,keyasint"` // X25519 static public key
}

// Introduction is the MMC introducing two agents to each other for one job
// (a migration): the peer's identity, where it was last seen, and a fresh
// one-time ticket both use as the psk of their direct SUDP handshake. The
// listening side (peer.expect) admits exactly one connection from that key
// with that ticket before Expires; the other side (peer.dial) connects.
// Agents never learn each other's registration codes.
type Introduction struct {
	Topic    string `cbor:"1,keyasint"` // blackboard topic of the job, e.g. migration/m7
	PeerID   string `cbor:"2,keyasint"`
	PeerAddr string `cbor:"3,keyasint"` // UDP address as the MMC sees it
	PeerKey  []byte `cbor:"4,keyasint"` // X25519 static public key
	Ticket   []byte `cbor:"5,keyasint"` // 32 random bytes, used once
	Expires  int64  `cbor:"6,keyasint"` // Unix ns, MMC clock
	// PunchAt, when set, is when both agents start hole punching (Unix
	// ns, MMC clock), for Window ns (package punch); zero: the dialer
	// dials at once, as before punching.
	PunchAt int64 `cbor:"7,keyasint,omitempty"`
	Window  int64 `cbor:"8,keyasint,omitempty"`
	// RelayAddr, when set, is the relay port this agent's side of the
	// link runs through (package relay): the agent binds its address
	// there with RelayKey (32 bytes) for allocation RelayAlloc, then the
	// link's SUDP connection goes to RelayAddr instead of the peer.
	RelayAddr  string `cbor:"9,keyasint,omitempty"`
	RelayAlloc uint64 `cbor:"10,keyasint,omitempty"`
	RelayKey   []byte `cbor:"11,keyasint,omitempty"`
}

func (m *Introduction) check() error {
	if len(m.PeerKey) != 32 || len(m.Ticket) != 32 {
		return errors.New("introduction: key and ticket must be 32 bytes")
	}
	if err := identity.CheckLabel(m.Topic, 128); err != nil {
		return err
	}
	if err := identity.CheckLabel(m.PeerID, 128); err != nil {
		return err
	}
	if m.PunchAt < 0 || m.Window < 0 || m.Window > int64(time.Minute) {
		return errors.New("introduction: punch time or window out of range")
	}
	if m.RelayAddr != "" && len(m.RelayKey) != 32 {
		return errors.New("introduction: a relay needs a 32-byte key")
	}
	if err := identity.CheckLabel(m.RelayAddr, 128); m.RelayAddr != "" && err != nil {
		return err
	}
	return identity.CheckLabel(m.PeerAddr, 128)
}

// BoardPost is an agent writing a typed entry on a blackboard topic it
// takes part in (see package board for the kinds); the MMC records it and
// relays it to the topic's other members.
type BoardPost struct {
	Topic string `cbor:"1,keyasint"`
	Kind  string `cbor:"2,keyasint"`
	Body  []byte `cbor:"3,keyasint"` // CBOR of the kind's type
}

// Type implements Body.
func (BoardPost) Type() Type { return TypeBoardPost }

func (m *BoardPost) check() error {
	if err := identity.CheckLabel(m.Topic, 128); err != nil {
		return err
	}
	if len(m.Body) > 16<<10 {
		return errors.New("board entry body too large")
	}
	return identity.CheckLabel(m.Kind, 64)
}

// BoardEntry is a recorded entry, sent to the topic's members.
type BoardEntry struct {
	Topic string `cbor:"1,keyasint"`
	Seq   uint64 `cbor:"2,keyasint"` // per topic, from 1
	Time  int64  `cbor:"3,keyasint"` // MMC clock, Unix ns
	From  string `cbor:"4,keyasint"` // agent id, or "mmc"
	Kind  string `cbor:"5,keyasint"`
	Body  []byte `cbor:"6,keyasint"`
}

// Type implements Body.
func (BoardEntry) Type() Type { return TypeBoardEntry }

// BoardRead asks the MMC for a topic's entries after Seq (answered with
// BoardEntry messages).
type BoardRead struct {
	Topic string `cbor:"1,keyasint"`
	After uint64 `cbor:"2,keyasint"`
}

// Type implements Body.
func (BoardRead) Type() Type { return TypeBoardRead }

// ActionResult answers an Action.
type ActionResult struct {
	ID    uint64            `cbor:"1,keyasint"`
	OK    bool              `cbor:"2,keyasint"`
	Error string            `cbor:"3,keyasint,omitempty"`
	VM    *hypervisor.VM    `cbor:"4,keyasint,omitempty"`
	Mig   *migration.Report `cbor:"5,keyasint,omitempty"`
	// Fenced, on an order the agent refused for its term, is the highest
	// term the agent has obeyed: a newer leader exists.
	Fenced uint64 `cbor:"6,keyasint,omitempty"`
}

// Type implements Body.
func (ActionResult) Type() Type { return TypeActionResult }

// Policy pushes the MMC's policy (a JSON document, see package policy) to
// an agent; the agent answers with PolicyAck for the version it enforces.
type Policy struct {
	Version uint64 `cbor:"1,keyasint"`
	Doc     []byte `cbor:"2,keyasint"`
}

// Type implements Body.
func (Policy) Type() Type { return TypePolicy }

// PolicyAck names the policy version an agent enforces.
type PolicyAck struct {
	Version uint64 `cbor:"1,keyasint"`
}

// Type implements Body.
func (PolicyAck) Type() Type { return TypePolicyAck }

// Event is a log line or an alarm from an agent. Seq numbers an agent's
// events so that the MMC can acknowledge them and drop resent duplicates:
// an agent keeps every event until it is acknowledged, across lost
// sessions.
type Event struct {
	Seq     uint64 `cbor:"1,keyasint"`
	Time    int64  `cbor:"2,keyasint"` // agent clock, Unix ns
	Alarm   bool   `cbor:"3,keyasint"`
	Level   string `cbor:"4,keyasint"` // info, warn, error
	Kind    string `cbor:"5,keyasint"` // e.g. clock-offset, vm-stopped
	Message string `cbor:"6,keyasint"`
}

// Type implements Body.
func (Event) Type() Type { return TypeEvent }

func (m *Event) check() error {
	if err := identity.CheckLabel(m.Kind, 64); err != nil {
		return err
	}
	if err := identity.CheckLabel(m.Level, 16); err != nil {
		return err
	}
	return identity.CheckLabel(m.Message, 4096)
}

// EventAck acknowledges the event numbered Seq (stored at the MMC). Acks
// are per event, not cumulative: messages travel on separate streams and
// may arrive out of order.
type EventAck struct {
	Seq uint64 `cbor:"1,keyasint"`
}

// Type implements Body.
func (EventAck) Type() Type { return TypeEventAck }

// PeerHello is the first message each way on a direct agent-to-agent
// connection: it names the job the MMC introduced them for, so each side
// knows the connection serves that job and no other.
type PeerHello struct {
	Topic string `cbor:"1,keyasint"`
	From  string `cbor:"2,keyasint"` // sender's agent id
}

// Type implements Body.
func (PeerHello) Type() Type { return TypePeerHello }

func (m *PeerHello) check() error {
	if err := identity.CheckLabel(m.Topic, 128); err != nil {
		return err
	}
	return identity.CheckLabel(m.From, 128)
}

// JoinRequest is a new MMC's first message on an enrolment session to a
// member of the cluster it joins (ferry mmc --join): the one-use join
// token an administrator created (ferry ctl mmcs join-token), the SUDP
// address the other members and the agents reach it at, and its admin
// API URL. Its static key is the session's: never a claim in the body.
type JoinRequest struct {
	Token string `cbor:"1,keyasint"`
	Addr  string `cbor:"2,keyasint"`
	Admin string `cbor:"3,keyasint,omitempty"`
}

// Type implements Body.
func (JoinRequest) Type() Type { return TypeJoinRequest }

func (m *JoinRequest) check() error {
	if m.Token == "" || m.Addr == "" {
		return errors.New("join request: token and address are required")
	}
	for _, s := range []string{m.Token, m.Addr, m.Admin} {
		if err := identity.CheckLabel(s, 256); err != nil {
			return err
		}
	}
	return nil
}

// ClusterMember is one MMC as the members know each other: its raft id,
// SUDP address and static key.
type ClusterMember struct {
	ID   string `cbor:"1,keyasint"`
	Addr string `cbor:"2,keyasint"`
	Key  []byte `cbor:"3,keyasint"`
}

func (m *ClusterMember) check() error {
	if len(m.Key) != 32 {
		return errors.New("cluster member: key must be 32 bytes")
	}
	if m.ID == "" || m.Addr == "" {
		return errors.New("cluster member: id and address are required")
	}
	if err := identity.CheckLabel(m.ID, 128); err != nil {
		return err
	}
	return identity.CheckLabel(m.Addr, 128)
}

// JoinReply admits a joining MMC: the secrets every member holds (the
// cluster secret that keys raft connections between members, the admin
// token valid on every member), the members it must accept raft
// connections from, and the log index it must have applied before it
// may vote (CatchUp). It travels only inside the session the joiner
// opened to a member's pinned key, after its join token checked out.
type JoinReply struct {
	ClusterSecret []byte          `cbor:"1,keyasint"`
	AdminToken    string          `cbor:"2,keyasint"`
	Members       []ClusterMember `cbor:"3,keyasint"`
	CatchUp       uint64          `cbor:"4,keyasint"`
	// ID is the joiner's raft id as the leader recorded it.
	ID string `cbor:"5,keyasint"`
}

// Type implements Body.
func (JoinReply) Type() Type { return TypeJoinReply }

func (m *JoinReply) check() error {
	if len(m.ClusterSecret) != 32 {
		return errors.New("join reply: cluster secret must be 32 bytes")
	}
	if err := identity.CheckLabel(m.AdminToken, 128); err != nil {
		return err
	}
	if m.ID == "" || len(m.Members) == 0 || len(m.Members) > MaxMembers {
		return fmt.Errorf("join reply: %d members, want 1–%d, and an id", len(m.Members), MaxMembers)
	}
	for i := range m.Members {
		if err := m.Members[i].check(); err != nil {
			return err
		}
	}
	return identity.CheckLabel(m.ID, 128)
}

// JoinReady tells the leader that the joiner applied the log up to the
// reply's CatchUp index as a non-voter: it may now be made a voter
// without stalling the cluster's commits while it catches up.
type JoinReady struct {
	Applied uint64 `cbor:"1,keyasint"`
}

// Type implements Body.
func (JoinReady) Type() Type { return TypeJoinReady }

// JoinDone tells the joiner it is a voter.
type JoinDone struct{}

// Type implements Body.
func (JoinDone) Type() Type { return TypeJoinDone }

// Leader is a member telling an agent's standby session which member
// leads the cluster (Hello.Standby): at once, and again whenever the
// leadership moves. An agent served by another member moves to it.
type Leader struct {
	Leader Member `cbor:"1,keyasint"`
}

// Type implements Body.
func (Leader) Type() Type { return TypeLeader }

func (m *Leader) check() error { return m.Leader.check() }
