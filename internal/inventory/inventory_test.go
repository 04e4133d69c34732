package inventory

import (
	"reflect"
	"strings"
	"testing"
)

// step is one thing that happens to an inventory: a change (do) and/or a
// report from agent (report: "vm" or "vm=state"), with the findings
// expected from it ("kind vm", in order).
type step struct {
	do     func(inv *Inventory)
	agent  string
	report []string
	want   []string
}

// world: a1 holds h1, a2 holds h2, both approved and online; web is
// placed on a1.
func world() *Inventory {
	inv := New()
	for _, a := range []Agent{{ID: "a1", Host: "h1", Site: "east", Managed: true}, {ID: "a2", Host: "h2", Site: "west", Managed: true}} {
		inv.SetAgent(a)
		inv.SetOnline(a.ID, true)
	}
	inv.SetVM(Placement{VM: "web", Agent: "a1", VCPUs: 2, Memory: 1 << 30})
	return inv
}

func obs(report []string) []Observation {
	var out []Observation
	for _, r := range report {
		name, state, ok := strings.Cut(r, "=")
		if !ok {
			state = "running"
		}
		out = append(out, Observation{VM: name, State: state, CPU: 0.5})
	}
	return out
}

func migrate(open bool, cleanup ...string) func(*Inventory) {
	return func(inv *Inventory) {
		inv.SetMigration(Migration{ID: "m1", VM: "web", FromAgent: "a1", ToAgent: "a2", Open: open, Cleanup: cleanup})
	}
}

func commit(inv *Inventory) { inv.SetVM(Placement{VM: "web", Agent: "a2", VCPUs: 2, Memory: 1 << 30}) }

func TestObserve(t *testing.T) {
	legacy := func(inv *Inventory) { inv.SetVM(Placement{VM: "old", Memory: 64 << 20}) }
	cases := []struct {
		name  string
		steps []step
		// placed: where web (or old) is placed at the end; reports never
		// move it.
		placed map[string]string
	}{
		{name: "placed VM reported by its agent", steps: []step{
			{agent: "a1", report: []string{"web"}},
			{agent: "a2", report: nil},
		}, placed: map[string]string{"web": "a1"}},
		{name: "unknown VM: one alarm until it clears", steps: []step{
			{agent: "a2", report: []string{"ghost"}, want: []string{"vm-unknown ghost"}},
			{agent: "a2", report: []string{"ghost"}},
			{agent: "a2", report: []string{"ghost=paused"}},
			{agent: "a2", report: nil, want: []string{"vm-cleared ghost"}},
			{agent: "a2", report: []string{"ghost"}, want: []string{"vm-unknown ghost"}},
		}},
		{name: "unknown VM: alarm survives a reconnect", steps: []step{
			{agent: "a2", report: []string{"ghost"}, want: []string{"vm-unknown ghost"}},
			{do: func(inv *Inventory) { inv.SetOnline("a2", false); inv.SetOnline("a2", true) }},
			{agent: "a2", report: []string{"ghost"}},
		}},
		{name: "misplaced VM: alarm, record unchanged", steps: []step{
			{agent: "a2", report: []string{"web"}, want: []string{"vm-misplaced web"}},
			{agent: "a1", report: []string{"web"}},
			{agent: "a2", report: []string{"web"}},
		}, placed: map[string]string{"web": "a1"}},
		{name: "misplaced VM: clears once the record agrees (a created VM)", steps: []step{
			{agent: "a2", report: []string{"db"}, want: []string{"vm-unknown db"}},
			{do: func(inv *Inventory) { inv.SetVM(Placement{VM: "db", Agent: "a2"}) }},
			{agent: "a2", report: []string{"db"}, want: []string{"vm-cleared db"}},
		}},
		{name: "a migration's copies are expected while open and until cleaned up", steps: []step{
			{do: migrate(true), agent: "a2", report: []string{"web=paused"}},
			{agent: "a1", report: []string{"web=migrating"}},
			{do: commit, agent: "a1", report: []string{"web=paused"}},
			{agent: "a2", report: []string{"web"}},
			{do: migrate(false, "a1"), agent: "a1", report: []string{"web=paused"}},
			// Cleaned up: the reports already on their way are no alarm...
			{do: migrate(false), agent: "a1", report: []string{"web=paused"}},
			{agent: "a1", report: []string{"web=paused"}},
			// ...a copy still there after that is.
			{agent: "a1", report: []string{"web=paused"}, want: []string{"vm-misplaced web"}},
		}, placed: map[string]string{"web": "a2"}},
		{name: "a rolled-back migration: the destination's copy until aborted", steps: []step{
			{do: migrate(true), agent: "a2", report: []string{"web=paused"}},
			{do: migrate(false, "a2"), agent: "a2", report: []string{"web=paused"}},
			{do: migrate(false), agent: "a2", report: nil},
			// Gone once: it lingers no more.
			{agent: "a2", report: []string{"web=paused"}, want: []string{"vm-misplaced web"}},
		}, placed: map[string]string{"web": "a1"}},
		{name: "legacy record adopted by its sole reporter", steps: []step{
			{do: legacy, agent: "a1", report: []string{"old"}, want: []string{"vm-adopt old"}},
		}, placed: map[string]string{"old": ""}},
		{name: "legacy record not adopted while two hosts report it", steps: []step{
			{do: legacy, agent: "a2", report: []string{"old"}, want: []string{"vm-adopt old"}},
			{agent: "a1", report: []string{"old"}},
			{agent: "a2", report: []string{"old"}},
			{agent: "a1", report: nil},
			{agent: "a2", report: []string{"old"}, want: []string{"vm-adopt old"}},
		}},
		{name: "legacy record not adopted during a migration or by an unmanaged agent", steps: []step{
			{do: func(inv *Inventory) {
				legacy(inv)
				inv.SetMigration(Migration{ID: "m7", VM: "old", FromAgent: "a1", ToAgent: "a2", Open: true})
			}, agent: "a1", report: []string{"old"}},
			{do: func(inv *Inventory) {
				inv.SetMigration(Migration{ID: "m7", VM: "old", FromAgent: "a1", ToAgent: "a2"})
				inv.SetAgent(Agent{ID: "a1", Host: "h1"})
			}, agent: "a1", report: []string{"old"}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := world()
			for i, s := range tc.steps {
				if s.do != nil {
					s.do(inv)
				}
				if s.agent == "" {
					continue
				}
				var got []string
				for _, f := range inv.Observe(s.agent, obs(s.report)) {
					got = append(got, f.Kind+" "+f.VM)
					if f.Agent != s.agent || f.Host == "" || f.Message() == "" {
						t.Fatalf("step %d: finding %+v", i, f)
					}
					if f.Kind == KindMisplaced && (f.PlacedAgent == "" || f.PlacedHost == "" || !strings.Contains(f.Message(), "places on host "+f.PlacedHost)) {
						t.Fatalf("step %d: misplaced without the placement: %+v", i, f)
					}
				}
				if !reflect.DeepEqual(got, s.want) {
					t.Fatalf("step %d (%s reports %v): findings %q, want %q", i, s.agent, s.report, got, s.want)
				}
			}
			for vm, agent := range tc.placed {
				if p, ok := inv.Placement(vm); !ok || p.Agent != agent {
					t.Fatalf("%s placed %+v (%v), want on %q", vm, p, ok, agent)
				}
			}
		})
	}
}

// TestViews: the state a VM is listed with.
func TestViews(t *testing.T) {
	cases := []struct {
		name  string
		do    func(inv *Inventory)
		state string
		host  string
	}{
		{name: "reported by its host", do: func(inv *Inventory) { inv.Observe("a1", obs([]string{"web=paused"})) }, state: "paused", host: "h1"},
		{name: "host online, no report yet", do: func(inv *Inventory) {}, state: StateUnknown, host: "h1"},
		{name: "host does not report it", do: func(inv *Inventory) { inv.Observe("a1", nil) }, state: StateUnknown, host: "h1"},
		{name: "only another host reports it", do: func(inv *Inventory) { inv.Observe("a2", obs([]string{"web"})) }, state: StateUnknown, host: "h1"},
		{name: "host offline", do: func(inv *Inventory) {
			inv.Observe("a1", obs([]string{"web"}))
			inv.SetOnline("a1", false)
		}, state: StateUnknown, host: "h1"},
		{name: "agent revoked", do: func(inv *Inventory) {
			inv.Observe("a1", obs([]string{"web"}))
			inv.SetAgent(Agent{ID: "a1", Host: "h1", Site: "east"})
		}, state: StateUnmanaged, host: "h1"},
		{name: "placed on an agent the MMC does not know", do: func(inv *Inventory) {
			inv.SetVM(Placement{VM: "web", Agent: "a9"})
		}, state: StateUnmanaged},
		{name: "legacy record", do: func(inv *Inventory) {
			inv.SetVM(Placement{VM: "web"})
			inv.Observe("a1", obs([]string{"web"}))
		}, state: StateUnplaced},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := world()
			tc.do(inv)
			vms := inv.VMs()
			if len(vms) != 1 || vms[0].Name != "web" || vms[0].State != tc.state || vms[0].Host != tc.host {
				t.Fatalf("VMs() = %+v, want web %s on %q", vms, tc.state, tc.host)
			}
		})
	}
	inv := world()
	inv.Observe("a1", []Observation{{VM: "web", State: "running", CPU: 0.25, Mem: 0.5, Net: 7, Dirty: 9, VCPUs: 4, Memory: 1}})
	inv.Observe("a2", obs([]string{"web", "ghost"}))
	v, ok := inv.VM("web")
	want := VM{Name: "web", Agent: "a1", Host: "h1", Site: "east", State: "running", CPU: 0.25, Mem: 0.5, Net: 7, Dirty: 9, VCPUs: 2, Memory: 1 << 30}
	if !ok || v != want {
		t.Fatalf("VM(web) = %+v, want %+v (load from its host's report, make-up from the record)", v, want)
	}
	if r := inv.Reporters("web"); !reflect.DeepEqual(r, []string{"a1", "a2"}) {
		t.Fatalf("Reporters(web) = %v", r)
	}
	if got := inv.PlacedOn("a1"); !reflect.DeepEqual(got, []string{"web"}) {
		t.Fatalf("PlacedOn(a1) = %v", got)
	}
	if _, ok := inv.VM("ghost"); ok || len(inv.VMs()) != 1 {
		t.Fatal("a reported VM not on record is listed")
	}
}
