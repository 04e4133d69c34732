package mmc

import "github.com/prometheus/client_golang/prometheus"

// loadCollector exports the load the agents last reported, per host and
// per VM, read from the MMC's views at scrape time (nothing kept twice).
// Rates are bytes per second as reported: the agents sample them.
type loadCollector struct{ s *Server }

var (
	hostLabels = []string{"host", "site"}
	vmLabels   = []string{"vm", "host"}

	descHostOnline = prometheus.NewDesc("ferry_mmc_host_online", "1 if the host's agent has a live session.", hostLabels, nil)
	descHostCPU    = prometheus.NewDesc("ferry_mmc_host_cpu_ratio", "Host CPU use, 0–1 of its cores, as last reported.", hostLabels, nil)
	descHostMem    = prometheus.NewDesc("ferry_mmc_host_memory_ratio", "Host memory use, 0–1, as last reported.", hostLabels, nil)
	descHostNet    = prometheus.NewDesc("ferry_mmc_host_network_bytes_per_second", "Host network traffic (both directions), as last reported.", hostLabels, nil)
	descHostSwap   = prometheus.NewDesc("ferry_mmc_host_swap_out_bytes_per_second", "Host swap-out rate, as last reported.", hostLabels, nil)
	descHostVMs    = prometheus.NewDesc("ferry_mmc_host_vms", "VMs on the host, as last reported.", hostLabels, nil)
	descVMCPU      = prometheus.NewDesc("ferry_mmc_vm_cpu_ratio", "VM CPU use, 0–1 of its vCPUs, as last reported.", vmLabels, nil)
	descVMMem      = prometheus.NewDesc("ferry_mmc_vm_memory_ratio", "VM memory in use, 0–1, as last reported.", vmLabels, nil)
	descVMNet      = prometheus.NewDesc("ferry_mmc_vm_network_bytes_per_second", "VM network traffic, as last reported.", vmLabels, nil)
	descVMDirty    = prometheus.NewDesc("ferry_mmc_vm_dirty_bytes_per_second", "Rate at which the VM writes memory (what a live migration must keep up with), as last reported.", vmLabels, nil)
)

func (loadCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHostOnline, descHostCPU, descHostMem, descHostNet, descHostSwap, descHostVMs, descVMCPU, descVMMem, descVMNet, descVMDirty} {
		ch <- d
	}
}

func (c loadCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, h := range c.s.hosts() {
		online := 0.0
		if h.Online {
			online = 1
		}
		gauge(descHostOnline, online, h.ID, h.Site)
		if h.ReportedAt.IsZero() {
			continue
		}
		gauge(descHostCPU, h.CPU, h.ID, h.Site)
		gauge(descHostMem, h.Mem, h.ID, h.Site)
		gauge(descHostNet, h.Net, h.ID, h.Site)
		gauge(descHostSwap, h.SwapOut, h.ID, h.Site)
		gauge(descHostVMs, float64(h.VMs), h.ID, h.Site)
	}
	for _, v := range c.s.vmsView() {
		if v.Host == "" {
			continue
		}
		gauge(descVMCPU, v.CPU, v.Name, v.Host)
		gauge(descVMMem, v.Mem, v.Name, v.Host)
		gauge(descVMNet, v.Net, v.Name, v.Host)
		gauge(descVMDirty, v.Dirty, v.Name, v.Host)
	}
}
