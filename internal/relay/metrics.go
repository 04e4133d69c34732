package relay

import "github.com/prometheus/client_golang/prometheus"

// Collector exposes a relay's counters as Prometheus metrics. Every
// datagram the relay refused is counted under its reason.
type Collector struct {
	r *Relay

	allocations, allocEvents, binds, forwarded, forwardedBytes, dropped *prometheus.Desc
}

// NewCollector returns a collector for r; constLabels are added to every
// metric.
func NewCollector(r *Relay, constLabels prometheus.Labels) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("ferry_relay_"+name, help, labels, constLabels)
	}
	return &Collector{
		r:           r,
		allocations: d("allocations", "Allocations (relayed links) held."),
		allocEvents: d("allocation_events_total", "Allocations by event: created, released, expired (idle), "+
			"refused_limit (MaxAllocations reached), refused_ports (no two free ports in the range).", "event"),
		binds:          d("binds_total", "Valid binds by result: accepted, moved (changed a side's bound address, first binds included).", "result"),
		forwarded:      d("forwarded_packets_total", "Datagrams forwarded from one side to the other."),
		forwardedBytes: d("forwarded_bytes_total", "UDP payload bytes forwarded."),
		dropped: d("dropped_total", "Datagrams refused, by reason: no_allocation, unbound (not from the side's bound address), "+
			"peer_unbound, allocation_rate, global_rate, bind_rate, bind_malformed, bind_bad_mac, bind_replay.", "reason"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.allocations, c.allocEvents, c.binds, c.forwarded, c.forwardedBytes, c.dropped} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	ch <- prometheus.MustNewConstMetric(c.allocations, prometheus.GaugeValue, float64(s.Allocations))
	counter(c.allocEvents, s.AllocsCreated, "created")
	counter(c.allocEvents, s.AllocsReleased, "released")
	counter(c.allocEvents, s.AllocsExpired, "expired")
	counter(c.allocEvents, s.AllocsRefused, "refused_limit")
	counter(c.allocEvents, s.AllocsNoPorts, "refused_ports")
	counter(c.binds, s.BindsAccepted, "accepted")
	counter(c.binds, s.BindsMoved, "moved")
	counter(c.forwarded, s.ForwardedPackets)
	counter(c.forwardedBytes, s.ForwardedBytes)
	for r := Reason(1); r < numReasons; r++ {
		counter(c.dropped, s.Dropped[r], r.String())
	}
}

var _ prometheus.Collector = (*Collector)(nil)
