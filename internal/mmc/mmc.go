// Package mmc is the Migration Management Center: it enrols agents (with an
// administrator's approval or a join token), authenticates their sessions,
// re-authenticates them periodically, answers their clock probes, keeps the
// audit log, and serves the admin API that `ferry ctl` drives.
//
// Concurrency: the SUDP endpoint's handshake Lookup reads an in-memory
// snapshot of the agents (it runs on the endpoint's reader goroutine and
// must not touch the disk), held with the live sessions by the registry
// (registry.go); every change goes to the store first and then to that
// snapshot. Each agent session has one goroutine (plus a reader it
// owns); audit entries raised on the handshake path are queued to a writer
// goroutine.
package mmc

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/board"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/inventory"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/relay"
	"github.com/ferry-vm/ferry/internal/store"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

// Defaults, as fixed by CLI.md. Neither port is assigned in IANA's
// registry; 7946 is also the unregistered default of memberlist-based
// gossip (Serf, Consul, Nomad) and Docker Swarm, so a host running one of
// those needs --listen (portHint says so when the bind fails).
const (
	DefaultListen = "0.0.0.0:7946"
	DefaultAdmin  = "127.0.0.1:7947"
)

// portHint tells an operator who sees "address already in use" what to
// do about it, and names the usual owners of the default SUDP port:
// Ferry installed beside Docker Swarm or Consul meets them first.
func portHint(err error, flag string) string {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return ""
	}
	hint := " (another program holds this port; choose another with " + flag
	if flag == "--listen" {
		hint += ". UDP 7946, the default, is also used by Docker Swarm and by memberlist-based tools such as Consul, Serf and Nomad; agents learn a changed address from the bundle"
	}
	return hint + ")"
}

// DefaultRaftTimeout is raft's heartbeat and election timeout between
// members: 700 ms rather than raft's 1 s. Measured (docs/BENCHMARKS.md
// §11, 20 kills of the leader each): at 1 s the first write at a survivor
// took up to 3.84 s on loopback (p99; target 3 s) — with pre-vote, the
// election waits until both survivors' randomised timeouts ([t, 2t))
// have passed — at 700 ms 2.74 s on loopback and 3.55 s across the WAN
// lab (50 ms RTT, 1 % loss; target 5 s), with every agent back within
// 2.80 s and 4.46 s. A follower times out only after missing ten
// heartbeats (one every t/10) in a row, which 1 % loss does not cause.
const DefaultRaftTimeout = 700 * time.Millisecond

// Files in the data directory.
const (
	AdminTokenFile = "admin.token"
	ClusterIDFile  = "cluster.id"
	BundleFile     = "bundle"
	dbFile         = "mmc.db"
)

// Login states sent in the handshake response.
const (
	LoginEnrolling uint8 = 1 // unknown key: enrolment session only
	LoginPending   uint8 = 2 // enrolled, waiting for a decision
	LoginApproved  uint8 = 3 // full session
)

// Config configures an MMC.
type Config struct {
	DataDir string
	// KeyFile is the MMC's static private key (default DataDir/node.key):
	// kept apart from the data directory, a backup of that directory
	// holds no key that can impersonate the MMC.
	KeyFile string
	Listen  string // SUDP address
	Admin   string // admin API address ("" = DefaultAdmin; "-" = none)
	// AdminTLS is TLSAuto (default: TLS unless Admin is loopback), TLSOn
	// or TLSOff; AdminCert and AdminKey name the certificate files
	// (default: a self-signed one in DataDir, created on first use).
	AdminTLS, AdminCert, AdminKey string
	// Advertise is the address agents are told to dial (in the bundle);
	// default: Listen, with an unspecified host replaced by 127.0.0.1.
	Advertise string
	// Re-authentication: a challenge at a uniformly random time in
	// [ReauthMin, ReauthMax] after the previous one; an answer must arrive
	// within ReauthTimeout.
	ReauthMin, ReauthMax, ReauthTimeout time.Duration
	// AllowChangedFacts logs a changed MAC or disk id instead of refusing
	// the login (the alarm is raised either way).
	AllowChangedFacts bool
	// TokenFailures limits join-token attempts per source address.
	TokenFailures ratelimit.Config
	// PolicyInterval is how often the policy engine evaluates the
	// reports (default 5 s).
	PolicyInterval time.Duration
	// MaxPending bounds enrolments waiting for a decision (default 1000);
	// MaxEnrolSessions the enrolment requests being read and recorded at
	// once (default 256; a session waiting for a decision holds none).
	// Anyone holding the bundle can start an enrolment: these bound what
	// that costs the MMC.
	MaxPending, MaxEnrolSessions int
	// AuditMaxAge and AuditMaxEntries bound the audit log's retention
	// (0: DefaultAuditMaxAge, DefaultAuditMaxEntries; negative: no limit);
	// it is pruned at start and hourly.
	AuditMaxAge     time.Duration
	AuditMaxEntries int
	// EventsMaxAge bounds how long logs and alarms are kept, RecordsMaxAge
	// finished migrations and evacuations (0: DefaultEventsMaxAge,
	// DefaultRecordsMaxAge; negative: kept, up to store.MaxEvents events).
	// Server.SetRetention changes all four while the MMC runs.
	EventsMaxAge  time.Duration
	RecordsMaxAge time.Duration
	Logger        *slog.Logger
	// Version is this MMC's release (`ferry version`): agents are told
	// it, and the API flags agents running another.
	Version string
	Rand    io.Reader
	Now     func() time.Time

	// raftStart overrides startTimeout (tests: a one-member cluster
	// cannot lose a lease, so they elect it in tens of milliseconds).
	raftStart time.Duration
	// raftTune adjusts raft's configuration after the defaults (tests of
	// multi-member clusters shorten the timeouts).
	raftTune func(*raft.Config)
	// RaftTimeout is raft's heartbeat and election timeout (0:
	// DefaultRaftTimeout); the leader lease is half of it. Shorter elects
	// a new leader sooner after one is lost, at the risk of needless
	// elections on a slow or lossy link between members.
	RaftTimeout time.Duration

	// Relay, if set, runs a relay inside the MMC (package relay): agents
	// that cannot punch a direct path to each other get their link
	// through it.
	Relay *RelayConfig
	// LinkUpgradeEvery is how often a relayed link is tried for a direct
	// path while it lives (0: DefaultLinkUpgradeEvery).
	LinkUpgradeEvery time.Duration

	// Join, on a data directory with no raft state, joins the cluster of
	// the MMCs in its bundle with its token instead of bootstrapping a
	// one-member cluster (join.go). Ignored once this MMC is a member.
	Join *JoinConfig

	// EnrolWait bounds how long a pending enrolment session waits for a
	// decision before the MMC tells the agent to ask again (default 1
	// min); PendingTTL how long a pending record waits for one before it
	// expires and its key may enrol afresh (default 24 h).
	EnrolWait, PendingTTL time.Duration

	// Cluster is this MMC's place in a replicated cluster (issue 18);
	// nil: a single MMC (cluster.go).
	Cluster Cluster
}

func (c *Config) defaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Admin == "" {
		c.Admin = DefaultAdmin
	}
	if c.RaftTimeout <= 0 {
		c.RaftTimeout = DefaultRaftTimeout
	}
	if c.ReauthMin <= 0 {
		c.ReauthMin = 30 * time.Second
	}
	if c.ReauthMax < c.ReauthMin {
		c.ReauthMax = 3 * c.ReauthMin
	}
	if c.ReauthTimeout <= 0 {
		c.ReauthTimeout = 10 * time.Second
	}
	if c.TokenFailures.Rate == 0 {
		// One guess per 10 s per source after a burst of 5: guessing a
		// 256-bit secret was hopeless anyway; this keeps the log readable
		// and the work bounded.
		c.TokenFailures = ratelimit.Config{Rate: 0.1, Burst: 5}
	}
	if c.PolicyInterval <= 0 {
		c.PolicyInterval = 5 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 1000
	}
	if c.MaxEnrolSessions <= 0 {
		c.MaxEnrolSessions = 256
	}
	if c.AuditMaxAge == 0 {
		c.AuditMaxAge = DefaultAuditMaxAge
	}
	if c.AuditMaxEntries == 0 {
		c.AuditMaxEntries = DefaultAuditMaxEntries
	}
	if c.EventsMaxAge == 0 {
		c.EventsMaxAge = DefaultEventsMaxAge
	}
	if c.RecordsMaxAge == 0 {
		c.RecordsMaxAge = DefaultRecordsMaxAge
	}
	if c.EnrolWait <= 0 {
		c.EnrolWait = time.Minute
	}
	if c.PendingTTL <= 0 {
		c.PendingTTL = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Server is a running MMC.
type Server struct {
	cfg  Config
	log  *slog.Logger
	st   *store.Store
	repl *replicated // the raft member every store write goes through
	// member is repl once it is open: the handshake's Lookup and the
	// accept loop, which run from before, read it.
	member    atomic.Pointer[replicated]
	ep        *sudp.Endpoint
	linkRelay *relay.Relay // nil: no relay (Config.Relay)
	relayed   relayedLinks
	clusterID string
	enrolPSK  [32]byte
	adminTok  []byte
	metrics   *metrics
	audit     *auditor
	tokenRL   *ratelimit.Limiter
	adminLn   net.Listener
	adminTLS  *tls.Config // nil: plain HTTP (loopback only)

	// reg holds the agents as the handshake, the sessions and the host
	// index see them (registry.go).
	reg *registry

	// tokenMu guards tokenRL, which is not safe for concurrent use:
	// enrolment sessions check tokens concurrently.
	tokenMu sync.Mutex

	enrolSlots chan struct{} // a token per enrolment session in progress

	// invMu guards inv, the MMC's inventory of VMs: the store's VM
	// records and migrations mirrored (every change goes to the store
	// first, then here), the agents' latest reports checked against
	// them. Lock order: the registry's lock before invMu (the registry
	// mirrors its changes into the inventory with its lock held).
	invMu sync.Mutex
	inv   *inventory.Inventory

	board *board.Board

	orch *orchestrator
	pol  *policyLoop
	// introPairs serialises introductions of the same two agents.
	introPairs pairLocks
	// retention is the retention in force (retention.go).
	retention atomic.Pointer[Retention]
	pruneNow  chan struct{}
	// evacKick wakes the evacuation driver (evacuations.go) early.
	evacKick chan struct{}

	// leading: this member leads and has taken up the leadership
	// (leader.go); term is the fencing term it took then.
	leading atomic.Bool
	term    atomic.Uint64
	// agentMembers is the member list agents are sent (syncMembers).
	agentMembers atomic.Pointer[message.Members]
	dirty        *dirtySet
	// lwatch follows the leader this member knows; standby holds the
	// agents' standby sessions (standby.go).
	lwatch  *leaderWatch
	standby standbys

	// accepting gates agents' handshakes until the registry is loaded
	// (the end of New); member connections are dispatched from the
	// start (raft needs them to catch up).
	accepting  atomic.Bool
	agentConns chan *sudp.Conn

	// fwdClients are the HTTP clients over admin streams to other
	// members (forward.go), one per member address.
	fwdMu      sync.Mutex
	fwdClients map[raft.ServerAddress]*http.Client
	stopAccept context.CancelFunc
	acceptDone chan struct{}
}

// New opens the data directory (creating keys, cluster id and admin token
// on first start), binds the SUDP listener and the admin API, and starts
// (or joins) the replicated store.
func New(cfg Config) (*Server, error) {
	cfg.defaults()
	if cfg.DataDir == "" {
		return nil, errors.New("mmc: no data directory")
	}
	keyFile := cfg.KeyFile
	if keyFile == "" {
		keyFile = filepath.Join(cfg.DataDir, identity.KeyFile)
	}
	static, err := identity.LoadOrCreateKeyFile(keyFile, cfg.Rand)
	if err != nil {
		return nil, err
	}
	joining := cfg.Join != nil && !hasRaftState(cfg.DataDir)
	if cfg.Join != nil && !joining {
		cfg.Logger.Info("mmc: this data directory is already a cluster member; --join is ignored")
	}
	if joining {
		if err := prepareJoin(cfg.DataDir, cfg.Join.Bundle.ClusterID); err != nil {
			return nil, err
		}
	}
	clusterID, err := loadOrCreate(filepath.Join(cfg.DataDir, ClusterIDFile), 16, cfg.Rand)
	if err != nil {
		return nil, err
	}
	adminTok, err := loadOrCreate(filepath.Join(cfg.DataDir, AdminTokenFile), 32, cfg.Rand)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, dbFile))
	if err != nil {
		return nil, err
	}
	removeSnapshotLeftovers(cfg.DataDir, cfg.Logger)
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		st:         st,
		clusterID:  clusterID,
		enrolPSK:   identity.EnrolPSK(clusterID),
		adminTok:   []byte(adminTok),
		metrics:    newMetrics(),
		tokenRL:    ratelimit.New(cfg.TokenFailures),
		board:      board.New(board.Config{}),
		inv:        inventory.New(),
		dirty:      newDirtySet(),
		lwatch:     newLeaderWatch(),
		evacKick:   make(chan struct{}, 1),
		pruneNow:   make(chan struct{}, 1),
		agentConns: make(chan *sudp.Conn),
		acceptDone: make(chan struct{}),
	}
	if s.cfg.Cluster == nil {
		s.cfg.Cluster = raftCluster{s}
	}
	s.reg = newRegistry(invMirror{s})
	s.enrolSlots = make(chan struct{}, cfg.MaxEnrolSessions)
	s.audit = newAuditor(st, cfg.Logger, s.metrics, cfg.Now)
	s.orch = newOrchestrator(st, serverFleet{s}, cfg.Logger, cfg.Now)
	// The endpoint comes first: raft runs over it. Until Run, its
	// handshake admits only members (accepting).
	s.ep, err = sudp.Listen(sudp.Config{
		Listen:    cfg.Listen,
		Static:    static,
		ClusterID: clusterID,
		Lookup:    s.lookup,
		Rejected:  s.rejected,
		Logger:    cfg.Logger,
	})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("mmc: listen %s: %w%s", cfg.Listen, err, portHint(err, "--listen"))
	}
	if err := s.openRelay(); err != nil {
		s.close()
		return nil, err
	}
	if err := s.listenAdmin(); err != nil {
		s.close()
		return nil, err
	}
	actx, stopAccept := context.WithCancel(context.Background())
	s.stopAccept = stopAccept
	go s.acceptLoop(actx)

	var join *joinSession
	if joining {
		if join, err = s.requestJoin(actx, cfg.Join); err != nil {
			s.close()
			return nil, err
		}
	}
	secret, err := loadClusterSecret(cfg.DataDir, cfg)
	if err != nil {
		join.abandon()
		s.close()
		return nil, err
	}
	// Before anything reads the store: raft may restore a snapshot into
	// it and replay the log after it (openReplicated waits for that on
	// a single MMC). The member's id is the MMC's node id, stable with
	// its key.
	repl, err := openReplicated(context.Background(), st, replicaOptions{
		dataDir: cfg.DataDir, id: identity.NodeID([32]byte(static.Public)), addr: s.advertise(),
		ep: s.ep, secret: secret, join: joining, observer: storeObserver{s}, cfg: cfg,
	})
	clear(secret)
	if err != nil {
		join.abandon()
		s.close()
		return nil, err
	}
	s.repl = repl
	s.member.Store(repl)
	s.metrics.registerRaft(repl.node)
	for _, m := range join.members() {
		repl.members.Set(raft.ServerAddress(m.Addr), [32]byte(m.Key))
	}
	st.SetApplier(repl.apply)
	if joining {
		if err := s.completeJoin(actx, join); err != nil {
			s.close()
			return nil, err
		}
	}
	if err := s.loadAgents(); err != nil {
		s.close()
		return nil, err
	}
	if s.pol, err = newPolicyLoop(st); err != nil {
		s.close()
		return nil, err
	}
	if repl.node.State() == raft.Leader {
		// A single MMC leads already: take up the leadership now, so
		// that it serves agents and the admin API from Run's start.
		if err := s.establish(context.Background()); err != nil {
			s.close()
			return nil, err
		}
		s.leading.Store(true)
	}
	if err := identity.WriteSecretFile(filepath.Join(cfg.DataDir, BundleFile), []byte(s.Bundle().Encode()+"\n")); err != nil {
		s.close()
		return nil, err
	}
	// The registry is loaded: agents' handshakes may complete (their
	// sessions are served from Run on; until then they wait in the
	// accept loop).
	s.accepting.Store(true)
	return s, nil
}

// listenAdmin binds the admin API's listener (TLS unless loopback, as
// configured).
func (s *Server) listenAdmin() error {
	cfg := s.cfg
	if cfg.Admin == "-" {
		return nil
	}
	useTLS, err := adminNeedsTLS(cfg.AdminTLS, cfg.Admin)
	if err != nil {
		return err
	}
	if useTLS {
		if s.adminTLS, err = adminTLSConfig(cfg.DataDir, cfg.AdminCert, cfg.AdminKey, cfg.Admin); err != nil {
			return err
		}
	}
	if s.adminLn, err = net.Listen("tcp", cfg.Admin); err != nil {
		return fmt.Errorf("mmc: admin API: %w%s", err, portHint(err, "--admin"))
	}
	if s.adminTLS != nil {
		s.adminLn = tls.NewListener(s.adminLn, s.adminTLS)
	}
	return nil
}

// memberPrefix marks the peer id of a connection from another member.
const memberPrefix = "mmc:"

// acceptLoop hands connections from members to the raft stream layer and
// every other one to Run, until ctx ends.
func (s *Server) acceptLoop(ctx context.Context) {
	defer close(s.acceptDone)
	for {
		c, err := s.ep.Accept(ctx)
		if err != nil {
			return
		}
		if strings.HasPrefix(c.Session().PeerID, memberPrefix) {
			if r := s.member.Load(); r != nil {
				r.layer.Serve(c)
			} else {
				c.Close()
			}
			continue
		}
		select {
		case s.agentConns <- c:
		case <-ctx.Done():
			c.Close()
			return
		}
	}
}

// loadOrCreate returns the hex contents of a secret file, creating it with
// n random bytes on first use.
func loadOrCreate(path string, n int, rng io.Reader) (string, error) {
	b, err := identity.ReadSecretFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if _, err := hex.DecodeString(s); err != nil || len(s) != 2*n {
			return "", fmt.Errorf("mmc: %s is corrupt (want %d hex characters)", path, 2*n)
		}
		return s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(rng, buf); err != nil {
		return "", err
	}
	s := hex.EncodeToString(buf)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	return s, identity.WriteSecretFile(path, []byte(s+"\n"))
}

func (s *Server) loadAgents() error {
	agents, err := s.st.Agents()
	if err != nil {
		return err
	}
	s.reg.load(agents)
	return nil
}

// Bundle returns the bootstrap bundle agents are started with.
// It lists every member of the cluster (this MMC alone until it knows
// the others).
func (s *Server) Bundle() identity.Bundle {
	if m := s.agentMembers.Load(); m != nil && len(m.MMCs) > 0 {
		b := identity.Bundle{ClusterID: s.clusterID}
		for _, mm := range m.MMCs {
			b.MMCs = append(b.MMCs, identity.MMCRef{Addr: mm.Addr, Key: handshake.EncodeKey([32]byte(mm.Key))})
		}
		return b
	}
	pub := s.ep.PublicKey()
	return identity.Bundle{ClusterID: s.clusterID, MMCs: []identity.MMCRef{{Addr: s.advertise(), Key: handshake.EncodeKey(pub)}}}
}

func (s *Server) advertise() string {
	if s.cfg.Advertise != "" {
		return s.cfg.Advertise
	}
	ap := s.ep.LocalAddr()
	if ap.Addr().IsUnspecified() {
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String()
	}
	return ap.String()
}

// AdminToken returns the bearer token of the admin API.
func (s *Server) AdminToken() string { return string(s.adminTok) }

// AdminTokenFile is where the admin token is stored (for `ferry ctl --token-file`).
func (s *Server) AdminTokenFile() string { return filepath.Join(s.cfg.DataDir, AdminTokenFile) }

// Addr is the SUDP listener's address.
func (s *Server) Addr() netip.AddrPort { return s.ep.LocalAddr() }

// lookup is the handshake's view of a static key. It runs on the endpoint's
// reader goroutine: memory only, and audit entries are queued.
func (s *Server) lookup(pub [32]byte) (handshake.Peer, error) {
	if r := s.member.Load(); r != nil {
		if addr, ok := r.members.Has(pub); ok {
			return handshake.Peer{ID: memberPrefix + string(addr), PSK: r.psk, Allowed: true}, nil
		}
	}
	if !s.accepting.Load() {
		return handshake.Peer{}, nil // not serving agents yet: refused
	}
	e, known := s.reg.lookup(pub)
	switch {
	case !known:
		// Any key may enrol: its replay state is bounded (Unregistered).
		return handshake.Peer{ID: enrolPrefix + identity.NodeID(pub), PSK: s.enrolPSK, Allowed: true, LoginState: LoginEnrolling, Unregistered: true,
			// The bucket runs on the SUDP driver's clock, not cfg.Now.
			RecvLimit: ratelimit.NewBucket(time.Now(), enrolRecvRate, enrolRecvBurst)}, nil
	case e.state == store.StatePending:
		return handshake.Peer{ID: enrolPrefix + e.id, PSK: s.enrolPSK, Allowed: true, LoginState: LoginPending, NotAfter: e.notAfter,
			RecvLimit: e.recv}, nil
	case e.state == store.StateApproved && e.codePending:
		// Approved, but the agent has not confirmed it holds M: it may
		// still need to fetch it over an enrolment session.
		return handshake.Peer{ID: enrolPrefix + e.id, PSK: s.enrolPSK, Allowed: true, LoginState: LoginPending, NotAfter: e.notAfter,
			RecvLimit: e.recv}, nil
	case e.state == store.StateApproved:
		return handshake.Peer{ID: e.id, PSK: e.psk, Allowed: true, LoginState: LoginApproved, NotAfter: e.notAfter,
			RecvLimit: e.recv}, nil
	default:
		return handshake.Peer{}, nil // refused; audited by rejected
	}
}

// rejected is told of every initiation the handshake refused. Those it can
// attribute to a key (a replay, a rejected or revoked agent) are audited
// with the source address; all are counted.
func (s *Server) rejected(from netip.AddrPort, err error) {
	var pe *handshake.PeerError
	switch {
	case errors.As(err, &pe) && errors.Is(err, handshake.ErrReplay):
		id := identity.NodeID(pe.Peer)
		s.metrics.refused.WithLabelValues("replay").Inc()
		s.audit.async(store.AuditEntry{Actor: "key:" + id, Action: "login.replay", Target: id, Source: from.String(), Outcome: "denied", Detail: "replayed handshake initiation"})
	case errors.As(err, &pe) && errors.Is(err, handshake.ErrPeerNotAllowed):
		id := identity.NodeID(pe.Peer)
		state := "unknown"
		if e, ok := s.reg.lookup(pe.Peer); ok {
			state = string(e.state)
		}
		s.metrics.refused.WithLabelValues(state).Inc()
		s.audit.async(store.AuditEntry{Actor: "key:" + id, Action: "login.refused", Target: id, Source: from.String(), Outcome: "denied", Detail: "agent is " + state})
	case errors.Is(err, handshake.ErrDecrypt):
		s.metrics.refused.WithLabelValues("decrypt").Inc()
	default:
		s.metrics.refused.WithLabelValues("other").Inc()
	}
}

const enrolPrefix = "enrol:"

// Run serves until ctx ends, then closes everything it opened.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var adminErr, memberAdminErr error
	h := s.adminHandler()
	if s.adminLn != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			adminErr = s.serveAdmin(ctx, s.adminLn, h)
			cancel()
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		memberAdminErr = s.serveMemberAdmin(ctx, h)
	}()
	// A halted state machine applies no more writes and this member
	// must not go on serving from a store that diverged from the log
	// (replica.FSM): stop the MMC with the cause.
	var fatal fatalWatch
	wg.Add(5)
	go func() {
		defer wg.Done()
		s.runLeaderWatch(ctx)
	}()
	go func() {
		defer wg.Done()
		select {
		case err := <-s.repl.node.Fatal():
			fatal.set(err)
			s.log.Error("mmc: the replicated store halted; stopping", "err", err)
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		defer wg.Done()
		s.audit.run(ctx)
	}()
	go func() {
		defer wg.Done()
		s.runSync(ctx)
	}()
	go func() {
		defer wg.Done()
		s.runLeadership(ctx)
	}()
	s.log.Info("mmc: serving", "sudp", s.ep.LocalAddr().String(), "admin", s.AdminAddr(), "cluster", s.clusterID,
		"member", s.repl.id, "state", s.repl.node.State().String())
	for ctx.Err() == nil {
		select {
		case c := <-s.agentConns:
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serveConn(ctx, c)
			}()
		case <-ctx.Done():
		case <-s.acceptDone:
			cancel()
		}
	}
	cancel()
	s.stopAccept()
	<-s.acceptDone
	s.ep.Close()
	if s.linkRelay != nil {
		s.linkRelay.Close()
	}
	wg.Wait()
	s.audit.drain()
	// The drained audit entries were the last writes: the member stops
	// after them, the store after the member (raft's FSM writes to it).
	if err := s.repl.close(); err != nil {
		s.log.Warn("mmc: stopping the replicated store", "err", err)
	}
	s.closeForwarders()
	s.st.Close()
	return errors.Join(adminErr, memberAdminErr, fatal.err())
}

// fatalWatch holds why the replicated store's state machine halted
// (replica.Node.Fatal), if it did.
type fatalWatch struct {
	mu    sync.Mutex
	cause error
}

func (f *fatalWatch) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cause = err
}

func (f *fatalWatch) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cause == nil {
		return nil
	}
	return fmt.Errorf("mmc: the replicated store halted; this MMC stopped: %w", f.cause)
}

func (s *Server) close() {
	if s.stopAccept != nil {
		s.stopAccept()
		<-s.acceptDone
	}
	if s.ep != nil {
		s.ep.Close()
	}
	if s.linkRelay != nil {
		s.linkRelay.Close()
	}
	if s.adminLn != nil {
		s.adminLn.Close()
	}
	if s.repl != nil {
		s.repl.close()
	}
	s.st.Close()
}

// AdminURL is the admin API's base URL ("" if disabled).
func (s *Server) AdminURL() string {
	if s.adminLn == nil {
		return ""
	}
	if s.adminTLS != nil {
		return "https://" + s.adminLn.Addr().String()
	}
	return "http://" + s.adminLn.Addr().String()
}

// AdminAddr is the admin API's address ("" if disabled).
func (s *Server) AdminAddr() string {
	if s.adminLn == nil {
		return ""
	}
	return s.adminLn.Addr().String()
}

func (s *Server) serveConn(ctx context.Context, c *sudp.Conn) {
	defer c.Close()
	sess := c.Session()
	if id, ok := strings.CutPrefix(sess.PeerID, enrolPrefix); ok {
		s.serveEnrol(ctx, c, id, sess.PeerStatic)
		return
	}
	s.serveAgent(ctx, c, sess.PeerID)
}
