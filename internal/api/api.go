// Package api defines the MMC's admin API — HTTP/JSON, bearer-token
// authenticated — and the client `ferry ctl` uses. The server side lives in
// package mmc; only the wire types and the client are here, so the CLI does
// not link the MMC.
package api

import (
	"errors"
	"github.com/ferry-vm/ferry/internal/hypervisor"

	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/migration"
)

// Agent is an agent as the admin API shows it. It never carries key
// material other than the agent's public key.
type Agent struct {
	ID         string         `json:"id"`
	Hostname   string         `json:"hostname"`
	Name       string         `json:"name"`
	Site       string         `json:"site"`
	State      string         `json:"state"`
	Online     bool           `json:"online"`
	PublicKey  string         `json:"public_key"`
	Facts      identity.Facts `json:"facts"`
	LastFacts  identity.Facts `json:"last_facts"`
	EnrolledAt time.Time      `json:"enrolled_at"`
	EnrolAddr  string         `json:"enrol_addr,omitempty"`
	DecidedAt  *time.Time     `json:"decided_at,omitempty"`
	DecidedBy  string         `json:"decided_by,omitempty"`
	LastSeen   *time.Time     `json:"last_seen,omitempty"`
	LastAddr   string         `json:"last_addr,omitempty"`
	// Refusal says why the agent's latest approval was refused (its host
	// name is held by another agent); empty once approved.
	Refusal string `json:"refusal,omitempty"`
	// Version is the agent's release and Protocol its control protocol
	// (its latest login); VersionSkew is true when the release is not
	// the answering MMC's own.
	Version     string `json:"version,omitempty"`
	Protocol    uint16 `json:"protocol,omitempty"`
	VersionSkew bool   `json:"version_skew,omitempty"`
}

// TokenRequest asks for a join token.
type TokenRequest struct {
	TTL  string `json:"ttl"`  // Go duration, e.g. "1h"
	Uses int    `json:"uses"` // how many enrolments it approves
}

// Token is a created join token; the secret is shown only here, once.
type Token struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
	Uses    int       `json:"uses"`
}

// TokenInfo is a join token as listed: never its secret nor the secret's
// hash. State is active, expired, used-up or revoked.
type TokenInfo struct {
	ID        string     `json:"id"`
	State     string     `json:"state"`
	Created   time.Time  `json:"created"`
	Expires   time.Time  `json:"expires"`
	UsesLeft  int        `json:"uses_left"`
	Used      int        `json:"used"`
	CreatedBy string     `json:"created_by,omitempty"`
	Revoked   *time.Time `json:"revoked,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
	// Purpose is "agent" (an agent's enrolment) or "mmc" (a new member
	// of the MMC cluster).
	Purpose string `json:"purpose"`
}

// AuditEntry is one audit-log record.
type AuditEntry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`
	Action  string    `json:"action"`
	Target  string    `json:"target,omitempty"`
	Source  string    `json:"source,omitempty"`
	Outcome string    `json:"outcome"`
	Detail  string    `json:"detail,omitempty"`
}

// Host is a hypervisor host (an approved agent) with its latest report.
type Host struct {
	ID         string     `json:"id"` // the agent's --name
	Agent      string     `json:"agent"`
	Site       string     `json:"site"`
	Online     bool       `json:"online"`
	CPU        float64    `json:"cpu"` // 0–1
	Mem        float64    `json:"mem"` // 0–1
	Net        float64    `json:"net"` // bytes/s
	SwapIn     float64    `json:"swap_in"`
	SwapOut    float64    `json:"swap_out"`
	Cores      int        `json:"cores"`
	MemBytes   uint64     `json:"mem_bytes"`
	VMs        int        `json:"vms"`
	ReportedAt *time.Time `json:"reported_at,omitempty"`
	// PolicyVersion is the policy version the agent acknowledged;
	// PolicyLag is true while it is behind the MMC's.
	PolicyVersion uint64 `json:"policy_version"`
	PolicyLag     bool   `json:"policy_lag"`
}

// Event is a log line or an alarm (from an agent or the MMC).
type Event struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	AgentAt  time.Time `json:"agent_time"`
	Agent    string    `json:"agent"`
	Host     string    `json:"host"`
	AgentSeq uint64    `json:"agent_seq"`
	Alarm    bool      `json:"alarm"`
	Level    string    `json:"level"`
	Kind     string    `json:"kind"`
	Message  string    `json:"message"`
	AckedAt  time.Time `json:"acked_at,omitzero"` // an alarm an operator acknowledged
	AckedBy  string    `json:"acked_by,omitempty"`
}

// AckAlarm acknowledges the alarm numbered seq and returns it.
func (c *Client) AckAlarm(ctx context.Context, seq uint64) (Event, error) {
	var out Event
	return out, c.do(ctx, http.MethodPost, "/v1/alarms/"+strconv.FormatUint(seq, 10)+"/ack", struct{}{}, &out)
}

// VM is a virtual machine as the latest reports show it.
type VM struct {
	ID     string  `json:"id"`
	Host   string  `json:"host"`
	State  string  `json:"state"`
	CPU    float64 `json:"cpu"`   // 0–1 of its vCPUs
	Mem    float64 `json:"mem"`   // 0–1 of its memory in use
	Net    float64 `json:"net"`   // bytes/s
	Dirty  float64 `json:"dirty"` // bytes/s of memory written
	VCPUs  int     `json:"vcpus"`
	Memory uint64  `json:"memory"`
}

// VMCreate asks a host to start a VM.
type VMCreate struct {
	Name     string `json:"name"`
	Host     string `json:"host"`
	Memory   uint64 `json:"memory"`
	VCPUs    int    `json:"vcpus"`
	Workload string `json:"workload"` // e.g. cpu=0.8,dirty=20MB/s,net=5MB/s
	// A real (QEMU) VM's make-up; see hypervisor.Spec.
	Machine string            `json:"machine,omitempty"`
	Kernel  string            `json:"kernel,omitempty"`
	Disks   []hypervisor.Disk `json:"disks,omitempty"`
	NICs    []hypervisor.NIC  `json:"nics,omitempty"`
}

// WorkloadRequest sets a simulated VM's load.
type WorkloadRequest struct {
	Workload string `json:"workload"` // e.g. cpu=0.9
}

// SetWorkload changes a simulated VM's scripted load.
func (c *Client) SetWorkload(ctx context.Context, id, workload string) error {
	return c.do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(id)+"/workload", WorkloadRequest{Workload: workload}, nil)
}

// Created names what was created.
type Created struct {
	ID string `json:"id"`
}

// Error is the body of every non-2xx response.
type Error struct {
	Error string `json:"error"`
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("admin API: %s (HTTP %d)", e.Message, e.Status)
}

// BoardEntry is a blackboard entry, its body decoded by kind.
type BoardEntry struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	From string    `json:"from"`
	Kind string    `json:"kind"`
	Body any       `json:"body"`
}

// Client calls the admin API.
type Client struct {
	Base  string // e.g. http://127.0.0.1:7947
	Token string
	HTTP  *http.Client
	// RetryFor is how long a request answered "no leader right now"
	// (503 with Retry-After, during an MMC election) is retried: 0 is
	// DefaultRetryFor, negative never.
	RetryFor time.Duration
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var payload []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		payload = b
	}
	hc := http.Client{Timeout: 30 * time.Second}
	if c.HTTP != nil {
		hc = *c.HTTP
	}
	// The MMC never redirects. Following one would send the admin token
	// to wherever it points: Go keeps Authorization on a redirect to the
	// same host, even from https to plain http.
	hc.CheckRedirect = refuseRedirect
	retryUntil := time.Now().Add(c.retryFor())
	var resp *http.Response
	for {
		var body io.Reader
		if payload != nil {
			body = bytes.NewReader(payload)
		}
		req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Base, "/")+path, body)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		if in != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err = hc.Do(req)
		if err != nil {
			return fmt.Errorf("admin API: %w", err)
		}
		// 503 with Retry-After: no member leads right now (an election)
		// and the request was not carried out. Anything else is final.
		wait, retry := retryAfter(resp)
		if !retry || time.Now().Add(wait).After(retryUntil) {
			break
		}
		resp.Body.Close()
		select {
		case <-ctx.Done():
			return fmt.Errorf("admin API: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return &StatusError{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("admin API: decode response: %w", err)
		}
	}
	return nil
}

// ErrRedirect is returned for a redirect from the admin API, which the
// client does not follow.
var ErrRedirect = errors.New("admin API: refusing to follow a redirect (the MMC never sends one)")

func refuseRedirect(*http.Request, []*http.Request) error { return ErrRedirect }

// Agent returns one agent by id.
func (c *Client) Agent(ctx context.Context, id string) (Agent, error) {
	var out Agent
	return out, c.do(ctx, http.MethodGet, "/v1/agents/"+url.PathEscape(id), nil, &out)
}

// Agents lists agents, optionally only those in one state.
func (c *Client) Agents(ctx context.Context, state string) ([]Agent, error) {
	var out []Agent
	q := ""
	if state != "" {
		q = "?state=" + url.QueryEscape(state)
	}
	return out, c.do(ctx, http.MethodGet, "/v1/agents"+q, nil, &out)
}

// AgentAction applies approve, reject or revoke.
func (c *Client) AgentAction(ctx context.Context, id, action string) (Agent, error) {
	var out Agent
	return out, c.do(ctx, http.MethodPost, "/v1/agents/"+url.PathEscape(id)+"/"+action, struct{}{}, &out)
}

// CreateToken creates a join token.
func (c *Client) CreateToken(ctx context.Context, ttl time.Duration, uses int) (Token, error) {
	var out Token
	return out, c.do(ctx, http.MethodPost, "/v1/tokens", TokenRequest{TTL: ttl.String(), Uses: uses}, &out)
}

// Tokens lists the join tokens (never their secrets).
func (c *Client) Tokens(ctx context.Context) ([]TokenInfo, error) {
	var out []TokenInfo
	return out, c.do(ctx, http.MethodGet, "/v1/tokens", nil, &out)
}

// RevokeToken revokes a join token: it approves no more enrolments.
func (c *Client) RevokeToken(ctx context.Context, id string) (TokenInfo, error) {
	var out TokenInfo
	return out, c.do(ctx, http.MethodPost, "/v1/tokens/"+url.PathEscape(id)+"/revoke", struct{}{}, &out)
}

// Audit returns audit entries after seq (limit 0 = server default).
func (c *Client) Audit(ctx context.Context, after uint64, limit int, newest bool) ([]AuditEntry, error) {
	var out []AuditEntry
	return out, c.do(ctx, http.MethodGet, "/v1/audit?"+pageQuery(after, limit, newest), nil, &out)
}

// pageQuery is a listing's query: entries numbered above after, at most
// limit, newest first or oldest first.
func pageQuery(after uint64, limit int, newest bool) string {
	q := "after=" + strconv.FormatUint(after, 10) + "&limit=" + strconv.Itoa(limit)
	if newest {
		q += "&order=newest"
	}
	return q
}

// Hosts lists hosts.
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	var out []Host
	return out, c.do(ctx, http.MethodGet, "/v1/hosts", nil, &out)
}

// VMs lists VMs.
func (c *Client) VMs(ctx context.Context) ([]VM, error) {
	var out []VM
	return out, c.do(ctx, http.MethodGet, "/v1/vms", nil, &out)
}

// CreateVM starts a VM on a host.
func (c *Client) CreateVM(ctx context.Context, req VMCreate) (Created, error) {
	var out Created
	return out, c.do(ctx, http.MethodPost, "/v1/vms", req, &out)
}

// DeleteVM destroys a VM.
func (c *Client) DeleteVM(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(id), nil, nil)
}

// Decision is one policy-engine decision.
type Decision struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
	Mode   string    `json:"mode"`
	Action string    `json:"action"`
}

// PolicyStatus is the policy engine's latest evaluation: how many
// migrations it decided and which violating VMs it held back, and why
// (not sustained for the window yet, cool-down, the concurrency cap, no
// host with room). Nothing held and nothing decided: no VM violated its
// SLA (or the mode is off).
type PolicyStatus struct {
	EvaluatedAt time.Time    `json:"evaluated_at,omitzero"` // zero: not evaluated since this MMC led
	Mode        string       `json:"mode"`
	Decided     int          `json:"decided"`
	Held        []PolicyHeld `json:"held"`
}

// PolicyHeld is one VM held back.
type PolicyHeld struct {
	VM   string `json:"vm"`
	Host string `json:"host"`
	// Kind is why, as a word: window, cooldown, cap or no-room.
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
}

// PolicyStatus returns the policy engine's latest evaluation.
func (c *Client) PolicyStatus(ctx context.Context) (PolicyStatus, error) {
	var out PolicyStatus
	return out, c.do(ctx, http.MethodGet, "/v1/policy/status", nil, &out)
}

// Policy returns the policy in force (JSON, see package policy).
func (c *Client) Policy(ctx context.Context) (json.RawMessage, error) {
	var out json.RawMessage
	return out, c.do(ctx, http.MethodGet, "/v1/policy", nil, &out)
}

// SetPolicy replaces the policy; the MMC assigns the next version.
func (c *Client) SetPolicy(ctx context.Context, doc json.RawMessage) (json.RawMessage, error) {
	var out json.RawMessage
	return out, c.do(ctx, http.MethodPut, "/v1/policy", doc, &out)
}

// Decisions returns the policy engine's recent decisions.
// BoardTopics lists the blackboard's topics.
func (c *Client) BoardTopics(ctx context.Context) ([]string, error) {
	var out []string
	return out, c.do(ctx, http.MethodGet, "/v1/board", nil, &out)
}

// Board returns a blackboard topic's entries after seq.
func (c *Client) Board(ctx context.Context, topic string, after uint64) ([]BoardEntry, error) {
	var out []BoardEntry
	q := url.Values{"topic": {topic}, "after": {strconv.FormatUint(after, 10)}}
	return out, c.do(ctx, http.MethodGet, "/v1/board/entries?"+q.Encode(), nil, &out)
}

func (c *Client) Decisions(ctx context.Context) ([]Decision, error) {
	var out []Decision
	return out, c.do(ctx, http.MethodGet, "/v1/policy/decisions", nil, &out)
}

// Events returns logs (alarms only if alarms is set) after seq.
func (c *Client) Events(ctx context.Context, alarms bool, after uint64, limit int, newest bool) ([]Event, error) {
	var out []Event
	path := "/v1/logs"
	if alarms {
		path = "/v1/alarms"
	}
	return out, c.do(ctx, http.MethodGet, path+"?"+pageQuery(after, limit, newest), nil, &out)
}

// Migration is a migration record as the API shows it: the stored
// record, and the live progress of a transfer in flight.
type Migration struct {
	migration.Record
	// Live is the progress of a migration in flight.
	Live *MigrationLive `json:"live,omitempty"`
}

// MigrationLive is a transfer's progress as the source's hypervisor
// reports it.
type MigrationLive = migration.Live

// MigrateRequest asks for a migration of VM to host To.
type MigrateRequest struct {
	VM string `json:"vm"`
	To string `json:"to"`
	migration.Options
}

// Migrate plans a migration.
func (c *Client) Migrate(ctx context.Context, req MigrateRequest) (Created, error) {
	var out Created
	return out, c.do(ctx, http.MethodPost, "/v1/migrations", req, &out)
}

// Migrations lists migration records.
func (c *Client) Migrations(ctx context.Context) ([]Migration, error) {
	var out []Migration
	return out, c.do(ctx, http.MethodGet, "/v1/migrations", nil, &out)
}

// Migration returns one migration record, with live progress while it
// runs.
func (c *Client) Migration(ctx context.Context, id string) (Migration, error) {
	var out Migration
	return out, c.do(ctx, http.MethodGet, "/v1/migrations/"+url.PathEscape(id), nil, &out)
}

// BandwidthRequest changes an open migration's bandwidth cap.
type BandwidthRequest struct {
	// MaxBandwidth is the new cap in bytes/s; 0 removes it.
	MaxBandwidth *float64 `json:"max_bandwidth"`
}

// SetMigrationBandwidth changes an open migration's bandwidth cap
// (bytes/s; 0: none) until its transfer ends.
func (c *Client) SetMigrationBandwidth(ctx context.Context, id string, bytesPerSec float64) (Migration, error) {
	var out Migration
	return out, c.do(ctx, http.MethodPost, "/v1/migrations/"+url.PathEscape(id)+"/bandwidth", BandwidthRequest{MaxBandwidth: &bytesPerSec}, &out)
}

// CancelMigration cancels an open migration.
func (c *Client) CancelMigration(ctx context.Context, id string) (Migration, error) {
	var out Migration
	return out, c.do(ctx, http.MethodPost, "/v1/migrations/"+url.PathEscape(id)+"/cancel", struct{}{}, &out)
}

// DefaultRetryFor covers an MMC election (a few seconds) with room.
const DefaultRetryFor = 15 * time.Second

func (c *Client) retryFor() time.Duration {
	switch {
	case c.RetryFor < 0:
		return 0
	case c.RetryFor == 0:
		return DefaultRetryFor
	}
	return c.RetryFor
}

// retryAfter reports whether resp asks for the same request again, and
// after how long (at most a second, whatever the header says: an
// election is over within seconds).
func retryAfter(resp *http.Response) (time.Duration, bool) {
	if resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	secs, err := strconv.Atoi(v)
	if err != nil || secs < 0 {
		return 0, false
	}
	return min(time.Duration(secs)*time.Second, time.Second) / 4, true
}
