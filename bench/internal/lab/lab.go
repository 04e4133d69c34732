// Package lab drives Ferry's WAN lab (the `wanlab` binary, see shared/CLI.md)
// for the benchmark: it brings a lab up under a unique name, reads its
// sites and link counters (`wanlab status NAME --json`) and tears it down.
//
// The link counters are what the benchmark uses as its uniform "bytes on the
// wire" measure: every packet a sender puts into the emulated WAN link is
// counted there, whatever the protocol, headers included.
package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Site is one end of the lab.
type Site struct {
	Name  string `json:"name"`
	Netns string `json:"netns"`
	Addr  string `json:"addr"`
}

// Counters are one direction's link counters (wanlab's stats.json).
type Counters struct {
	Enqueued        uint64 `json:"enqueued"`
	Delivered       uint64 `json:"delivered"`
	DeliveredBytes  uint64 `json:"delivered_bytes"`
	DroppedLoss     uint64 `json:"dropped_loss"`
	DroppedQueue    uint64 `json:"dropped_queue"`
	Duplicated      uint64 `json:"duplicated"`
	QueuedPackets   uint64 `json:"queued_packets"`
	InFlightPackets uint64 `json:"in_flight_packets"`
}

// LinkConfig is one direction's configuration as the lab reports it.
type LinkConfig struct {
	Delay   string  `json:"delay"`
	Loss    float64 `json:"loss"`
	RateBps float64 `json:"rate_bps"`
}

// Status is the part of `wanlab status NAME --json` the benchmark uses.
type Status struct {
	Name  string `json:"name"`
	Sites []Site `json:"sites"`
	Link  struct {
		AB     Counters `json:"ab"`
		BA     Counters `json:"ba"`
		Config struct {
			AB LinkConfig `json:"ab"`
			BA LinkConfig `json:"ba"`
		} `json:"config"`
		Updated time.Time `json:"updated"`
	} `json:"link"`
	Running bool `json:"running"`
}

// Lab is a running lab made by Up.
type Lab struct {
	Bin  string // the wanlab binary
	Name string
	// Args are the `wanlab up` flags used (for the report).
	Args []string
	// Client is site a (NAME-a), Server site b (NAME-b).
	Client, Server Site
	// AB is the a→b (data direction) configuration.
	AB LinkConfig
}

// Up runs `wanlab up NAME ARGS...` and reads the lab's sites. On any error
// after the lab was created it is taken down again.
func Up(ctx context.Context, bin, name string, args []string) (*Lab, error) {
	l := &Lab{Bin: bin, Name: name, Args: args}
	if _, err := l.run(ctx, append([]string{"up", name}, args...)...); err != nil {
		// `up` may have left parts behind when it failed half-way.
		_ = l.Down()
		return nil, err
	}
	st, err := l.Status(ctx)
	if err != nil {
		_ = l.Down()
		return nil, err
	}
	if len(st.Sites) < 2 || st.Sites[0].Netns == "" || st.Sites[1].Addr == "" {
		_ = l.Down()
		return nil, fmt.Errorf("wanlab status %s: want two sites with netns and addr, got %+v", name, st.Sites)
	}
	l.Client, l.Server = st.Sites[0], st.Sites[1]
	l.AB = st.Link.Config.AB
	return l, nil
}

// Down removes the lab (`wanlab down NAME`, idempotent). It does not use
// the caller's context so that it also runs after an interrupt.
func (l *Lab) Down() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := l.run(ctx, "down", l.Name)
	return err
}

// Status runs `wanlab status NAME --json`.
func (l *Lab) Status(ctx context.Context) (Status, error) {
	var st Status
	out, err := l.run(ctx, "status", l.Name, "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("wanlab status %s --json: %w", l.Name, err)
	}
	return st, nil
}

// Quiet waits until the lab's counters were written after t and nothing is
// queued or in flight on the link (so a run's packets are all counted), up
// to max; it returns the last status read either way.
func (l *Lab) Quiet(ctx context.Context, after time.Time, max time.Duration) (Status, error) {
	deadline := time.Now().Add(max)
	for {
		st, err := l.Status(ctx)
		if err != nil {
			return st, err
		}
		idle := st.Link.AB.QueuedPackets+st.Link.AB.InFlightPackets+st.Link.BA.QueuedPackets+st.Link.BA.InFlightPackets == 0
		if (st.Link.Updated.After(after) && idle) || time.Now().After(deadline) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *Lab) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, l.Bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		return out, fmt.Errorf("%s %s: %v: %s", l.Bin, strings.Join(args, " "), err, msg)
	}
	return out, nil
}

// DirDelta is one direction's counter change over a run.
type DirDelta struct {
	Packets        uint64 `json:"packets"` // offered to the link (enqueued)
	Delivered      uint64 `json:"delivered"`
	DeliveredBytes uint64 `json:"delivered_bytes"`
	DroppedLoss    uint64 `json:"dropped_loss"`
	DroppedQueue   uint64 `json:"dropped_queue"`
	// WireBytes estimates the bytes the sender offered to the link (IP
	// packets incl. headers, incl. those lost or dropped by the queue): the
	// mean delivered packet size (DeliveredBytes / Delivered) times Packets. The lab
	// counts dropped packets but not their bytes; drops are independent of
	// packet size, so the mean delivered size stands for them.
	WireBytes uint64 `json:"wire_bytes"`
}

// Delta is the link's counter change over a run.
type Delta struct {
	AB DirDelta `json:"ab"`
	BA DirDelta `json:"ba"`
	// Settled is false when the link still had packets queued or in
	// flight at the second reading.
	Settled bool `json:"settled"`
}

// Diff computes the change from a to b.
func Diff(a, b Status) *Delta {
	d := &Delta{AB: dirDiff(a.Link.AB, b.Link.AB), BA: dirDiff(a.Link.BA, b.Link.BA)}
	d.Settled = b.Link.AB.QueuedPackets+b.Link.AB.InFlightPackets+b.Link.BA.QueuedPackets+b.Link.BA.InFlightPackets == 0
	return d
}

func dirDiff(a, b Counters) DirDelta {
	sub := func(x, y uint64) uint64 {
		if y < x {
			return 0
		}
		return y - x
	}
	d := DirDelta{
		Packets:        sub(a.Enqueued, b.Enqueued),
		Delivered:      sub(a.Delivered, b.Delivered),
		DeliveredBytes: sub(a.DeliveredBytes, b.DeliveredBytes),
		DroppedLoss:    sub(a.DroppedLoss, b.DroppedLoss),
		DroppedQueue:   sub(a.DroppedQueue, b.DroppedQueue),
	}
	if d.Delivered > 0 {
		d.WireBytes = uint64(float64(d.DeliveredBytes) / float64(d.Delivered) * float64(d.Packets))
	}
	return d
}

// UniqueName is a lab name that no other benchmark run uses: "bw" + pid,
// plus a suffix per lab within one run (wanlab names must stay short:
// interface names derive from them).
func UniqueName(pid, i int) string {
	return fmt.Sprintf("bw%d%c", pid, 'a'+rune(i%26))
}

// ErrNotRoot is returned by CheckRoot.
var ErrNotRoot = errors.New("the WAN lab needs root (network namespaces, TUN devices): run as root, e.g. `sudo make bench-wan`")
