package relay

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCollector: every reason and event is exported (pedantic registry:
// consistent descriptions), with the relay's counts.
func TestCollector(t *testing.T) {
	r := newRelay(t, Config{Limits: Limits{MaxAllocations: 1}})
	kA, kB := randKey(t), randKey(t)
	al, err := r.Allocate(ctxT(t, 5*time.Second), kA, kB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Allocate(ctxT(t, 5*time.Second), kA, kB); err == nil {
		t.Fatal("over the cap")
	}
	x := newRaw(t)
	x.send(al.AddrA, []byte{4, 0, 1, 2})
	if x.bind(al.AddrB, al.ID, kA, 1) {
		t.Fatal("side A's key bound side B")
	}
	waitFor(t, "drops", func() bool { s := r.Stats(); return s.Dropped[DropUnbound] == 1 && s.Dropped[DropBindBadMAC] == 1 })

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(r, prometheus.Labels{"role": "test"})); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, lp := range m.GetLabel() {
				if lp.GetName() != "role" {
					name += "{" + lp.GetValue() + "}"
				}
			}
			if m.GetCounter() != nil {
				got[name] = m.GetCounter().GetValue()
			} else {
				got[name] = m.GetGauge().GetValue()
			}
		}
	}
	for name, want := range map[string]float64{
		"ferry_relay_allocations":                            1,
		"ferry_relay_allocation_events_total{created}":       1,
		"ferry_relay_allocation_events_total{refused_limit}": 1,
		"ferry_relay_dropped_total{unbound}":                 1,
		"ferry_relay_dropped_total{bind_bad_mac}":            1,
		"ferry_relay_dropped_total{bind_replay}":             0,
		"ferry_relay_forwarded_packets_total":                0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if n := len(got); n != 1+5+2+2+int(numReasons)-1 {
		t.Errorf("%d series: %v", n, got)
	}
}
