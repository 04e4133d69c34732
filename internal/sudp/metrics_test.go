package sudp

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// metricValue gathers ep's metrics and returns the value of name with the
// given label pair.
func metricValue(t *testing.T, ep *Endpoint, name, label, value string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(ep, prometheus.Labels{"role": "test"})); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					if m.GetCounter() != nil {
						return m.GetCounter().GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	return 0
}

func TestMetricsSurviveConnectionEnd(t *testing.T) {
	p := newPair(t, Config{})
	ctx := ctxT(t)
	if err := p.cliConn.SendMessage(ctx, make([]byte, 100_000), PriorityNormal); err != nil {
		t.Fatal(err)
	}
	if _, err := p.srvConn.ReceiveMessage(ctx, 1<<20); err != nil {
		t.Fatal(err)
	}
	live := metricValue(t, p.srv, "ferry_sudp_stream_bytes_total", "direction", "received")
	if live < 100_000 {
		t.Fatalf("stream bytes received %v", live)
	}
	p.cliConn.Close()
	<-p.srvConn.Done()
	waitFor(t, "connection removed", func() bool { return p.srv.Stats().Conns == 0 })
	if after := metricValue(t, p.srv, "ferry_sudp_stream_bytes_total", "direction", "received"); after < live {
		t.Fatalf("counter went backwards when the connection ended: %v -> %v", live, after)
	}
}
