package agent

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/net"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/migration"
)

// hostSampler measures the host (the paper's System Monitor Agent):
// CPU and memory use, swap and network rates since the previous sample.
type hostSampler struct {
	at              time.Time
	swapIn, swapOut uint64
	netBytes        uint64
}

func (h *hostSampler) sample(ctx context.Context) message.HostStats {
	s := message.HostStats{Cores: runtime.NumCPU()}
	if p, err := cpu.PercentWithContext(ctx, 0, false); err == nil && len(p) == 1 {
		s.CPU = p[0] / 100
	}
	if vm, err := mem.VirtualMemoryWithContext(ctx); err == nil {
		s.Mem, s.MemSize = vm.UsedPercent/100, vm.Total
	}
	now := time.Now()
	dt := now.Sub(h.at).Seconds()
	if sw, err := mem.SwapMemoryWithContext(ctx); err == nil {
		if !h.at.IsZero() && dt > 0 {
			s.SwapIn = float64(sw.Sin-min(sw.Sin, h.swapIn)) / dt
			s.SwapOut = float64(sw.Sout-min(sw.Sout, h.swapOut)) / dt
		}
		h.swapIn, h.swapOut = sw.Sin, sw.Sout
	}
	if io, err := net.IOCountersWithContext(ctx, false); err == nil && len(io) == 1 {
		total := io[0].BytesSent + io[0].BytesRecv
		if !h.at.IsZero() && dt > 0 {
			s.Net = float64(total-min(total, h.netBytes)) / dt
		}
		h.netBytes = total
	}
	h.at = now
	return s
}

// report builds the monitor's report: the host, and every VM the driver
// knows with its current use.
func (a *Agent) report(ctx context.Context) message.Report {
	r := message.Report{Time: time.Now().UnixNano()}
	if a.cfg.HostStats != nil {
		r.Host = a.cfg.HostStats()
	} else {
		r.Host = a.host.sample(ctx)
	}
	if a.cfg.Driver == nil {
		return r
	}
	seen := time.Now()
	vms, err := a.cfg.Driver.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("agent: listing VMs", "err", err)
		}
		return r
	}
	listed := map[string]bool{}
	for _, vm := range vms {
		listed[vm.ID] = true
		// A VM that stopped without being asked to is an alarm, raised
		// once (the outbox remembers it across agent restarts); one this
		// agent destroys on an order is not (expect.go).
		a.judge(ctx, vm.ID, true, vm.State, seen)
		var st hypervisor.Stats
		if vm.State == hypervisor.StateRunning || vm.State == hypervisor.StatePaused {
			st, _ = a.cfg.Driver.Stats(ctx, vm.ID)
		}
		r.VMs = append(r.VMs, message.VMReport{VM: vm, Stats: st})
	}
	for _, id := range append(a.events.stoppedVMs(), a.expect.ids()...) {
		if !listed[id] {
			a.judge(ctx, id, false, "", seen)
			listed[id] = true // judged once
		}
	}
	a.expect.settle(seen)
	if a.cfg.HostModel != nil {
		r.Host = a.cfg.HostModel.stats(r.VMs)
	}
	return r
}

// HostModel is a simulated host's size.
type HostModel struct {
	Cores  int
	Memory uint64 // bytes
}

// stats is the model host's load: its VMs' CPU (by vCPUs), memory and
// network added up.
func (m *HostModel) stats(vms []message.VMReport) message.HostStats {
	s := message.HostStats{Cores: max(m.Cores, 1), MemSize: m.Memory}
	var cpu float64
	var mem uint64
	for _, v := range vms {
		if v.VM.State == hypervisor.StateStopped {
			continue
		}
		cpu += v.Stats.CPU * float64(max(v.VM.VCPUs, 1))
		mem += v.VM.Memory
		s.Net += v.Stats.NetTx + v.Stats.NetRx
	}
	s.CPU = min(cpu/float64(s.Cores), 1)
	if m.Memory > 0 {
		s.Mem = min(float64(mem)/float64(m.Memory), 1)
	}
	return s
}

// act runs one MMC action on the driver.
func (a *Agent) act(ctx context.Context, act message.Action) message.ActionResult {
	res := message.ActionResult{ID: act.ID}
	var err error
	switch {
	case strings.HasPrefix(act.Op, "peer."):
		err = a.actPeer(ctx, act)
	case strings.HasPrefix(act.Op, "migrate."):
		res.Mig, err = a.actMigrate(ctx, act)
	default:
		res.VM, err = a.actVM(ctx, act)
	}
	if err != nil {
		res.Error = err.Error()
	} else {
		res.OK = true
	}
	a.log.Log(ctx, actionLogLevel(act.Op, res.OK), "agent: action", "op", act.Op, "vm", act.VM, "ok", res.OK, "err", res.Error)
	return res
}

// actPeer carries out an introduction (see peers.go).
func (a *Agent) actPeer(ctx context.Context, act message.Action) error {
	if act.Op == "peer.withdraw" {
		if act.Withdraw == nil {
			return errMissing("withdrawal")
		}
		var key [32]byte
		copy(key[:], act.Withdraw.PeerKey)
		n := a.peers.withdraw(act.Withdraw.PeerID, key)
		a.metrics.peerWithdrawn.Add(float64(n))
		a.log.Warn("agent: the MMC revoked a peer; its direct links are closed and it is refused", "peer", act.Withdraw.PeerID, "links_closed", n)
		return nil
	}
	if act.Intro == nil {
		return errMissing("introduction")
	}
	switch act.Op {
	case "peer.expect":
		if err := a.peers.add(act.Intro, a.clock.offset()); err != nil {
			return err
		}
		if act.Intro.RelayAddr != "" {
			// Bound before answering: the dialer's first packets
			// reach the relay after this answer, and the relay
			// forwards only to a bound address.
			_, err := a.bindRelay(ctx, act.Intro)
			return err
		}
		if act.Intro.PunchAt != 0 {
			a.startPunches(act.Intro, true)
		}
		return nil
	case "peer.punch":
		// A relayed link's listener, for an upgrade: punch towards the
		// dialer for the window.
		if a.peers.link(act.Intro.Topic) == nil || act.Intro.PunchAt == 0 {
			return errMissing("a link and a punch time")
		}
		a.startPunches(act.Intro, false)
		return nil
	case "peer.upgrade":
		return a.upgradeLink(ctx, act.Intro)
	case "peer.dial":
		return a.dialPeer(ctx, act.Intro)
	case "peer.close":
		a.peers.closeLink(act.Intro.Topic)
		return nil
	}
	return errMissing("a known op, not " + act.Op)
}

// actVM carries out a hypervisor action.
func (a *Agent) actVM(ctx context.Context, act message.Action) (*hypervisor.VM, error) {
	d := a.cfg.Driver
	if d == nil {
		return nil, errors.New("this agent has no hypervisor driver")
	}
	switch act.Op {
	case "vm.create":
		if act.Spec == nil {
			return nil, errMissing("spec")
		}
		var vm hypervisor.VM
		err := a.createVM(act.Spec.Name, "", "", func() (err error) {
			vm, err = d.Create(ctx, *act.Spec)
			return err
		})
		if err != nil {
			return nil, err
		}
		return &vm, nil
	case "vm.delete":
		return nil, a.destroyVM(ctx, act.VM, expectDeleted, "")
	case "vm.pause":
		return nil, d.Pause(ctx, act.VM)
	case "vm.resume":
		return nil, d.Resume(ctx, act.VM)
	case "vm.set-workload":
		if act.Workload == nil {
			return nil, errMissing("workload")
		}
		return nil, d.SetWorkload(ctx, act.VM, *act.Workload)
	}
	return nil, errMissing("a known op, not " + act.Op)
}

type errMissing string

func (e errMissing) Error() string { return "action needs " + string(e) }

// actionLogLevel is the level an action's outcome is logged at. A status
// poll changes nothing and comes every few hundred milliseconds of a
// migration: at INFO it was three in four of an agent's log lines. A poll
// that failed still says so at INFO.
func actionLogLevel(op string, ok bool) slog.Level {
	if op == string(migration.OpStatus) && ok {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
