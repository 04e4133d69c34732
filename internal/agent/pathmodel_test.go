package agent

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// A new link starts from the newest model of its path: the remembered one
// while it is fresh, a link still open over the path if it measured
// since; its share divides the rate by the links the path will carry.
func TestPickModel(t *testing.T) {
	now := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	saved := pathModel{bw: 12e6, minRTT: 50 * time.Millisecond, at: now.Add(-time.Minute)}
	live := pathModel{bw: 10e6, minRTT: 52 * time.Millisecond, at: now}
	stale := saved
	stale.at = now.Add(-pathModelTTL - time.Second)
	tests := []struct {
		name    string
		saved   pathModel
		have    bool
		live    []pathModel
		sharing int
		bw      float64
		rtt     time.Duration
		ok      bool
	}{
		{"nothing known", pathModel{}, false, nil, 0, 0, 0, false},
		{"remembered", saved, true, nil, 0, 12e6, 50 * time.Millisecond, true},
		{"remembered too long ago", stale, true, nil, 0, 0, 0, false},
		{"a link still open measured since", saved, true, []pathModel{live}, 1, 5e6, 52 * time.Millisecond, true},
		{"open but still ramping (no model), remembered one shared", saved, true, nil, 1, 6e6, 50 * time.Millisecond, true},
		{"only an open link", stale, true, []pathModel{live}, 1, 5e6, 52 * time.Millisecond, true},
		{"three open", pathModel{}, false, []pathModel{live, live, live}, 3, 2.5e6, 52 * time.Millisecond, true},
	}
	for _, tc := range tests {
		m, bw, ok := pickModel(tc.saved, tc.have, tc.live, tc.sharing, now)
		if rtt := m.minRTT; ok != tc.ok || bw != tc.bw || rtt != tc.rtt {
			t.Errorf("%s: %v %v %v, want %v %v %v", tc.name, bw, m.minRTT, ok, tc.bw, tc.rtt, tc.ok)
		}
	}
}

// The models kept are bounded, the oldest forgotten first.
func TestPathModelsBounded(t *testing.T) {
	p := newPeers()
	t0 := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	key := func(i int) pathKey {
		return pathKey{peer: [32]byte{byte(i), byte(i >> 8)}, addr: netip.MustParseAddrPort(fmt.Sprintf("198.18.0.1:%d", 1000+i))}
	}
	for i := range maxPathModels + 10 {
		p.keep(key(i), pathModel{bw: 1e6, minRTT: time.Millisecond, at: t0.Add(time.Duration(i) * time.Second)})
	}
	if len(p.models) != maxPathModels {
		t.Fatalf("%d models kept, want %d", len(p.models), maxPathModels)
	}
	if _, ok := p.models[key(9)]; ok {
		t.Fatal("an oldest model was kept")
	}
	if _, ok := p.models[key(maxPathModels+9)]; !ok {
		t.Fatal("the newest model was dropped")
	}
	p.keep(key(maxPathModels+9), pathModel{bw: 2e6, minRTT: time.Millisecond, at: t0.Add(time.Hour)})
	if len(p.models) != maxPathModels || p.models[key(maxPathModels+9)].bw != 2e6 {
		t.Fatal("a path's new model did not replace its old one in place")
	}
}
