package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/hypervisor/qemu"
	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

// BenchmarkQEMUCompressible migrates a guest whose memory compresses as a
// real one's does (128 MiB, all of it written: a tenth random, the rest
// text of three bits a byte, ~2.2× with zstd; 1 MiB/s dirtied) across the
// WAN lab's "wan" link (100 Mbit/s, 50 ms RTT) at 1 % and at 0 % loss:
//
//   - tcp-bbr: QEMU's default, one channel, no compression, over TCP BBR;
//
//   - tcp-bbr-mfdN-zstdL: QEMU's strongest WAN setup, N multifd channels
//     with zstd at level L, over TCP BBR (a sweep: the best is the peer);
//
//   - ferry: QEMU through Ferry (MMC, agents, one SUDP connection), the
//     agents compressing the stream as they judge (stream compression
//     auto); ferry-mfdN: with N multifd channels, each a stream of the
//     connection; ferry-off: without compression.
//
//     go test ./e2e -run '^$' -bench 'QEMUCompressible' -benchtime 1x -count 3 -timeout 2h
//
// Needs root (the lab) and QEMU.
func BenchmarkQEMUCompressible(b *testing.B) {
	requireQEMUBench(b)
	const workload = "fill=1,text=0.9,dirty=1MiB/s"
	w, err := hypervisor.ParseWorkload(workload)
	if err != nil {
		b.Fatal(err)
	}
	spec := hypervisor.Spec{Name: "bench", Memory: 128 << 20, VCPUs: 1, Workload: w}
	sweep := []struct{ channels, level int }{{2, 1}, {4, 1}, {8, 1}, {4, 3}, {4, 9}, {4, 0}}
	if s := os.Getenv("FERRY_MULTIFD_SWEEP"); s != "" {
		// e.g. "2:1,4:1": channels:level pairs (level 0: no compression).
		sweep = sweep[:0]
		for _, p := range strings.Split(s, ",") {
			var c, l int
			if _, err := fmt.Sscanf(p, "%d:%d", &c, &l); err != nil {
				b.Fatalf("FERRY_MULTIFD_SWEEP %q: %v", s, err)
			}
			sweep = append(sweep, struct{ channels, level int }{c, l})
		}
	}
	for _, loss := range []string{"1%", "0%"} {
		lab := []string{"--loss", loss}
		// (No "=" or "%" in the names: they name temporary directories
		// that QEMU's option syntax would misread.)
		b.Run("loss"+strings.TrimSuffix(loss, "%"), func(b *testing.B) {
			b.Run("tcp-bbr", func(b *testing.B) { benchTCP(b, spec, "bbr", lab...) })
			for _, s := range sweep {
				b.Run(fmt.Sprintf("tcp-bbr-mfd%d-zstd%d", s.channels, s.level), func(b *testing.B) {
					benchMultifd(b, spec, s.channels, s.level, lab)
				})
			}
			b.Run("ferry", func(b *testing.B) { benchFerryOn(b, spec, workload, lab) })
			for _, n := range []int{2, 4} {
				b.Run(fmt.Sprintf("ferry-mfd%d", n), func(b *testing.B) {
					benchFerryOn(b, spec, workload, lab, "--channels", fmt.Sprint(n))
				})
			}
			b.Run("ferry-off", func(b *testing.B) { benchFerryOn(b, spec, workload, lab, "--stream-compression", "off") })
		})
	}
}

// benchMultifd: QEMU's own migration with channels multifd channels and
// zstd at level (0: no compression), over TCP BBR across lab. QEMU makes
// the connections itself (tcp: URIs), so the two QEMUs run inside the
// lab's site namespaces, whose default congestion control is set to BBR.
func benchMultifd(b *testing.B, spec hypervisor.Spec, channels, level int, labArgs []string) {
	l := upLab(b, "wan", labArgs...)
	for _, ns := range l.netns {
		if err := netns.Do(ns, func() error {
			const knob = "/proc/sys/net/ipv4/tcp_congestion_control"
			if err := os.WriteFile(knob, []byte("bbr"), 0o644); err != nil {
				return err
			}
			got, err := os.ReadFile(knob)
			if err == nil && strings.TrimSpace(string(got)) != "bbr" {
				err = fmt.Errorf("congestion control %q, want bbr", got)
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	src, dst := newBenchDriver(b), newBenchDriver(b)
	ctx := context.Background()
	compression := "none"
	if level > 0 {
		compression = "zstd"
	}
	caps := map[string]any{"capabilities": []map[string]any{
		{"capability": "multifd", "state": true}, {"capability": "auto-converge", "state": true}}}
	params := map[string]any{"multifd-channels": channels, "multifd-compression": compression}
	if level > 0 {
		params["multifd-zstd-level"] = level
	}
	var total, down []time.Duration
	for i := 0; i < b.N; i++ {
		if err := netns.Do(l.netns[0], func() error { _, err := src.Create(ctx, spec); return err }); err != nil {
			b.Fatal(err)
		}
		waitGuestReady(b, src, spec.Name)
		if err := netns.Do(l.netns[1], func() error { _, err := dst.CreateIncoming(ctx, spec); return err }); err != nil {
			b.Fatal(err)
		}
		for _, d := range []*qemu.Driver{dst, src} {
			if err := d.QMP(ctx, spec.Name, "migrate-set-capabilities", caps, nil); err != nil {
				b.Fatal(err)
			}
			if err := d.QMP(ctx, spec.Name, "migrate-set-parameters", params, nil); err != nil {
				b.Fatal(err)
			}
		}
		uri := fmt.Sprintf("tcp:%s:%d", l.addr[1], 4444+i%1000)
		if err := dst.QMP(ctx, spec.Name, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
			b.Fatal(err)
		}
		srcParams := map[string]any{"max-bandwidth": int64(1) << 40, "downtime-limit": 300}
		if err := src.QMP(ctx, spec.Name, "migrate-set-parameters", srcParams, nil); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := src.QMP(ctx, spec.Name, "migrate", map[string]any{"uri": uri}, nil); err != nil {
			b.Fatal(err)
		}
		for {
			st, err := dst.MigrationStatus(ctx, spec.Name)
			if err != nil {
				b.Fatal(err)
			}
			if st.State == hypervisor.MigCompleted {
				break
			}
			if st.State == hypervisor.MigFailed {
				var mi map[string]any
				_ = src.QMP(ctx, spec.Name, "query-migrate", nil, &mi)
				b.Fatalf("multifd migration: %+v; source: %v", st, mi)
			}
			if time.Since(start) > tcpCap {
				b.Fatalf("not done after %v", tcpCap)
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
			RAM       struct {
				Transferred uint64 `json:"transferred"`
				Passes      int    `json:"dirty-sync-count"`
			} `json:"ram"`
		}
		if err := src.QMP(ctx, spec.Name, "query-migrate", nil, &mi); err != nil {
			b.Fatal(err)
		}
		b.Logf("multifd %d zstd %d: QEMU sent %d bytes in %d passes; its total %d ms, downtime %d ms",
			channels, level, mi.RAM.Transferred, mi.RAM.Passes, mi.TotalTime, mi.Downtime)
		paused := start.Add(time.Duration(mi.TotalTime-mi.Downtime) * time.Millisecond)
		total = append(total, resumed.Sub(start))
		down = append(down, resumed.Sub(paused))
		checkGuestPattern(b, dst, spec.Name, spec)
		_ = src.Destroy(ctx, spec.Name)
		_ = dst.Destroy(ctx, spec.Name)
	}
	report(b, total, down)
}
