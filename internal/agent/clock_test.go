package agent

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestClockOffset drives the estimator with synthetic probes: the MMC's
// clock is 700 ms ahead; one-way delays vary and are asymmetric. The
// estimate must come from the minimum-delay probe (error ≤ its delay/2),
// raise the alarm past the threshold and clear it when the offset returns.
func TestClockOffset(t *testing.T) {
	m := newMetrics()
	c := &clock{alarm: 500 * time.Millisecond, log: slog.New(slog.DiscardHandler), m: m}
	base := time.Unix(1_800_000_000, 0)
	probe := func(at time.Time, offset, up, down, proc time.Duration) {
		t1 := at
		t2 := t1.Add(up).Add(offset)
		t3 := t2.Add(proc)
		t4 := t3.Add(-offset).Add(down)
		c.sample(t1, t2, t3, t4)
	}
	tests := []struct {
		up, down time.Duration
	}{
		{40 * time.Millisecond, 10 * time.Millisecond}, // asymmetric: error 15 ms
		{5 * time.Millisecond, 6 * time.Millisecond},   // the good one: error 0.5 ms
		{90 * time.Millisecond, 20 * time.Millisecond},
		{30 * time.Millisecond, 80 * time.Millisecond},
	}
	for i, tt := range tests {
		probe(base.Add(time.Duration(i)*time.Second), 700*time.Millisecond, tt.up, tt.down, time.Millisecond)
	}
	if got := c.offset(); got < 699*time.Millisecond || got > 701*time.Millisecond {
		t.Fatalf("offset %v, want 700ms ± 1ms (the minimum-delay probe)", got)
	}
	if v := testutil.ToFloat64(m.alarm); v != 1 {
		t.Fatalf("alarm gauge %v, want 1 at 700 ms > 500 ms", v)
	}
	if v := testutil.ToFloat64(m.offset); v < 0.699 || v > 0.701 {
		t.Fatalf("offset gauge %v", v)
	}
	// The MMC's clock comes back: newer, equally good probes replace the
	// old window and the alarm clears.
	for i := 0; i < 8; i++ {
		probe(base.Add(time.Minute+time.Duration(i)*time.Second), -20*time.Millisecond, 5*time.Millisecond, 5*time.Millisecond, 0)
	}
	if got := c.offset(); got != -20*time.Millisecond {
		t.Fatalf("offset %v, want -20ms", got)
	}
	if v := testutil.ToFloat64(m.alarm); v != 0 {
		t.Fatalf("alarm gauge %v, want 0", v)
	}
	// A probe whose timestamps imply a negative delay (our clock jumped
	// back mid-probe) is ignored.
	c.sample(base, base, base, base.Add(-time.Second))
	if got := c.offset(); got != -20*time.Millisecond {
		t.Fatalf("impossible probe changed the offset to %v", got)
	}
}

// TestLogsCarryMMCTime: once an offset is measured, every log record also
// carries the time on the MMC's clock.
func TestLogsCarryMMCTime(t *testing.T) {
	var buf bytes.Buffer
	c := &clock{alarm: time.Hour, log: slog.New(slog.DiscardHandler), m: newMetrics()}
	log := slog.New(mmcTimeHandler{slog.NewJSONHandler(&buf, nil), c})
	log.Info("before")
	if strings.Contains(buf.String(), "mmc_time") {
		t.Fatal("mmc_time before any measurement")
	}
	t1 := time.Now()
	c.sample(t1, t1.Add(3*time.Second), t1.Add(3*time.Second), t1) // MMC 3 s ahead, zero delay
	buf.Reset()
	log.With("k", "v").Info("after")
	var rec struct {
		Time    time.Time `json:"time"`
		MMCTime time.Time `json:"mmc_time"`
	}
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if d := rec.MMCTime.Sub(rec.Time); d != 3*time.Second {
		t.Fatalf("mmc_time − time = %v, want 3s", d)
	}
}
