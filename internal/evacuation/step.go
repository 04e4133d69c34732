package evacuation

import (
	"slices"
	"time"

	"github.com/ferry-vm/ferry/internal/migration"
)

// Migration is what Step needs to know of one of the group's migrations
// (a migration.Record whose Group is the group's id).
type Migration struct {
	ID, VM string
	State  migration.State
	// Armed: the source sent its last byte (migration.Record.Armed).
	Armed bool
	// EndsAt is when the transfer's source expects it to end, by its
	// last progress report (migration.Live.EndsAt; zero: unknown).
	EndsAt      time.Time
	Error       string
	TotalMS     int64
	DowntimeMS  int64
	BytesOnWire uint64
	Verified    bool
	Created     time.Time
	Finished    time.Time
}

// FromRecord takes what Step needs from a migration record.
func FromRecord(m migration.Record) Migration {
	return Migration{ID: m.ID, VM: m.VM, State: m.State, Armed: m.Armed(), Error: m.Error, TotalMS: m.TotalMS,
		DowntimeMS: m.DowntimeMS, BytesOnWire: m.BytesOnWire, Verified: m.Verified, Created: m.Created, Finished: m.Finished}
}

// Actions are what Step decides: the items whose migrations to start
// now (indexes into the record's Items, in order), when each may start
// sending (StartAt, beside Start: migration.Record.StartAt, the
// expected end of the transfer it follows on its link less StartLead;
// zero: at once), and the migrations to cancel.
type Actions struct {
	Start   []int
	StartAt []time.Time
	Cancel  []string
}

// Step brings the record up to date with its migrations and decides
// what to do next; changed says whether the record differs from r (and
// should be written). A queued item whose VM already has a migration of
// the group adopts it: the MMC that started it may have died before it
// could record the start, and starting it again would be refused (one
// open migration per VM) or, worse, move the VM twice.
//
// The caller starts each migration in Actions.Start and records the
// outcome with Started or Refused, cancels each in Actions.Cancel, and
// stores the record; a group is finished by the Step after its last
// outcome.
func Step(r Record, migs []Migration, now time.Time) (Record, Actions, bool) {
	var act Actions
	if !r.State.Open() {
		return r, act, false
	}
	r.Items = slices.Clone(r.Items)
	byID := make(map[string]Migration, len(migs))
	byVM := make(map[string]Migration, len(migs))
	for _, m := range migs {
		byID[m.ID] = m
		if cur, ok := byVM[m.VM]; !ok || m.Created.After(cur.Created) {
			byVM[m.VM] = m
		}
	}
	changed := false
	for i := range r.Items {
		it := &r.Items[i]
		if it.State == Queued {
			if m, ok := byVM[it.VM]; ok {
				it.State, it.Migration, it.Started = Moving, m.ID, m.Created
				changed = true
			}
		}
		if it.State != Moving {
			continue
		}
		m, ok := byID[it.Migration]
		switch {
		case !ok:
			it.State, it.Why, it.Finished = NotMoved, "its migration "+it.Migration+" is not on record", now
			changed = true
		case !m.State.Open():
			it.TotalMS, it.DowntimeMS, it.BytesOnWire, it.Verified, it.Finished = m.TotalMS, m.DowntimeMS, m.BytesOnWire, m.Verified, m.Finished
			if it.Finished.IsZero() {
				it.Finished = now
			}
			switch m.State {
			case migration.Completed:
				it.State = Moved
			case migration.Cancelled:
				it.State, it.Why = Withdrawn, "migration "+m.ID+" was cancelled"
			default:
				it.State, it.Why = NotMoved, "migration "+m.ID+" failed: "+m.Error
			}
			changed = true
		}
	}
	if r.CancelRequested {
		for i := range r.Items {
			switch it := &r.Items[i]; it.State {
			case Queued:
				it.State, it.Why, it.Finished = Withdrawn, "the evacuation was cancelled before it started", now
				changed = true
			case Moving:
				act.Cancel = append(act.Cancel, it.Migration)
			}
		}
	} else {
		running := map[string]int{}
		// ending: the latest expected end of the transfers still
		// sending on each link in their last Handover.
		ending := map[string]time.Time{}
		for _, it := range r.Items {
			m, ok := byID[it.Migration]
			switch {
			case it.State != Moving:
			case !ok || usesLink(m, now):
				running[it.Link()]++
			case endingOn(m) && m.EndsAt.After(ending[it.Link()]):
				ending[it.Link()] = m.EndsAt
			}
		}
		for i, it := range r.Items {
			if it.State == Queued && running[it.Link()] < max(r.PerLink, 1) {
				var at time.Time
				if end := ending[it.Link()]; end.Add(-StartLead).After(now) {
					at = end.Add(-StartLead)
				}
				act.Start = append(act.Start, i)
				act.StartAt = append(act.StartAt, at)
				running[it.Link()]++
			}
		}
	}
	if len(act.Start) == 0 && !slices.ContainsFunc(r.Items, func(it Item) bool { return !it.State.done() }) {
		r.State, r.Finished = outcome(r), now
		changed = true
	}
	if changed {
		r.Updated = now
	}
	return r, act, changed
}

// Handover is how long before a migration's transfer is expected to end
// (by its source's last report, extrapolated: Migration.EndsAt) the next
// one on its link is started: long enough for what a new migration does
// before its first byte — the plan, the destination's preparation, the
// introduction and the link's handshake, 230–790 ms on the lab's 50 ms
// path, the longer while the destination is busy with the last VM's
// switch-over. The new migration's data waits for the end of the
// transfer it follows (Actions.StartAt): two transfers sharing the link
// overfill its queue, and the newer one, cut, climbs back to the whole
// link only over a second or more (eight VMs with 2.5 s of shared
// handover took 1.26–1.49× the ideal, against 1.23–1.25× with 1 s).
const Handover = 1200 * time.Millisecond

// StartLead is how long before the expected end of the transfer it
// follows a held migration starts its own. None: the start order's way
// to the source and its first bytes' to the link take about as long as
// the last one's final copy, and careful resume (agent/pathmodel.go)
// takes the new transfer to the link's rate within a few round trips.
// Starting 100 ms earlier measured no faster (1.19× the ideal against
// 1.18×) and with more congestion cuts in the transfers that overlapped.
const StartLead = 0

// usesLink reports whether migration m counts against its link's bound
// at now: not once its source has sent its last byte (armed, or past
// its commit: it only waits for the destination to verify, resume and
// report), nor in the last Handover of its transfer.
func usesLink(m Migration, now time.Time) bool {
	switch {
	case m.Armed, m.State == migration.SwitchOver:
		return false
	case endingOn(m) && !now.Add(Handover).Before(m.EndsAt):
		return false
	}
	return true
}

// endingOn: m still sends and its source has said when it expects to end.
func endingOn(m Migration) bool {
	return m.State == migration.Transferring && !m.Armed && !m.EndsAt.IsZero()
}

// outcome is the state of a group whose items are all done.
func outcome(r Record) State {
	if r.CancelRequested {
		return Cancelled
	}
	for _, it := range r.Items {
		if it.State != Moved {
			return Failed
		}
	}
	return Completed
}

// Started records that item i's migration id was planned.
func (r *Record) Started(i int, id string, now time.Time) {
	it := &r.Items[i]
	it.State, it.Migration, it.Started = Moving, id, now
	r.Updated = now
}

// Refused records that item i's migration could not be planned.
func (r *Record) Refused(i int, why string, now time.Time) {
	it := &r.Items[i]
	it.State, it.Why, it.Finished = NotMoved, "not started: "+why, now
	r.Updated = now
}

// Summary is a group's progress.
type Summary struct {
	Completed int `json:"completed"`
	// Failed counts every VM not moved: unplaced, refused, failed.
	Failed    int `json:"failed"`
	Cancelled int `json:"cancelled"`
	Running   int `json:"running"`
	Queued    int `json:"queued"`
	// Memory of the group's VMs to move, and how much has moved (the
	// running migrations' progress counted).
	MemoryTotal uint64 `json:"memory_total"`
	MemoryMoved uint64 `json:"memory_moved"`
	// ElapsedMS since the group was created (TotalMS once finished);
	// ETAMS the time left at the rate memory has moved so far (0:
	// unknown yet, or finished).
	ElapsedMS int64 `json:"elapsed_ms"`
	TotalMS   int64 `json:"total_ms"`
	ETAMS     int64 `json:"eta_ms,omitempty"`
}

// Summarize counts the group's items; progress holds the open
// migrations' progress (0–1) by id.
func Summarize(r Record, progress map[string]float64, now time.Time) Summary {
	var s Summary
	var remaining float64
	for _, it := range r.Items {
		switch it.State {
		case Moved:
			s.Completed++
		case NotMoved, Unplaced:
			s.Failed++
			continue
		case Withdrawn:
			s.Cancelled++
			continue
		case Moving:
			s.Running++
		case Queued:
			s.Queued++
		}
		s.MemoryTotal += it.Memory
		switch it.State {
		case Moved:
			s.MemoryMoved += it.Memory
		case Moving:
			p := min(max(progress[it.Migration], 0), 1)
			s.MemoryMoved += uint64(p * float64(it.Memory))
			remaining += (1 - p) * float64(it.Memory)
		case Queued:
			remaining += float64(it.Memory)
		}
	}
	end := now
	if !r.State.Open() && !r.Finished.IsZero() {
		end = r.Finished
		s.TotalMS = r.Finished.Sub(r.Created).Milliseconds()
	}
	s.ElapsedMS = end.Sub(r.Created).Milliseconds()
	if r.State.Open() && s.MemoryMoved > 0 && s.ElapsedMS > 0 {
		rate := float64(s.MemoryMoved) / float64(s.ElapsedMS)
		s.ETAMS = int64(remaining / rate)
	}
	return s
}
