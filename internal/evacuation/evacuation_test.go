package evacuation

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/migration"
)

const gib = 1 << 30

func hostsAB() []Host {
	return []Host{
		{ID: "a1", Site: "a", Online: true, CPU: 0.2, Mem: 0.2, Cores: 8, MemBytes: 16 * gib},
		{ID: "a2", Site: "a", Online: true, CPU: 0.1, Mem: 0.1, Cores: 8, MemBytes: 16 * gib},
		{ID: "b1", Site: "b", Online: true, CPU: 0.0, Mem: 0.0, Cores: 8, MemBytes: 16 * gib},
		{ID: "b2", Site: "b", Online: true, CPU: 0.5, Mem: 0.5, Cores: 8, MemBytes: 16 * gib},
		{ID: "b3", Site: "b", Online: false, Cores: 8, MemBytes: 16 * gib},
	}
}

func vm(id, host string, mem uint64, dirty float64) VM {
	return VM{ID: id, Host: host, Running: true, CPU: 0.5, VCPUs: 1, Memory: mem, Dirty: dirty}
}

func byVM(items []Item) map[string]Item {
	m := map[string]Item{}
	for _, it := range items {
		m[it.VM] = it
	}
	return m
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		vms  []VM
		// want: VM → destination ("" with a why containing wantWhy[VM])
		want    map[string]string
		wantWhy map[string]string
		order   []string // the item order, when it matters
		err     string
	}{{
		name: "site to site: every VM on a host of the target, the least loaded after each placement",
		req:  Request{Scope: ScopeSite, Source: "a", Target: "b"},
		vms:  []VM{vm("big", "a1", 4*gib, 0), vm("mid", "a2", 2*gib, 0), vm("small", "a1", 1*gib, 0), vm("stays", "b2", gib, 0)},
		// b1 (empty) takes big (→ 0.25), then b1 is still below b2's 0.5: mid (→ 0.375), small (→ 0.44).
		want: map[string]string{"big": "b1", "mid": "b1", "small": "b1"},
	}, {
		name: "the largest first: it takes the roomiest host, the smaller fill in around it",
		req:  Request{Scope: ScopeSite, Source: "a", Target: "b", HostMemMax: 0.8},
		vms:  []VM{vm("v1", "a1", 2*gib, 0), vm("v2", "a1", 2*gib, 0), vm("huge", "a2", 10*gib, 0)},
		// huge fits only on b1 (b2 is at 0.5: 0.5+0.625 > 0.8); v1 then goes to b2 (0.625 against
		// b1's 0.75 after it), v2 to either at 0.75 (the tie goes to the first name).
		want: map[string]string{"huge": "b1", "v1": "b2", "v2": "b1"},
	}, {
		name: "a VM that fits nowhere is unplaced with the reason; the others still go",
		req:  Request{Scope: ScopeHost, Source: "a1", Target: "b", HostMemMax: 0.8},
		vms:  []VM{vm("huge", "a1", 14*gib, 0), vm("ok", "a1", gib, 0)},
		want: map[string]string{"huge": "", "ok": "b1"}, wantWhy: map[string]string{"huge": "no room in b for 14336 MiB"},
	}, {
		name: "a host without a target prefers its own site (no WAN crossing)",
		req:  Request{Scope: ScopeHost, Source: "a1"},
		vms:  []VM{vm("v", "a1", gib, 0)},
		want: map[string]string{"v": "a2"},
	}, {
		name: "a site without a target goes anywhere else; the site's own hosts are never destinations",
		req:  Request{Scope: ScopeSite, Source: "a"},
		vms:  []VM{vm("v", "a1", gib, 0), vm("w", "a2", gib, 0)},
		want: map[string]string{"v": "b1", "w": "b1"},
	}, {
		name: "a host as the target",
		req:  Request{Scope: ScopeHost, Source: "a1", Target: "b2"},
		vms:  []VM{vm("v", "a1", gib, 0)},
		want: map[string]string{"v": "b2"},
	}, {
		name: "anti-affinity counts the VMs placed in this plan and those staying",
		req:  Request{Scope: ScopeSite, Source: "a", Target: "b", AntiAffinity: [][]string{{"db1", "db2", "db3"}}},
		vms:  []VM{vm("db1", "a1", 2*gib, 0), vm("db2", "a2", 2*gib, 0), vm("db3", "b2", gib, 0)},
		// db3 stays on b2, so db1 and db2 both need b1: the second has nowhere to go.
		want: map[string]string{"db1": "b1", "db2": ""}, wantWhy: map[string]string{"db2": "anti-affinity"},
	}, {
		name: "a stopped VM is not moved; a VM with an open migration is counted failed",
		req:  Request{Scope: ScopeHost, Source: "a1", Target: "b"},
		vms:  []VM{{ID: "off", Host: "a1", Memory: gib}, {ID: "busy", Host: "a1", Running: true, Memory: gib, Busy: true}},
		want: map[string]string{"off": "", "busy": ""}, wantWhy: map[string]string{"off": "not running", "busy": "open migration"},
	}, {
		name:  "small and calm first: order by expected time, the dirtiest last",
		req:   Request{Scope: ScopeSite, Source: "a", Target: "b"},
		vms:   []VM{vm("big-calm", "a1", 2*gib, 0), vm("small-dirty", "a1", 256<<20, 0.96*ReferenceRate), vm("small-calm", "a2", 256<<20, 0), vm("mid", "a2", gib, 1e6)},
		want:  map[string]string{"big-calm": "b1", "small-dirty": "b1", "small-calm": "b1", "mid": "b1"},
		order: []string{"small-calm", "mid", "big-calm", "small-dirty"},
	}, {
		name: "no online host at the target",
		req:  Request{Scope: ScopeHost, Source: "a1", Target: "b3"},
		vms:  []VM{vm("v", "a1", gib, 0)},
		want: map[string]string{"v": ""}, wantWhy: map[string]string{"v": "no online host in b3"},
	}, {
		name: "unknown source", req: Request{Scope: ScopeHost, Source: "nope"}, err: `no host "nope"`,
	}, {
		name: "unknown target", req: Request{Scope: ScopeHost, Source: "a1", Target: "mars"}, vms: []VM{vm("v", "a1", gib, 0)}, err: `no host or site "mars"`,
	}, {
		name: "nothing to move", req: Request{Scope: ScopeHost, Source: "a2"}, vms: []VM{vm("v", "a1", gib, 0)}, err: "no VM on host",
	}, {
		name: "bad scope", req: Request{Scope: "rack", Source: "r1"}, err: "scope",
	}, {
		name: "per_link out of range", req: Request{Scope: ScopeHost, Source: "a1", PerLink: 99}, err: "per_link",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			items, err := Plan(tc.req, hostsAB(), tc.vms)
			if tc.err != "" {
				if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want ErrBadRequest with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := byVM(items)
			if len(got) != len(tc.want) {
				t.Fatalf("items %+v, want %d", items, len(tc.want))
			}
			for v, to := range tc.want {
				it := got[v]
				if it.To != to {
					t.Errorf("%s → %q (%s), want %q", v, it.To, it.Why, to)
				}
				if to != "" && (it.State != Queued || it.ToSite == "" || it.FromSite == "") {
					t.Errorf("%s: %+v, want queued with both sites", v, it)
				}
				if w := tc.wantWhy[v]; w != "" && !strings.Contains(it.Why, w) {
					t.Errorf("%s: why %q, want %q in it", v, it.Why, w)
				}
			}
			if tc.order != nil {
				var order []string
				for _, it := range items {
					order = append(order, it.VM)
				}
				if !slices.Equal(order, tc.order) {
					t.Errorf("order %v, want %v", order, tc.order)
				}
			}
		})
	}
}

var t0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

// group is a running record of items from site a to site b (and one
// within a, to show links are paced apart).
func group(perLink int, states ...ItemState) Record {
	r := Record{ID: "e1", Scope: ScopeSite, Source: "a", State: Running, PerLink: perLink, Created: t0}
	for i, s := range states {
		it := Item{VM: string(rune('p' + i)), From: "a1", FromSite: "a", To: "b1", ToSite: "b", Memory: gib, State: s}
		if s == Moving {
			it.Migration = "m" + it.VM
		}
		r.Items = append(r.Items, it)
	}
	return r
}

func open(id, vmName string) Migration {
	return Migration{ID: id, VM: vmName, State: migration.Transferring, Created: t0}
}

func TestStepAdmission(t *testing.T) {
	// Two per link: two queued start on an idle link, one more once one of
	// two running migrations ends, none while two run.
	r, act, _ := Step(group(2, Queued, Queued, Queued, Queued), nil, t0)
	if !slices.Equal(act.Start, []int{0, 1}) {
		t.Fatalf("idle link: start %v, want [0 1]", act.Start)
	}
	r.Started(0, "mp", t0)
	r.Started(1, "mq", t0)
	migs := []Migration{open("mp", "p"), open("mq", "q")}
	if _, act, _ = Step(r, migs, t0); len(act.Start) != 0 {
		t.Fatalf("two running on the link: start %v, want none", act.Start)
	}
	migs[0].State, migs[0].TotalMS, migs[0].Verified = migration.Completed, 1234, true
	r, act, changed := Step(r, migs, t0.Add(time.Minute))
	if !changed || r.Items[0].State != Moved || r.Items[0].TotalMS != 1234 || !r.Items[0].Verified {
		t.Fatalf("completed migration not taken: %+v", r.Items[0])
	}
	if !slices.Equal(act.Start, []int{2}) {
		t.Fatalf("one slot freed: start %v, want [2]", act.Start)
	}

	// Links are paced apart: an item within site a starts beside two on a→b.
	r = group(2, Moving, Moving, Queued)
	r.Items = append(r.Items, Item{VM: "local", From: "a1", FromSite: "a", To: "a2", ToSite: "a", State: Queued})
	_, act, _ = Step(r, []Migration{open("mp", "p"), open("mq", "q")}, t0)
	if !slices.Equal(act.Start, []int{3}) {
		t.Fatalf("start %v, want only the a→a item [3]", act.Start)
	}

	// One per link: strictly one at a time.
	_, act, _ = Step(group(1, Queued, Queued), nil, t0)
	if !slices.Equal(act.Start, []int{0}) {
		t.Fatalf("per link 1: start %v, want [0]", act.Start)
	}
}

func TestStepOutcomes(t *testing.T) {
	r := group(4, Moving, Moving, Moving, Queued)
	r.Items[3].State, r.Items[3].Why = Unplaced, "no room"
	migs := []Migration{
		{ID: "mp", VM: "p", State: migration.Completed, Finished: t0.Add(time.Second)},
		{ID: "mq", VM: "q", State: migration.Failed, Error: "link lost"},
		{ID: "mr", VM: "r", State: migration.Cancelled},
	}
	r, act, changed := Step(r, migs, t0.Add(time.Minute))
	if !changed || len(act.Start) != 0 {
		t.Fatalf("changed %v, act %+v", changed, act)
	}
	want := []ItemState{Moved, NotMoved, Withdrawn, Unplaced}
	for i, w := range want {
		if r.Items[i].State != w {
			t.Errorf("item %d: %s, want %s", i, r.Items[i].State, w)
		}
	}
	if !strings.Contains(r.Items[1].Why, "link lost") {
		t.Errorf("failed item's why %q lacks the migration's error", r.Items[1].Why)
	}
	if r.State != Failed || !r.Finished.Equal(t0.Add(time.Minute)) {
		t.Fatalf("group %s finished %v, want failed at the step", r.State, r.Finished)
	}
	// A finished group is left alone.
	if _, act, changed := Step(r, nil, t0.Add(time.Hour)); changed || len(act.Start)+len(act.Cancel) != 0 {
		t.Fatalf("finished group stepped: %v %+v", changed, act)
	}

	// All moved: completed.
	r = group(2, Moving)
	r, _, _ = Step(r, []Migration{{ID: "mp", VM: "p", State: migration.Completed}}, t0)
	if r.State != Completed {
		t.Fatalf("all moved: %s, want completed", r.State)
	}

	// A running item whose migration is not on record has failed.
	r, _, _ = Step(group(2, Moving), nil, t0)
	if r.Items[0].State != NotMoved || !strings.Contains(r.Items[0].Why, "not on record") || r.State != Failed {
		t.Fatalf("lost migration: %+v, group %s", r.Items[0], r.State)
	}

	// A refused start is an outcome too.
	r = group(2, Queued)
	r.Refused(0, "host offline", t0)
	r, _, _ = Step(r, nil, t0)
	if r.State != Failed || !strings.Contains(r.Items[0].Why, "host offline") {
		t.Fatalf("refused: %+v, group %s", r.Items[0], r.State)
	}
}

func TestStepAdoptsAStartNotRecorded(t *testing.T) {
	// The MMC planned p's migration and died before it recorded the
	// start: the next leader's step adopts it instead of starting another.
	r := group(1, Queued, Queued)
	r, act, changed := Step(r, []Migration{open("m7", "p")}, t0)
	if !changed || r.Items[0].State != Moving || r.Items[0].Migration != "m7" {
		t.Fatalf("not adopted: %+v", r.Items[0])
	}
	if len(act.Start) != 0 {
		t.Fatalf("start %v with the adopted one running on the only slot", act.Start)
	}
}

func TestStepCancel(t *testing.T) {
	r := group(2, Moving, Queued, Moving)
	r.Items[2].State = Moved
	r.CancelRequested = true
	r, act, _ := Step(r, []Migration{open("mp", "p")}, t0)
	if !slices.Equal(act.Cancel, []string{"mp"}) || len(act.Start) != 0 {
		t.Fatalf("act %+v, want cancel [mp] and no start", act)
	}
	if r.Items[1].State != Withdrawn || r.State != Running {
		t.Fatalf("queued %s, group %s: want cancelled, running until mp ends", r.Items[1].State, r.State)
	}
	r, _, _ = Step(r, []Migration{{ID: "mp", VM: "p", State: migration.Cancelled}}, t0)
	if r.State != Cancelled {
		t.Fatalf("group %s, want cancelled", r.State)
	}
}

func TestSummarize(t *testing.T) {
	r := group(2, Moved, Moving, Queued, NotMoved, Unplaced, Withdrawn)
	s := Summarize(r, map[string]float64{"mq": 0.5}, t0.Add(10*time.Second))
	if s.Completed != 1 || s.Failed != 2 || s.Cancelled != 1 || s.Running != 1 || s.Queued != 1 {
		t.Fatalf("counts %+v", s)
	}
	if s.MemoryTotal != 3*gib || s.MemoryMoved != gib+gib/2 {
		t.Fatalf("memory %d of %d", s.MemoryMoved, s.MemoryTotal)
	}
	// 1.5 GiB in 10 s: the 1.5 GiB left take 10 s more.
	if s.ElapsedMS != 10_000 || s.ETAMS != 10_000 {
		t.Fatalf("elapsed %d, eta %d; want 10000 and 10000", s.ElapsedMS, s.ETAMS)
	}
	r.State, r.Finished = Failed, t0.Add(20*time.Second)
	s = Summarize(r, nil, t0.Add(time.Hour))
	if s.TotalMS != 20_000 || s.ElapsedMS != 20_000 || s.ETAMS != 0 {
		t.Fatalf("finished: %+v", s)
	}
}

// CPU ranks destinations but never leaves a VM behind; memory does.
func TestPlanCPUIsSoft(t *testing.T) {
	hosts := []Host{
		{ID: "a1", Site: "a", Online: true, Cores: 2, MemBytes: 4 * gib},
		{ID: "b1", Site: "b", Online: true, CPU: 0.99, Mem: 0.1, Cores: 2, MemBytes: 4 * gib},
		{ID: "b2", Site: "b", Online: true, CPU: 0.95, Mem: 0.7, Cores: 2, MemBytes: 4 * gib},
	}
	hot := VM{ID: "hot", Host: "a1", Running: true, CPU: 1, VCPUs: 2, Memory: gib}
	items, err := Plan(Request{Scope: ScopeHost, Source: "a1", Target: "b", HostMemMax: 0.8}, hosts, []VM{hot})
	if err != nil {
		t.Fatal(err)
	}
	// b2 would be at 0.95 of memory; b1 takes it although its CPU is full.
	if items[0].To != "b1" {
		t.Fatalf("hot → %q (%s), want b1", items[0].To, items[0].Why)
	}
}

// A migration in the last Handover of its transfer, or whose source sent
// its last byte, frees its link's slot: the next VM's introduction,
// preparation and ramp overlap the last one's end.
func TestStepSwitchOverFreesTheLink(t *testing.T) {
	r := group(1, Moving, Queued)
	m := open("mp", "p")
	if _, act, _ := Step(r, []Migration{m}, t0); len(act.Start) != 0 {
		t.Fatalf("transferring: start %v, want none", act.Start)
	}
	m.EndsAt = t0.Add(3 * time.Second)
	if _, act, _ := Step(r, []Migration{m}, t0); len(act.Start) != 0 {
		t.Fatalf("3 s of transfer left: start %v, want none", act.Start)
	}
	// The end time is the last report's, extrapolated: a later step
	// hands over without a newer report.
	if _, act, _ := Step(r, []Migration{m}, m.EndsAt.Add(-Handover-time.Millisecond)); len(act.Start) != 0 {
		t.Fatalf("just before its last %v: start %v, want none", Handover, act.Start)
	}
	// In its last Handover the next one starts, its data held until
	// the last one's expected end (less StartLead).
	if _, act, _ := Step(r, []Migration{m}, m.EndsAt.Add(-Handover/2)); !slices.Equal(act.Start, []int{1}) ||
		!slices.Equal(act.StartAt, []time.Time{m.EndsAt.Add(-StartLead)}) {
		t.Fatalf("in its last %v: start %v at %v, want [1] at %v", Handover, act.Start, act.StartAt, m.EndsAt.Add(-StartLead))
	}
	if _, act, _ := Step(r, []Migration{m}, m.EndsAt.Add(time.Second)); !slices.Equal(act.Start, []int{1}) ||
		!act.StartAt[0].IsZero() {
		t.Fatalf("past its expected end: start %v at %v, want [1] at once", act.Start, act.StartAt)
	}
	m.Armed = true
	if _, act, _ := Step(r, []Migration{m}, t0); !slices.Equal(act.Start, []int{1}) || !act.StartAt[0].IsZero() {
		t.Fatalf("armed (last byte sent): start %v at %v, want [1] at once", act.Start, act.StartAt)
	}
	m.State = migration.SwitchOver
	if _, act, _ := Step(r, []Migration{m}, t0); !slices.Equal(act.Start, []int{1}) {
		t.Fatalf("in switch-over: start %v, want [1]", act.Start)
	}
}
