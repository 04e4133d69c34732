// Package units parses and formats the sizes and rates operators type:
// "1GiB", "500MB", "100mbit", "1.5Gbit/s".
package units

import (
	"fmt"
	"strconv"
	"strings"
)

var byteSuffixes = []struct {
	s string
	m float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

// ParseBytes parses a byte count with an optional SI or IEC suffix.
func ParseBytes(s string) (uint64, error) {
	v, err := parseWithSuffix(s, byteSuffixes)
	if err != nil {
		return 0, err
	}
	return uint64(v), nil
}

var rateSuffixes = []struct {
	s string
	m float64
}{
	{"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"tbit", 1e12}, {"bit", 1},
	{"kbps", 1e3}, {"mbps", 1e6}, {"gbps", 1e9}, {"bps", 1},
	{"kib/s", 8 << 10}, {"mib/s", 8 << 20}, {"gib/s", 8 << 30},
	{"kb/s", 8e3}, {"mb/s", 8e6}, {"gb/s", 8e9}, {"b/s", 8},
}

// ParseRate parses a rate and returns bits per second: "100mbit", "1gbit",
// "125MB/s" (bytes per second), "10mbps" (bits, as tc and iperf3 use it).
func ParseRate(s string) (float64, error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	if strings.HasSuffix(strings.ToLower(s), "b/s") {
		t = strings.ToLower(strings.TrimSpace(s)) // keep the byte-rate suffix
	}
	return parseWithSuffix(t, rateSuffixes)
}

func parseWithSuffix(s string, suffixes []struct {
	s string
	m float64
}) (float64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, fmt.Errorf("units: empty value")
	}
	mult := 1.0
	for _, suf := range suffixes {
		if strings.HasSuffix(t, suf.s) {
			t = strings.TrimSpace(strings.TrimSuffix(t, suf.s))
			mult = suf.m
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("units: cannot parse %q", s)
	}
	return v * mult, nil
}

// FormatBytes renders a byte count with an IEC suffix.
func FormatBytes(n uint64) string {
	f := float64(n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 || u == "TiB" {
			if u == "B" {
				return fmt.Sprintf("%d B", n)
			}
			return fmt.Sprintf("%.2f %s", f, u)
		}
		f /= 1024
	}
	return ""
}

// FormatRate renders bits per second.
func FormatRate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.2f Mbit/s", bps/1e6)
	case bps >= 1e3:
		return fmt.Sprintf("%.2f kbit/s", bps/1e3)
	}
	return fmt.Sprintf("%.0f bit/s", bps)
}
