package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/ferry-vm/ferry/internal/evacuation"
	"github.com/ferry-vm/ferry/internal/migration"
)

// EvacuateRequest asks for every VM of a host or a site to be moved, as
// one group (package evacuation).
type EvacuateRequest struct {
	Scope  string `json:"scope"` // host or site
	Source string `json:"source"`
	// To is a site or a host (empty: any host outside the source).
	To string `json:"to,omitempty"`
	// PerLink bounds the group's migrations running at once on one link
	// between two sites (0: evacuation.DefaultPerLink).
	PerLink int `json:"per_link,omitempty"`
	// Options apply to every migration of the group.
	migration.Options
}

// Evacuation is a group with its progress.
type Evacuation struct {
	evacuation.Record
	evacuation.Summary
}

// Evacuate plans and starts an evacuation.
func (c *Client) Evacuate(ctx context.Context, req EvacuateRequest) (Created, error) {
	var out Created
	return out, c.do(ctx, http.MethodPost, "/v1/evacuations", req, &out)
}

// Evacuations lists the groups, oldest first.
func (c *Client) Evacuations(ctx context.Context) ([]Evacuation, error) {
	var out []Evacuation
	return out, c.do(ctx, http.MethodGet, "/v1/evacuations", nil, &out)
}

// Evacuation returns one group.
func (c *Client) Evacuation(ctx context.Context, id string) (Evacuation, error) {
	var out Evacuation
	return out, c.do(ctx, http.MethodGet, "/v1/evacuations/"+url.PathEscape(id), nil, &out)
}

// CancelEvacuation cancels a running group: its queued VMs stay where
// they are and its running migrations are cancelled (those past their
// switch-over complete).
func (c *Client) CancelEvacuation(ctx context.Context, id string) (Evacuation, error) {
	var out Evacuation
	return out, c.do(ctx, http.MethodPost, "/v1/evacuations/"+url.PathEscape(id)+"/cancel", struct{}{}, &out)
}
