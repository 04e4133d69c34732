package agent_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/migration"
)

// The agents compress the migration stream on the link (zstream frames),
// whatever the hypervisor: a VM whose memory is mostly text crosses in
// far fewer bytes than its memory, and arrives intact; with compression
// off, every byte crosses.
func TestStreamCompression(t *testing.T) {
	h := newHarness(t)
	const mem = 4 << 20
	created, err := h.client().CreateVM(h.ctx, api.VMCreate{Name: "vm1", Host: "h1", Memory: mem, VCPUs: 1, Workload: "text=0.75"})
	if err != nil {
		t.Fatal(err)
	}
	original, _, ok := h.drivers["h1"].content(created.ID)
	if !ok {
		t.Fatal("no VM on h1")
	}
	h.waitFor("vm1 reported", 10*time.Second, func() bool {
		vms, _ := h.client().VMs(h.ctx)
		return len(vms) == 1 && vms[0].Host == "h1"
	})
	home, other := "h1", "h2"
	for _, tc := range []struct {
		setting  string
		min, max float64 // bytes on the wire ÷ memory
	}{
		{"zstd", 0.3, 0.7}, // a quarter random, three quarters three-bit text (0.44 each): ~0.58
		{"off", 1, 1.3},
	} {
		// The MMC may still hold the last source's copy in its inventory
		// for a moment after the commit (its agent's report of the
		// destroy): a migration back is refused until then.
		var m api.Created
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			m, err = h.client().Migrate(h.ctx, api.MigrateRequest{VM: "vm1", To: other, Options: migration.Options{StreamCompression: tc.setting}})
			if err == nil || !strings.Contains(err.Error(), "conflict") || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		h.waitFor("migration "+tc.setting, 30*time.Second, func() bool { return h.migration(m.ID).State == migration.Completed })
		h.checkOneCopy(t, "vm1", other, home, original)
		h.waitFor("the MMC's inventory", 10*time.Second, func() bool {
			vms, _ := h.client().VMs(h.ctx)
			return len(vms) == 1 && vms[0].Host == other
		})
		got := h.migration(m.ID)
		ratio := float64(got.BytesOnWire) / mem
		t.Logf("%s: %d bytes on the wire for %d of memory (%.2f)", tc.setting, got.BytesOnWire, mem, ratio)
		if ratio < tc.min || ratio > tc.max {
			t.Fatalf("%s: %.2f of the memory on the wire, want %.2f–%.2f", tc.setting, ratio, tc.min, tc.max)
		}
		home, other = other, home
	}
	if _, err := h.client().Migrate(h.ctx, api.MigrateRequest{VM: "vm1", To: other, Options: migration.Options{StreamCompression: "lz4"}}); err == nil {
		t.Fatal("an unknown stream compression was accepted")
	}
}
