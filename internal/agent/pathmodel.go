package agent

import (
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp"
)

// Migration links are one SUDP connection per migration, so every
// migration's connection would find the path's rate again from its
// initial window — a few round trips at a fraction of the link, for every
// VM of an evacuation. The agent remembers the rate model each link left
// (its bottleneck bandwidth and minimum RTT), per peer and address, and
// starts the next link over the same path from it (careful resume: the
// controller checks the first RTT against the remembered one and probes
// on from half the rate, sudp/congestion Controller.Resume).

const (
	// pathModelTTL bounds how long a model is trusted: paths change.
	pathModelTTL = 5 * time.Minute
	// maxPathModels bounds the models kept (the oldest go first).
	maxPathModels = 4 * maxLinks
	// pathModelRounds is how many round trips a link must have measured
	// for its model to be remembered: fewer, and it may still be ramping.
	pathModelRounds = 20
	// lossBaselineRounds is how many rounds a link's random-loss rate
	// must rest on to be passed on (the controller's median spans 15).
	lossBaselineRounds = 15
)

// pathKey names a path: the peer agent and the address its packets come
// from (a relayed link's is the relay's).
type pathKey struct {
	peer [32]byte
	addr netip.AddrPort
}

// pathModel is what a link measured.
type pathModel struct {
	bw     float64 // bytes/s
	minRTT time.Duration
	loss   float64 // the path's random loss; −1: not measured over enough rounds
	at     time.Time
}

func linkPath(c *sudp.Conn) pathKey {
	return pathKey{peer: c.Session().PeerStatic, addr: c.RemoteAddr()}
}

// modelOf is the model c has measured, if it is one to keep.
func modelOf(c *sudp.Conn, now time.Time) (pathModel, bool) {
	st := c.Stats().Controller
	if st.Rounds < pathModelRounds || !(st.BtlBw > 0) || st.MinRTT <= 0 || st.State == "STARTUP" {
		return pathModel{}, false
	}
	loss := -1.0
	if st.LossRounds >= lossBaselineRounds {
		loss = st.RandomLoss
	}
	return pathModel{bw: st.BtlBw, minRTT: st.MinRTT, loss: loss, at: now}, true
}

// remember keeps l's model for the next link over its path. It calls
// into the connection, so p.mu must not be held (a connection's lock is
// taken under the endpoint's, and the endpoint's reader takes p.mu).
func (p *peers) remember(l *link) {
	if m, ok := modelOf(l.c, p.now()); ok {
		p.keep(linkPath(l.c), m)
	}
}

// keep records m as path k's model, forgetting the oldest model beyond
// maxPathModels.
func (p *peers) keep(k pathKey, m pathModel) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.models == nil {
		p.models = map[pathKey]pathModel{}
	}
	if _, have := p.models[k]; !have && len(p.models) >= maxPathModels {
		var oldest pathKey
		first := true
		for key, v := range p.models {
			if first || v.at.Before(p.models[oldest].at) {
				oldest, first = key, false
			}
		}
		delete(p.models, oldest)
	}
	p.models[k] = m
}

// resume starts l from its path's model (pickModel) and returns the rate
// it offered (0: none). p.mu must not be held (see remember).
func (p *peers) resume(l *link) float64 {
	k := linkPath(l.c)
	now := p.now()
	p.mu.Lock()
	saved, ok := p.models[k]
	if ok && now.Sub(saved.at) > pathModelTTL {
		delete(p.models, k)
	}
	open := make([]*link, 0, len(p.links))
	for _, o := range p.links {
		if o != l {
			open = append(open, o)
		}
	}
	p.mu.Unlock()
	var live []pathModel
	sharing := 0
	for _, o := range open {
		if linkPath(o.c) != k {
			continue
		}
		sharing++
		if m, ok := modelOf(o.c, now); ok {
			live = append(live, m)
		}
	}
	if m, share, ok := pickModel(saved, ok, live, sharing, now); ok && l.c.Resume(share, m.minRTT, m.loss) {
		return share
	}
	return 0
}

// pickModel chooses where a new link over a path starts: from the newest
// of the model remembered (saved, if have) and those of the links over
// the path still open (live; sharing of them are open in all), the
// remembered one only within pathModelTTL. The new link's share is the
// model's rate over the links the path will carry, itself included.
func pickModel(saved pathModel, have bool, live []pathModel, sharing int, now time.Time) (m pathModel, share float64, ok bool) {
	m = saved
	ok = have && now.Sub(saved.at) <= pathModelTTL
	for _, l := range live {
		if !ok || l.at.After(m.at) {
			m, ok = l, true
		}
	}
	if !ok {
		return pathModel{}, 0, false
	}
	return m, m.bw / float64(1+sharing), true
}

// resumeLink starts a new link from its path's model, if one is known.
func (a *Agent) resumeLink(l *link) {
	if a.cfg.NoRateResume {
		return
	}
	if bw := a.peers.resume(l); bw > 0 {
		a.log.Info("agent: link starts from the path's last rate", "topic", l.topic, "peer", l.peerID, "rate_bps", bw*8)
	}
}
