// Package evacuation plans and paces the evacuation of a host or a whole
// site: many live migrations run as one group. It is written sans-I/O,
// like package policy: Plan places every VM of the evacuated hosts at
// once (capacity and anti-affinity counted over the whole plan, not VM by
// VM), and Step, fed the group's record and the state of its migrations,
// says which migrations to start and which to cancel next. The MMC's
// driver (internal/mmc/evacuations.go) only carries the decisions out and
// stores the record.
//
// Pacing is per WAN link — a pair of sites (a host's LAN counts as the
// link of its site with itself): at most PerLink migrations run on one
// link at once, and the queued VMs start in order of the time they are
// expected to take, small and calm ones first. Shortest-first is what
// makes the most VMs finish soonest (the mean completion time of jobs on
// one resource is least in that order), and a bound per link keeps each
// running migration a share of the link large enough to outrun its VM's
// dirty rate: eight migrations started at once on one link would each
// get an eighth of it, and the dirtiest might never converge. Running
// migrations on one link share it by their connections' congestion
// control (see DefaultPerLink for how evenly).
package evacuation

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferry-vm/ferry/internal/migration"
)

// Scopes: what is evacuated.
const (
	ScopeHost = "host"
	ScopeSite = "site"
)

// State is a group's state.
type State string

// Group states. Running until every item has an outcome; then completed
// when every VM moved, failed when one or more did not (unplaced or a
// migration that failed), cancelled after a cancel.
const (
	Running   State = "running"
	Completed State = "completed"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Open reports whether the group still runs.
func (s State) Open() bool { return s == Running }

// ItemState is one VM's state in its group.
type ItemState string

// Item states.
const (
	Queued    ItemState = "queued"
	Moving    ItemState = "running" // its migration is open
	Moved     ItemState = "completed"
	NotMoved  ItemState = "failed" // its migration failed, or could not be planned
	Withdrawn ItemState = "cancelled"
	Unplaced  ItemState = "unplaced" // no destination had room
)

// done reports whether the item has its outcome.
func (s ItemState) done() bool { return s != Queued && s != Moving }

// DefaultPerLink is how many migrations run at once on one link unless
// the request says otherwise. One, measured: eight VMs of a site over
// the lab's 100 Mbit/s, 1 %-loss WAN took 1.20–1.21× the memory over the
// link rate one at a time (the next one started in the last Handover of
// the current one's transfer), and 1.20–1.36× two at a time — two
// transport connections sharing a lossy link share it unevenly (one at
// 20 Mbit/s beside one at 72) and fill it less than one alone does.
const DefaultPerLink = 1

// MaxPerLink bounds the request's PerLink.
const MaxPerLink = 16

// ReferenceRate is the link rate (bytes/s) the expected durations that
// order the queue are computed with: the order depends on the ratio of
// dirty rate to link rate, not on the rate's exact value, and a group
// is ordered once, before any of its migrations measured its link.
const ReferenceRate = 100e6 / 8

// Item is one VM of a group.
type Item struct {
	VM       string    `json:"vm"`
	From     string    `json:"from"`
	FromSite string    `json:"from_site"`
	To       string    `json:"to,omitempty"`
	ToSite   string    `json:"to_site,omitempty"`
	Memory   uint64    `json:"memory"`
	Dirty    float64   `json:"dirty_rate"` // bytes/s when planned
	State    ItemState `json:"state"`
	// Migration is the id of the item's migration once started.
	Migration string `json:"migration,omitempty"`
	// Why the item was not moved (unplaced, refused, failed).
	Why string `json:"why,omitempty"`
	// The migration's report, copied at its end.
	TotalMS     int64     `json:"total_ms,omitempty"`
	DowntimeMS  int64     `json:"downtime_ms,omitempty"`
	BytesOnWire uint64    `json:"bytes_on_wire,omitempty"`
	Verified    bool      `json:"verified,omitempty"`
	Started     time.Time `json:"started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
}

// Link names the item's link: its sites, in the order the data flows.
func (it Item) Link() string { return it.FromSite + "→" + it.ToSite }

// Record is a group as stored.
type Record struct {
	ID      string `json:"id"`
	Version uint64 `json:"version"`
	Scope   string `json:"scope"`
	// Source is the evacuated host's or site's name; Target the
	// destination asked for (a site or a host; empty: any).
	Source  string `json:"source"`
	Target  string `json:"target,omitempty"`
	PerLink int    `json:"per_link"`
	State   State  `json:"state"`
	By      string `json:"by"`
	// Options apply to every migration of the group.
	Options         migration.Options `json:"options"`
	Items           []Item            `json:"items"`
	CancelRequested bool              `json:"cancel_requested,omitempty"`
	Created         time.Time         `json:"created"`
	Updated         time.Time         `json:"updated"`
	Finished        time.Time         `json:"finished,omitzero"`
}

// Host is a host as the planner sees it.
type Host struct {
	ID, Site string
	Online   bool
	CPU, Mem float64 // 0–1 of the host
	Cores    int
	MemBytes uint64
}

// VM is a VM as the planner sees it.
type VM struct {
	ID, Host string
	Running  bool
	CPU      float64 // 0–1 of its vCPUs
	VCPUs    int
	Memory   uint64
	Dirty    float64 // bytes/s
	// Busy: the VM has an open migration already.
	Busy bool
}

// Request is what an administrator asks for.
type Request struct {
	Scope, Source, Target string
	PerLink               int
	// HostMemMax is the share of a host's memory its VMs may hold after
	// the placement (0–1; the policy in force's), AntiAffinity the
	// policy's groups of VMs that never share a host.
	HostMemMax   float64
	AntiAffinity [][]string
}

// ErrBadRequest wraps every request Plan cannot make a group of.
var ErrBadRequest = errors.New("evacuation: bad request")

// Check validates r and fills defaults.
func (r *Request) Check() error {
	if r.Scope != ScopeHost && r.Scope != ScopeSite {
		return fmt.Errorf("%w: scope %q: want host or site", ErrBadRequest, r.Scope)
	}
	if r.Source == "" {
		return fmt.Errorf("%w: no %s named", ErrBadRequest, r.Scope)
	}
	if r.PerLink < 0 || r.PerLink > MaxPerLink {
		return fmt.Errorf("%w: per_link %d: want 1–%d", ErrBadRequest, r.PerLink, MaxPerLink)
	}
	if r.PerLink == 0 {
		r.PerLink = DefaultPerLink
	}
	if r.HostMemMax <= 0 || r.HostMemMax > 1 {
		r.HostMemMax = 1
	}
	return nil
}

// Plan places every VM on the evacuated hosts. The destinations are the
// online hosts outside the evacuated set that match the target (a host's
// name or a site's; empty: any, preferring the source's own site for a
// host's evacuation, where the move does not cross the WAN). VMs are
// placed largest first, each on the destination that will be least
// loaded after taking it (the VMs already placed counted), so the big
// ones are not left without room by the small. A VM that fits nowhere,
// or is not running, is an Unplaced item with the reason; a VM with an
// open migration already is a NotMoved one. The items come back in the
// order Step starts them.
//
// Memory is a hard limit (a host cannot run VMs whose memory it lacks);
// CPU is not: an evacuation — a host going down, a site lost — moves a
// VM onto a busy host rather than leave it behind, and CPU only ranks
// the destinations.
func Plan(req Request, hosts []Host, vms []VM) ([]Item, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	evacuated := map[string]Host{}
	for _, h := range hosts {
		if (req.Scope == ScopeHost && h.ID == req.Source) || (req.Scope == ScopeSite && h.Site == req.Source) {
			evacuated[h.ID] = h
		}
	}
	if len(evacuated) == 0 {
		return nil, fmt.Errorf("%w: no %s %q", ErrBadRequest, req.Scope, req.Source)
	}
	var dests []Host
	targetKnown := req.Target == ""
	for _, h := range hosts {
		if req.Target != "" && h.ID != req.Target && h.Site != req.Target {
			continue
		}
		targetKnown = true
		if _, out := evacuated[h.ID]; out || !h.Online || h.Cores <= 0 || h.MemBytes == 0 {
			continue
		}
		dests = append(dests, h)
	}
	if !targetKnown {
		return nil, fmt.Errorf("%w: no host or site %q", ErrBadRequest, req.Target)
	}
	var mine []VM
	for _, v := range vms {
		if _, ok := evacuated[v.Host]; ok {
			mine = append(mine, v)
		}
	}
	if len(mine) == 0 {
		return nil, fmt.Errorf("%w: no VM on %s %q", ErrBadRequest, req.Scope, req.Source)
	}
	// Largest first: memory, then CPU, then name for a stable plan.
	slices.SortFunc(mine, func(a, b VM) int {
		return cmp.Or(cmp.Compare(b.Memory, a.Memory), cmp.Compare(b.CPU*float64(b.VCPUs), a.CPU*float64(a.VCPUs)), cmp.Compare(a.ID, b.ID))
	})
	load := map[string]Host{} // destinations with the VMs placed so far
	for _, h := range dests {
		load[h.ID] = h
	}
	placedOn := map[string]string{} // VM → host, the VMs staying elsewhere included
	for _, v := range vms {
		placedOn[v.ID] = v.Host
	}
	items := make([]Item, 0, len(mine))
	for _, v := range mine {
		src := evacuated[v.Host]
		it := Item{VM: v.ID, From: v.Host, FromSite: src.Site, Memory: v.Memory, Dirty: v.Dirty, State: Queued}
		switch {
		case v.Busy:
			it.State, it.Why = NotMoved, "it has an open migration already"
		case !v.Running:
			it.State, it.Why = Unplaced, "not running (only running VMs are live-migrated)"
		default:
			to, why := place(req, v, src, dests, load, placedOn)
			if why != "" {
				it.State, it.Why = Unplaced, why
				break
			}
			it.To, it.ToSite = to.ID, to.Site
			placedOn[v.ID] = to.ID
		}
		items = append(items, it)
	}
	slices.SortStableFunc(items, func(a, b Item) int { return cmp.Compare(expected(a), expected(b)) })
	return items, nil
}

// place chooses v's destination and counts v in its load; why says why
// there is none.
func place(req Request, v VM, src Host, dests []Host, load map[string]Host, placedOn map[string]string) (Host, string) {
	var best Host
	found := false
	bestRank, bestLoad := 0, 0.0
	for _, d := range dests {
		h := load[d.ID]
		if conflicts(req.AntiAffinity, v.ID, h.ID, placedOn) {
			continue
		}
		after := h
		after.CPU += v.CPU * float64(max(v.VCPUs, 1)) / float64(h.Cores)
		after.Mem += float64(v.Memory) / float64(h.MemBytes)
		if after.Mem > req.HostMemMax {
			continue
		}
		rank := 1
		if req.Target == "" && req.Scope == ScopeHost && h.Site == src.Site {
			rank = 0
		}
		l := max(after.CPU, after.Mem)
		if !found || rank < bestRank || (rank == bestRank && (l < bestLoad || (l == bestLoad && h.ID < best.ID))) {
			best, bestRank, bestLoad, found = after, rank, l, true
		}
	}
	if !found {
		where := "any other host"
		if req.Target != "" {
			where = req.Target
		}
		if len(dests) == 0 {
			return Host{}, fmt.Sprintf("no online host in %s", where)
		}
		return Host{}, fmt.Sprintf("no room in %s for %d MiB (memory at most %.0f%% of a host after the move, anti-affinity kept)",
			where, v.Memory>>20, 100*req.HostMemMax)
	}
	load[best.ID] = best
	return best, ""
}

// conflicts reports whether host holds (or is planned to hold) a VM that
// must not share a host with vm.
func conflicts(groups [][]string, vm, host string, placedOn map[string]string) bool {
	for _, g := range groups {
		if !slices.Contains(g, vm) {
			continue
		}
		for _, other := range g {
			if other != vm && placedOn[other] == host {
				return true
			}
		}
	}
	return false
}

// expected is the time an item's migration is expected to take at
// ReferenceRate, in seconds: its memory once, then what its dirty rate
// writes meanwhile, as a geometric series of pre-copy rounds; a VM
// dirtying at or above the rate is put last (it converges only once
// auto-converge slows it). Items without a destination sort first (they
// start nothing).
func expected(it Item) float64 {
	if it.State != Queued {
		return -1
	}
	r := min(it.Dirty/ReferenceRate, 0.95)
	return float64(it.Memory) / ReferenceRate / (1 - r)
}
