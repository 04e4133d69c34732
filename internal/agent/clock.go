package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// clock estimates the offset of the MMC's clock from ours with the NTP
// on-wire calculation over authenticated timestamps: for a probe sent at
// T1, received by the MMC at T2, answered at T3 and received at T4,
//
//	offset = ((T2 − T1) + (T3 − T4)) / 2,  delay = (T4 − T1) − (T3 − T2).
//
// The error of one sample is at most delay/2; of the recent samples the one
// with the smallest delay is kept (the NTP clock filter's idea). The host
// clock is never changed: the offset is exported and alarmed on.
type clock struct {
	alarm time.Duration
	log   *slog.Logger
	m     *metrics
	raise func(alarm bool, level, kind, msg string) // nil: log only

	mu      sync.Mutex
	samples [8]sample
	n       int
	best    sample
	alarmed bool
}

type sample struct {
	offset, delay time.Duration
}

func (c *clock) sample(t1, t2, t3, t4 time.Time) {
	s := sample{offset: (t2.Sub(t1) + t3.Sub(t4)) / 2, delay: t4.Sub(t1) - t3.Sub(t2)}
	if s.delay < 0 {
		return // impossible unless our clock jumped backwards mid-probe
	}
	c.mu.Lock()
	c.samples[c.n%len(c.samples)] = s
	c.n++
	best := c.samples[0]
	for _, x := range c.samples[:min(c.n, len(c.samples))] {
		if x.delay < best.delay {
			best = x
		}
	}
	c.best = best
	alarm := best.offset > c.alarm || best.offset < -c.alarm
	changed := alarm != c.alarmed
	c.alarmed = alarm
	c.mu.Unlock()

	c.m.offset.Set(best.offset.Seconds())
	c.m.delay.Set(best.delay.Seconds())
	if alarm {
		c.m.alarm.Set(1)
	} else {
		c.m.alarm.Set(0)
	}
	if changed && alarm {
		c.log.Warn("agent: ALARM clock offset to the MMC beyond threshold", "offset", best.offset.String(), "threshold", c.alarm.String(), "uncertainty", (best.delay / 2).String())
		if c.raise != nil {
			c.raise(true, "warn", "clock-offset", fmt.Sprintf("clock offset to the MMC %v (±%v) beyond %v", best.offset, best.delay/2, c.alarm))
		}
	} else if changed {
		c.log.Info("agent: clock offset back within threshold", "offset", best.offset.String())
		if c.raise != nil {
			c.raise(false, "info", "clock-offset", fmt.Sprintf("clock offset back within %v: %v", c.alarm, best.offset))
		}
	}
}

func (c *clock) offset() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.best.offset
}

// known returns the offset estimate and whether there is one yet.
func (c *clock) known() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.best.offset, c.n > 0
}

// mmcTimeHandler adds mmc_time — the record's time corrected by the
// measured offset — to every log record once an offset is known, so an
// agent's logs can be ordered against the MMC's without trusting either
// host clock to be set right.
type mmcTimeHandler struct {
	slog.Handler
	c *clock
}

func (h mmcTimeHandler) Handle(ctx context.Context, r slog.Record) error {
	if off, ok := h.c.known(); ok && !r.Time.IsZero() {
		r.AddAttrs(slog.Time("mmc_time", r.Time.Add(off)))
	}
	return h.Handler.Handle(ctx, r)
}

func (h mmcTimeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return mmcTimeHandler{h.Handler.WithAttrs(as), h.c}
}

func (h mmcTimeHandler) WithGroup(name string) slog.Handler {
	return mmcTimeHandler{h.Handler.WithGroup(name), h.c}
}
