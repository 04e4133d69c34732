package wanlab

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/link"
)

// ValidateSpec checks the link options of spec without creating anything.
func ValidateSpec(spec Spec) error {
	if err := spec.checkKeys(); err != nil {
		return err
	}
	_, _, err := BuildConfigs(spec)
	return err
}

// BuildConfigs turns a Spec into the link configuration of each direction:
// the profile (if any), then the options for both directions, then the
// per-direction overrides.
func BuildConfigs(spec Spec) (ab, ba link.Config, err error) {
	var base link.Config
	if spec.Profile != "" {
		if base, err = link.ParseProfile(spec.Profile); err != nil {
			return ab, ba, err
		}
	}
	for i, dir := range []string{"ab", "ba"} {
		cfg := base
		if base.GE != nil {
			ge := *base.GE
			cfg.GE = &ge
		}
		for _, k := range LinkOptions { // fixed order: errors are deterministic
			v, ok := spec.Direction(dir)[k]
			if !ok {
				continue
			}
			if err := applyOption(&cfg, k, v); err != nil {
				return ab, ba, fmt.Errorf("%s %s=%q: %w", dir, k, v, err)
			}
		}
		if err := cfg.Validate(); err != nil {
			return ab, ba, fmt.Errorf("%s: %w", dir, err)
		}
		if i == 0 {
			ab = cfg
		} else {
			ba = cfg
		}
	}
	return ab, ba, nil
}

// HalfConfigs splits one direction's configuration into its two halves
// through the hub (first: from the sending site to the hub; second: from
// the hub to the receiving site), so that the path through the hub has the
// configured path's properties: each half gets half the delay and jitter,
// the full rate and queue, and random probabilities q with (1−q)² = 1−p
// (loss, reordering, duplication, corruption; a packet survives the path
// with probability 1−p). A Gilbert–Elliott chain cannot be split into two
// independent chains with the same bursts, so the first half carries it
// whole and the second has no loss. Seeds differ from c's and each other's.
func HalfConfigs(c link.Config) (first, second link.Config) {
	half := func(p float64) float64 { return 1 - math.Sqrt(1-p) }
	first, second = c, c
	first.Delay = c.Delay / 2
	second.Delay = c.Delay - first.Delay
	first.Jitter = c.Jitter / 2
	second.Jitter = c.Jitter - first.Jitter
	if c.ReorderDelay > 0 {
		first.ReorderDelay = c.ReorderDelay / 2
		second.ReorderDelay = c.ReorderDelay - first.ReorderDelay
	}
	for _, h := range []*link.Config{&first, &second} {
		h.Loss = half(c.Loss)
		h.Reorder = half(c.Reorder)
		h.Duplicate = half(c.Duplicate)
		h.Corrupt = half(c.Corrupt)
	}
	if c.GE != nil {
		ge := *c.GE
		first.GE, first.Loss = &ge, 0
		second.GE, second.Loss = nil, 0
	}
	first.Seed = c.Seed ^ 0x9e3779b97f4a7c15
	second.Seed = c.Seed ^ 0xc2b2ae3d27d4eb4f
	return first, second
}

func applyOption(c *link.Config, k, v string) error {
	var err error
	switch k {
	case "delay":
		c.Delay, err = time.ParseDuration(v)
	case "jitter":
		c.Jitter, err = time.ParseDuration(v)
	case "loss":
		c.GE = nil
		if rest, ok := strings.CutPrefix(v, "ge:"); ok {
			c.Loss = 0
			c.GE, err = parseGE(rest)
		} else {
			c.Loss, err = link.ParseLoss(v)
		}
	case "rate":
		c.Rate, err = link.ParseRate(v)
	case "queue":
		c.QueueBytes, c.QueueDelay, err = link.ParseQueue(v)
	case "reorder":
		c.Reorder, err = link.ParseLoss(v)
	case "duplicate":
		c.Duplicate, err = link.ParseLoss(v)
	case "corrupt":
		c.Corrupt, err = link.ParseLoss(v)
	case "seed":
		c.Seed, err = strconv.ParseUint(v, 0, 64)
	default:
		err = fmt.Errorf("unknown option")
	}
	return err
}

// parseGE parses the Gilbert–Elliott parameters "P,R[,K,H]" (probabilities,
// each like 0.01 or 1%): P good→bad, R bad→good, K loss in good (default
// 0), H loss in bad (default 1).
func parseGE(s string) (*link.GilbertElliott, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 2 && len(parts) != 4 {
		return nil, fmt.Errorf("want ge:P,R or ge:P,R,K,H")
	}
	vals := []float64{0, 0, 0, 1}
	for i, p := range parts {
		v, err := link.ParseLoss(p)
		if err != nil {
			return nil, err
		}
		vals[i] = v
	}
	return &link.GilbertElliott{P: vals[0], R: vals[1], K: vals[2], H: vals[3]}, nil
}

// linkCounters is how a direction's link.Stats appear in stats.json.
type linkCounters struct {
	Enqueued        uint64 `json:"enqueued"`
	Delivered       uint64 `json:"delivered"`
	DeliveredBytes  uint64 `json:"delivered_bytes"`
	DroppedLoss     uint64 `json:"dropped_loss"`
	DroppedQueue    uint64 `json:"dropped_queue"`
	Duplicated      uint64 `json:"duplicated"`
	Corrupted       uint64 `json:"corrupted"`
	Reordered       uint64 `json:"reordered"`
	QueuedBytes     uint64 `json:"queued_bytes"`
	QueuedPackets   uint64 `json:"queued_packets"`
	InFlightPackets uint64 `json:"in_flight_packets"`
}

func countersOf(s link.Stats) linkCounters {
	return linkCounters{
		Enqueued: s.Enqueued, Delivered: s.Delivered, DeliveredBytes: s.DeliveredBytes,
		DroppedLoss: s.DroppedLoss, DroppedQueue: s.DroppedQueue, Duplicated: s.Duplicated,
		Corrupted: s.Corrupted, Reordered: s.Reordered, QueuedBytes: s.QueuedBytes,
		QueuedPackets: s.QueuedPackets, InFlightPackets: s.InFlightPackets,
	}
}

// configView is how a direction's link.Config appears in stats.json.
type configView struct {
	Delay      string               `json:"delay"`
	Jitter     string               `json:"jitter,omitempty"`
	Loss       float64              `json:"loss"`
	GE         *link.GilbertElliott `json:"gilbert_elliott,omitempty"`
	RateBps    float64              `json:"rate_bps"`
	QueueBytes int                  `json:"queue_bytes,omitempty"`
	Reorder    float64              `json:"reorder,omitempty"`
	Duplicate  float64              `json:"duplicate,omitempty"`
	Corrupt    float64              `json:"corrupt,omitempty"`
	Seed       uint64               `json:"seed,omitempty"`
}

func viewOf(c link.Config) configView {
	v := configView{
		Delay: c.Delay.String(), Loss: c.Loss, GE: c.GE, RateBps: c.Rate, QueueBytes: c.QueueLimit(),
		Reorder: c.Reorder, Duplicate: c.Duplicate, Corrupt: c.Corrupt, Seed: c.Seed,
	}
	if c.Jitter > 0 {
		v.Jitter = c.Jitter.String()
	}
	return v
}
