package link

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/units"
)

// Profile is a named link configuration, applied to each direction.
type Profile struct {
	Name        string
	Description string
	Config      Config
}

// RTT is the round-trip propagation delay of the profile (no queueing).
func (p Profile) RTT() time.Duration { return 2 * p.Config.Delay }

var profiles = []Profile{
	{"clean", "no impairment: unlimited rate, no delay, no loss", Config{}},
	{"metro", "1 Gbit/s, 1 ms one-way (2 ms RTT), no loss",
		Config{Rate: 1e9, Delay: time.Millisecond}},
	{"wan", "100 Mbit/s, 25 ms one-way (50 ms RTT), 1 % loss",
		Config{Rate: 100e6, Delay: 25 * time.Millisecond, Loss: 0.01}},
	{"lossy", "100 Mbit/s, 25 ms one-way (50 ms RTT), 5 % loss",
		Config{Rate: 100e6, Delay: 25 * time.Millisecond, Loss: 0.05}},
	{"intercontinental", "200 Mbit/s, 100 ms one-way (200 ms RTT), 0.1 % loss",
		Config{Rate: 200e6, Delay: 100 * time.Millisecond, Loss: 0.001}},
	{"satellite", "50 Mbit/s, 300 ms one-way (600 ms RTT, geostationary), 0.5 % loss",
		Config{Rate: 50e6, Delay: 300 * time.Millisecond, Loss: 0.005}},
	{"wan1g", "1 Gbit/s, 50 ms one-way (100 ms RTT), no loss",
		Config{Rate: 1e9, Delay: 50 * time.Millisecond}},
}

// Profiles lists the named profiles.
func Profiles() []Profile { return append([]Profile(nil), profiles...) }

// ParseProfile returns the configuration of the named profile (case-insensitive).
func ParseProfile(name string) (Config, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	for _, p := range profiles {
		if p.Name == n {
			return p.Config, nil
		}
	}
	names := make([]string, len(profiles))
	for i, p := range profiles {
		names[i] = p.Name
	}
	sort.Strings(names)
	return Config{}, fmt.Errorf("link: unknown profile %q (known: %s)", name, strings.Join(names, ", "))
}

// ParseRate parses a rate flag ("100mbit", "1gbit", "125MB/s") into bits/s;
// "0", "" and "unlimited" mean no bottleneck.
func ParseRate(s string) (float64, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "0", "unlimited", "none":
		return 0, nil
	}
	return units.ParseRate(s)
}

// ParseLoss parses a probability: "1%" is 0.01, "0.01" is 0.01.
func ParseLoss(s string) (float64, error) {
	t := strings.TrimSpace(s)
	scale := 1.0
	if strings.HasSuffix(t, "%") {
		t, scale = strings.TrimSpace(strings.TrimSuffix(t, "%")), 0.01
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil {
		return 0, fmt.Errorf("link: cannot parse probability %q", s)
	}
	v *= scale
	if !(v >= 0 && v <= 1) {
		return 0, fmt.Errorf("link: probability %q not in [0, 100%%]", s)
	}
	return v, nil
}

// ParseQueue parses a buffer size given in bytes ("64KiB", "1MB", "150000")
// or as time at the link rate ("50ms"); exactly one result is non-zero
// unless s is "0" or empty (the default buffer).
func ParseQueue(s string) (bytes int, delay time.Duration, err error) {
	t := strings.TrimSpace(s)
	if t == "" || t == "0" {
		return 0, 0, nil
	}
	if d, derr := time.ParseDuration(t); derr == nil {
		if d < 0 {
			return 0, 0, fmt.Errorf("link: negative queue %q", s)
		}
		return 0, d, nil
	}
	b, berr := units.ParseBytes(t)
	if berr != nil || b > 1<<40 {
		return 0, 0, fmt.Errorf("link: cannot parse queue %q (want bytes like 64KiB or time like 50ms)", s)
	}
	return int(b), 0, nil
}
