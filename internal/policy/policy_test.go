package policy

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_800_000_000, 0)

func host(id, site string, cpu, mem float64) Host {
	return Host{ID: id, Site: site, Online: true, CPU: cpu, Mem: mem, Cores: 8, MemBytes: 32 << 30}
}

func vm(id, h string, cpu float64) VM {
	return VM{ID: id, Host: h, Running: true, CPU: cpu, VCPUs: 2, Memory: 4 << 30}
}

func engine(t *testing.T, mut func(*Policy)) *Engine {
	t.Helper()
	p := Default()
	p.Mode = ModeAuto
	p.Window = Duration(30 * time.Second)
	if mut != nil {
		mut(&p)
	}
	e, err := New(p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// run feeds the same sample at 10 s steps for d and returns every decision.
func run(e *Engine, s Sample, d time.Duration) []Decision {
	var out []Decision
	for at := time.Duration(0); at <= d; at += 10 * time.Second {
		s.At = t0.Add(at)
		out = append(out, e.Observe(s)...)
	}
	return out
}

func TestHysteresis(t *testing.T) {
	e := engine(t, nil)
	s := Sample{Hosts: []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.1, 0.1)}, VMs: []VM{vm("hot", "a1", 0.95)}}
	if d := run(e, s, 20*time.Second); len(d) != 0 {
		t.Fatalf("decided after 20 s of a 30 s window: %+v", d)
	}
	s.At = t0.Add(30 * time.Second) // 30 s since the first violating sample
	d := e.Observe(s)
	if len(d) != 1 || d[0].VM != "hot" || d[0].From != "a1" || d[0].To != "b1" || !d[0].Auto {
		t.Fatalf("decision %+v", d)
	}
	if !strings.Contains(d[0].Reason, "CPU 95% above 90%") || !strings.Contains(d[0].Reason, "for 30s") {
		t.Fatalf("reason %q", d[0].Reason)
	}
	// A dip below the threshold restarts the window.
	e2 := engine(t, nil)
	s.At = t0
	e2.Observe(s)
	s.At = t0.Add(20 * time.Second)
	calm := s
	calm.VMs = []VM{vm("hot", "a1", 0.5)}
	calm.At = t0.Add(25 * time.Second)
	e2.Observe(calm)
	s.At = t0.Add(40 * time.Second)
	if d := e2.Observe(s); len(d) != 0 {
		t.Fatalf("the window did not restart after recovery: %+v", d)
	}
}

func TestCooldownAndCap(t *testing.T) {
	e := engine(t, func(p *Policy) { p.Window = Duration(time.Second); p.Cooldown = Duration(5 * time.Minute) })
	s := Sample{At: t0, Hosts: []Host{host("a1", "A", 0.5, 0.3), host("b1", "B", 0.1, 0.1)},
		VMs: []VM{vm("v1", "a1", 0.95), vm("v2", "a1", 0.97)}}
	e.Observe(s)
	s.At = t0.Add(10 * time.Second)
	d := e.Observe(s)
	if len(d) != 1 {
		t.Fatalf("cap 1: %d decisions", len(d))
	}
	e.Started(d[0].VM, s.At)
	s.At = t0.Add(20 * time.Second)
	if d := e.Observe(s); len(d) != 0 {
		t.Fatalf("decided while the cap is in use: %+v", d)
	}
	e.Finished(d[0].VM)
	// The moved VM, still hot at its old place in this synthetic sample,
	// is in cool-down; the other may go now.
	s.At = t0.Add(30 * time.Second)
	d2 := e.Observe(s)
	if len(d2) != 1 || d2[0].VM == d[0].VM {
		t.Fatalf("after finish: %+v (first was %s)", d2, d[0].VM)
	}
	e.Started(d2[0].VM, s.At)
	e.Finished(d2[0].VM)
	s.At = t0.Add(4 * time.Minute)
	if d := e.Observe(s); len(d) != 0 {
		t.Fatalf("decided during cool-down: %+v", d)
	}
	s.At = t0.Add(10 * time.Minute)
	e.Observe(s)
	s.At = t0.Add(10*time.Minute + 10*time.Second)
	if d := e.Observe(s); len(d) != 1 {
		t.Fatalf("after cool-down: %+v", d)
	}
}

func TestDestinationChoice(t *testing.T) {
	hot := vm("hot", "a1", 0.95)
	tests := []struct {
		name  string
		hosts []Host
		vms   []VM
		mut   func(*Policy)
		want  string // "" = no decision
	}{
		{"least loaded", []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.5, 0.2), host("b2", "B", 0.2, 0.2)}, nil, nil, "b2"},
		{"full hosts excluded", []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.75, 0.2), host("b2", "B", 0.2, 0.79)}, nil, nil, ""},
		{"offline excluded", []Host{host("a1", "A", 0.9, 0.5), {ID: "b1", Online: false, Cores: 8, MemBytes: 32 << 30}}, nil, nil, ""},
		{"site preference other", []Host{host("a1", "A", 0.9, 0.5), host("a2", "A", 0.1, 0.1), host("b1", "B", 0.4, 0.3)}, nil,
			func(p *Policy) { p.Site = SiteOther }, "b1"},
		{"site preference same", []Host{host("a1", "A", 0.9, 0.5), host("a2", "A", 0.4, 0.3), host("b1", "B", 0.1, 0.1)}, nil,
			func(p *Policy) { p.Site = SiteSame }, "a2"},
		{"anti-affinity", []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.1, 0.1), host("b2", "B", 0.3, 0.3)},
			[]VM{vm("replica", "b1", 0.1)}, func(p *Policy) { p.AntiAffinity = [][]string{{"hot", "replica"}} }, "b2"},
		{"dry-run recommends", []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.1, 0.1)}, nil, func(p *Policy) { p.Mode = ModeDryRun }, "b1"},
		{"off", []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.1, 0.1)}, nil, func(p *Policy) { p.Mode = ModeOff }, ""},
		{"per-VM SLA overrides", []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.1, 0.1)}, nil,
			func(p *Policy) { p.PerVM = map[string]SLA{"hot": {CPU: 0.99}} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := engine(t, tt.mut)
			d := run(e, Sample{Hosts: tt.hosts, VMs: append([]VM{hot}, tt.vms...)}, 30*time.Second)
			got := ""
			if len(d) > 0 {
				got = d[0].To
			}
			if got != tt.want {
				t.Fatalf("destination %q, want %q (%+v)", got, tt.want, d)
			}
			if len(d) > 0 && d[0].Auto != (e.Policy().Mode == ModeAuto) {
				t.Fatalf("auto %v in mode %s", d[0].Auto, e.Policy().Mode)
			}
		})
	}
}

func TestNetAndSwapTriggers(t *testing.T) {
	e := engine(t, func(p *Policy) { p.SLA = SLA{NetUp: 50e6, HostSwapOut: 10e6} })
	swapping := host("a1", "A", 0.3, 0.9)
	swapping.SwapOut = 20e6
	small, big := vm("small", "a1", 0.1), vm("big", "a1", 0.1)
	small.Memory, big.Memory = 1<<30, 3<<30
	chatty := vm("chatty", "a2", 0.1)
	chatty.Net = 80e6
	d := run(e, Sample{Hosts: []Host{swapping, host("a2", "A", 0.2, 0.2), host("b1", "B", 0.1, 0.1)}, VMs: []VM{small, big, chatty}}, 30*time.Second)
	if len(d) != 1 {
		t.Fatalf("decisions %+v", d)
	}
	e2 := engine(t, func(p *Policy) { p.SLA = SLA{NetUp: 50e6, HostSwapOut: 10e6}; p.MaxConcurrent = 2 })
	d = run(e2, Sample{Hosts: []Host{swapping, host("a2", "A", 0.2, 0.2), host("b1", "B", 0.1, 0.1)}, VMs: []VM{small, big, chatty}}, 30*time.Second)
	got := map[string]string{}
	for _, x := range d {
		got[x.VM] = x.Reason
	}
	if len(d) != 2 || got["big"] == "" || got["chatty"] == "" || got["small"] != "" {
		t.Fatalf("want big (largest on the swapping host) and chatty (net above Up): %+v", d)
	}
	if !strings.Contains(got["chatty"], "above Up") || !strings.Contains(got["big"], "swapping out") {
		t.Fatalf("reasons %+v", got)
	}
}

func TestPolicyValidateAndJSON(t *testing.T) {
	for _, bad := range []string{`{"mode":"yolo"}`, `{"site_preference":"moon"}`, `{"window":"-1s"}`, `{"host_cpu_max":2}`, `{"sla":{"cpu":1.5}}`} {
		var p Policy
		err := json.Unmarshal([]byte(bad), &p)
		if err == nil {
			err = p.Validate()
		}
		if err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	var p Policy
	if err := json.Unmarshal([]byte(`{"mode":"auto","window":"45s","sla":{"net_up":1e8}}`), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil || time.Duration(p.Window) != 45*time.Second || p.MaxConcurrent != 1 || p.HostCPUMax != 0.8 {
		t.Fatalf("%+v %v", p, err)
	}
	b, _ := json.Marshal(p)
	if !strings.Contains(string(b), `"window":"45s"`) {
		t.Fatalf("JSON %s", b)
	}
}

// TestHeldReasons: every violating VM the engine does not move is held
// with the reason an operator needs: the window not over yet, cool-down,
// the cap, or no host with room (naming what ruled each host out).
func TestHeldReasons(t *testing.T) {
	hot := func(id, h string) VM { return vm(id, h, 0.95) }
	cases := []struct {
		name  string
		mut   func(*Policy)
		s     Sample
		prep  func(*Engine)
		kind  string
		want  []string // substrings of the one held reason
		moved int
	}{
		{
			name: "window not over", kind: HeldWindow,
			s:    Sample{Hosts: []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.1, 0.1)}, VMs: []VM{hot("v", "a1")}},
			want: []string{"CPU 95% above 90%", "for 0s of the 30s window"},
		},
		{
			name: "cool-down", kind: HeldCooldown,
			mut:  func(p *Policy) { p.Cooldown = Duration(5 * time.Minute) },
			s:    Sample{Hosts: []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.1, 0.1)}, VMs: []VM{hot("v", "a1")}},
			prep: func(e *Engine) { e.Started("v", t0); e.Finished("v") },
			want: []string{"cool-down until", "cool-down 5m0s"},
		},
		{
			name: "no room", kind: HeldNoRoom,
			s: Sample{Hosts: []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.85, 0.1), {ID: "c1", Site: "C"}},
				VMs: []VM{hot("v", "a1")}},
			want: []string{"no host has room", "b1 would reach CPU 109%", "c1 offline"},
		},
		{
			name: "cap", kind: HeldCap,
			mut:   func(p *Policy) { p.MaxConcurrent = 1 },
			s:     Sample{Hosts: []Host{host("a1", "A", 0.9, 0.5), host("b1", "B", 0.0, 0.0), host("b2", "B", 0.0, 0.0)}, VMs: []VM{hot("v", "a1"), hot("w", "a1")}},
			want:  []string{"1 migrations are in flight or decided (max_concurrent 1)"},
			moved: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := engine(t, tc.mut)
			if tc.prep != nil {
				tc.prep(e)
			}
			// The first sample starts the window; the one the case is
			// about comes after it (unless the window is the point).
			tc.s.At = t0
			ev := e.Evaluate(tc.s)
			if tc.name != "window not over" {
				tc.s.At = t0.Add(30 * time.Second)
				ev = e.Evaluate(tc.s)
			}
			if len(ev.Decisions) != tc.moved || len(ev.Held) != 1 || ev.Held[0].Kind != tc.kind {
				t.Fatalf("decisions %+v, held %+v (want kind %s)", ev.Decisions, ev.Held, tc.kind)
			}
			for _, w := range tc.want {
				if !strings.Contains(ev.Held[0].Reason, w) {
					t.Errorf("held reason %q lacks %q", ev.Held[0].Reason, w)
				}
			}
		})
	}
	// Nothing violating: nothing held.
	e := engine(t, nil)
	if ev := e.Evaluate(Sample{At: t0, Hosts: []Host{host("a1", "A", 0.1, 0.1)}, VMs: []VM{vm("v", "a1", 0.1)}}); len(ev.Held)+len(ev.Decisions) != 0 {
		t.Fatalf("a calm cluster: %+v", ev)
	}
}
