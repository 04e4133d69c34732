package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/hypervisor/qemu"
)

// BenchmarkQEMUWAN migrates the same QEMU guest (TCG, 128 MiB, half of
// it a pattern QEMU cannot elide, 1 MiB/s dirtied) across the WAN lab's
// "wan" link (100 Mbit/s, 50 ms RTT, 1 % loss): by QEMU itself over TCP
// with CUBIC and with BBR, and through Ferry (MMC, agents, SUDP tunnel).
// Each iteration is one migration; total time runs from the migrate
// command to the destination running, downtime from the source's pause
// to the destination running.
//
//	go test ./e2e -run '^$' -bench QEMUWAN -benchtime 1x -count 3 -timeout 2h
//
// Needs root (the lab) and QEMU, like the e2e tests.
func BenchmarkQEMUWAN(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the WAN lab needs root")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 is not installed")
	}
	spec := hypervisor.Spec{Name: "bench", Memory: 128 << 20, VCPUs: 1,
		Workload: hypervisor.Workload{Fill: 0.5, Dirty: 1 << 20}}
	for _, cc := range []string{"cubic", "bbr"} {
		b.Run("tcp-"+cc, func(b *testing.B) { benchTCP(b, spec, cc) })
	}
	b.Run("ferry", func(b *testing.B) { benchFerry(b, spec) })
}

// report records the iterations' mean figures.
func report(b *testing.B, total, down []time.Duration) {
	var ts, ds time.Duration
	for i := range total {
		ts += total[i]
		ds += down[i]
		b.Logf("run %d: total %.1f s, downtime %d ms", i+1, total[i].Seconds(), down[i].Milliseconds())
	}
	n := time.Duration(len(total))
	b.ReportMetric((ts / n).Seconds(), "total-s/op")
	b.ReportMetric(float64((ds / n).Milliseconds()), "downtime-ms/op")
	b.ReportMetric(0, "ns/op")
}

// nsDriver is a QEMU driver whose VMs run in namespace ns (their TCP
// sockets are there; the monitor sockets are files, reachable anywhere).
func nsDriver(b *testing.B, ns string) *qemu.Driver {
	dir := b.TempDir()
	d, err := qemu.New(dir, "")
	if err != nil {
		b.Fatal(err)
	}
	wrap := filepath.Join(dir, "qemu-in-netns")
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", ns, d.Binary)
	if err := os.WriteFile(wrap, []byte(script), 0o700); err != nil {
		b.Fatal(err)
	}
	d.Binary = wrap
	b.Cleanup(func() {
		vms, _ := d.List(context.Background())
		for _, vm := range vms {
			_ = d.Destroy(context.Background(), vm.ID)
		}
	})
	return d
}

func waitGuestReady(b *testing.B, d *qemu.Driver, id string) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		raw, err := d.ReadMemory(context.Background(), id, qemu.GuestCountersAddr, 12)
		if err != nil {
			b.Fatal(err)
		}
		if c, _ := qemu.ParseCounters(raw); c.Status == 1 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("the guest did not write its pattern")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// benchTCP: QEMU's own migration over TCP with congestion control cc.
func benchTCP(b *testing.B, spec hypervisor.Spec, cc string) {
	l := upLab(b, "wan")
	for _, ns := range l.netns {
		if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_congestion_control="+cc).CombinedOutput(); err != nil {
			b.Fatalf("sysctl %s: %v: %s", cc, err, out)
		}
	}
	src, dst := nsDriver(b, l.netns[0]), nsDriver(b, l.netns[1])
	ctx := context.Background()
	var total, down []time.Duration
	for i := 0; i < b.N; i++ {
		if _, err := src.Create(ctx, spec); err != nil {
			b.Fatal(err)
		}
		waitGuestReady(b, src, spec.Name)
		if _, err := dst.CreateIncoming(ctx, spec); err != nil {
			b.Fatal(err)
		}
		uri := fmt.Sprintf("tcp:%s:4444", l.addr[1])
		if err := dst.QMP(ctx, spec.Name, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
			b.Fatal(err)
		}
		params := map[string]any{"max-bandwidth": int64(1) << 40, "downtime-limit": 300}
		if err := src.QMP(ctx, spec.Name, "migrate-set-parameters", params, nil); err != nil {
			b.Fatal(err)
		}
		caps := map[string]any{"capabilities": []map[string]any{{"capability": "auto-converge", "state": true}}}
		if err := src.QMP(ctx, spec.Name, "migrate-set-capabilities", caps, nil); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := src.QMP(ctx, spec.Name, "migrate", map[string]any{"uri": uri}, nil); err != nil {
			b.Fatal(err)
		}
		// The destination resumes as soon as its image is complete.
		for {
			st, err := dst.MigrationStatus(ctx, spec.Name)
			if err != nil {
				b.Fatal(err)
			}
			if st.State == hypervisor.MigCompleted {
				break
			}
			if st.State == hypervisor.MigFailed || time.Since(start) > time.Hour {
				b.Fatalf("TCP migration: %+v", st)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := dst.Resume(ctx, spec.Name); err != nil {
			b.Fatal(err)
		}
		resumed := time.Now()
		var mi struct {
			TotalTime int64 `json:"total-time"`
			Downtime  int64 `json:"downtime"`
		}
		if err := src.QMP(ctx, spec.Name, "query-migrate", nil, &mi); err != nil {
			b.Fatal(err)
		}
		// The source's pause: its completion (start + total-time) minus
		// its downtime, in this process's clock.
		paused := start.Add(time.Duration(mi.TotalTime-mi.Downtime) * time.Millisecond)
		total = append(total, resumed.Sub(start))
		down = append(down, resumed.Sub(paused))
		_ = src.Destroy(ctx, spec.Name)
		_ = dst.Destroy(ctx, spec.Name)
	}
	report(b, total, down)
}

// benchFerry: the same guest through Ferry, its record's figures.
func benchFerry(b *testing.B, spec hypervisor.Spec) {
	c, drv := qemuSites(b, "wan")
	var total, down []time.Duration
	for i := 0; i < b.N; i++ {
		if err := c.ctl(nil, "vms", "create", spec.Name, "--host", "east", "--memory", "128MiB", "--workload", "fill=0.5,dirty=1MiB/s"); err != nil {
			b.Fatal(err)
		}
		waitGuestReady(b, drv["east"], spec.Name)
		var mig struct {
			ID string `json:"id"`
		}
		if err := c.ctl(&mig, "migrate", spec.Name, "--to", "west"); err != nil {
			b.Fatal(err)
		}
		m, err := c.watch(mig.ID)
		if err != nil || m.State != "completed" {
			b.Fatalf("migration: %v (%+v)", err, m)
		}
		ms := func(a, b time.Time) int64 { return b.Sub(a).Milliseconds() }
		b.Logf("ferry run: %d bytes on the wire; start→pause %d ms, copy %d, deliver %d, commit %d, resume %d",
			m.BytesOnWire, ms(m.Started, m.PausedAt), ms(m.PausedAt, m.SentAt), ms(m.SentAt, m.VerifiedAt),
			ms(m.VerifiedAt, m.CommittedAt), ms(m.CommittedAt, m.ResumedAt))
		total = append(total, time.Duration(m.TotalMS)*time.Millisecond)
		down = append(down, time.Duration(m.DowntimeMS)*time.Millisecond)
		if err := c.ctl(nil, "vms", "delete", spec.Name); err != nil {
			b.Fatal(err)
		}
		c.waitFor("the VM gone", func() bool { return len(c.vmsOn()["west"]) == 0 })
	}
	report(b, total, down)
}
