package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// MMCMember is one member of the MMC cluster as `mmcs list` shows it.
type MMCMember struct {
	ID           string `json:"id"`      // raft id (the MMC's node id)
	Address      string `json:"address"` // its SUDP address (raft and agents)
	Admin        string `json:"admin"`   // its admin API URL
	State        string `json:"state"`   // leader|follower|candidate|unreachable
	Voter        bool   `json:"voter"`
	Term         uint64 `json:"term,omitempty"`
	AppliedIndex uint64 `json:"applied_index,omitempty"`
	// LastContactMS is, for a follower, the milliseconds since it last
	// heard from the leader; absent for the leader and for a member that
	// did not answer.
	LastContactMS *int64 `json:"last_contact_ms,omitempty"`
	Error         string `json:"error,omitempty"` // why it is unreachable
}

// JoinTokenRequest asks for a token that lets one new MMC join the cluster.
type JoinTokenRequest struct {
	TTL string `json:"ttl,omitempty"` // Go duration; empty: the server's default, 1h
}

// JoinToken is a created MMC join token; the secret is shown only here,
// once.
type JoinToken struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
}

// LeadershipRequest asks the leader to hand leadership to a voter.
type LeadershipRequest struct {
	ID string `json:"id,omitempty"` // empty: the most up-to-date voter
}

// LeadershipResult names the leader after a transfer.
type LeadershipResult struct {
	Leader string `json:"leader"` // the new leader's id
}

// MMCs lists the members of the MMC cluster with each one's raft state.
func (c *Client) MMCs(ctx context.Context) ([]MMCMember, error) {
	var out []MMCMember
	return out, c.do(ctx, http.MethodGet, "/v1/cluster/members", nil, &out)
}

// MMCSelf is the member this client talks to as it sees itself: its own
// raft state, answered by that member without asking the leader (during
// an election too, when MMCs has no leader to answer).
func (c *Client) MMCSelf(ctx context.Context) (MMCMember, error) {
	var out MMCMember
	return out, c.do(ctx, http.MethodGet, "/v1/cluster/self", nil, &out)
}

// CreateMMCJoinToken creates a token that lets one new MMC join the
// cluster; ttl 0 leaves its validity to the server's default.
func (c *Client) CreateMMCJoinToken(ctx context.Context, ttl time.Duration) (JoinToken, error) {
	var out JoinToken
	if ttl < 0 {
		return out, fmt.Errorf("MMC join token: negative validity %s", ttl)
	}
	var req JoinTokenRequest
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	return out, c.do(ctx, http.MethodPost, "/v1/cluster/join-tokens", req, &out)
}

// RemoveMMC removes a member from the MMC cluster.
func (c *Client) RemoveMMC(ctx context.Context, id string) error {
	// An empty id would make the path the members collection itself.
	if id == "" {
		return errors.New("remove MMC: empty member id")
	}
	return c.do(ctx, http.MethodDelete, "/v1/cluster/members/"+url.PathEscape(id), nil, nil)
}

// TransferLeadership asks the leader to hand leadership to the voter id,
// or with id "" to the most up-to-date voter, and returns the new
// leader's id.
func (c *Client) TransferLeadership(ctx context.Context, id string) (LeadershipResult, error) {
	var out LeadershipResult
	return out, c.do(ctx, http.MethodPost, "/v1/cluster/leadership", LeadershipRequest{ID: id}, &out)
}
