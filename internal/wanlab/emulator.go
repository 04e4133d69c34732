package wanlab

// This file is where the lab meets the emulation engine: it opens a TUN
// device in each WAN namespace (both sites' and the hub's) and runs a
// forward.Forwarder between them through one link.Link per directed pair:
// a→b and b→a as configured; with a hub, a→hub, hub→b, b→hub and hub→a,
// each the half of its site-to-site direction (HalfConfigs).

import (
	"context"
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/forward"
	"github.com/ferry-vm/ferry/internal/wanlab/link"
	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

type emulator struct {
	ports   []wanPort
	devs    []*forward.TUNDevice
	fw      *forward.Forwarder
	cfgs    [][]*link.Config // cfgs[src][dst], nil without a link
	done    chan error
	stopped chan struct{} // closed when the forwarder's Run returned
	cancel  context.CancelFunc
}

// linkConfigs returns the configuration of every directed pair of the
// ports (see the file comment).
func linkConfigs(spec Spec, nports int) ([][]*link.Config, error) {
	ab, ba, err := BuildConfigs(spec)
	if err != nil {
		return nil, err
	}
	// Distinct seeds: with equal ones both directions would drop the k-th
	// packet together, correlating the two directions' losses.
	if ba.Seed == ab.Seed {
		ba.Seed = ab.Seed + 1
	}
	cfgs := make([][]*link.Config, nports)
	for i := range cfgs {
		cfgs[i] = make([]*link.Config, nports)
	}
	cfgs[portA][portB], cfgs[portB][portA] = &ab, &ba
	if nports > portHub {
		aHub, hubB := HalfConfigs(ab)
		bHub, hubA := HalfConfigs(ba)
		cfgs[portA][portHub], cfgs[portHub][portB] = &aHub, &hubB
		cfgs[portB][portHub], cfgs[portHub][portA] = &bHub, &hubA
	}
	return cfgs, nil
}

func newEmulator(ctx context.Context, st *State) (*emulator, error) {
	ports := st.wanPorts()
	cfgs, err := linkConfigs(st.Spec, len(ports))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	em := &emulator{ports: ports, devs: make([]*forward.TUNDevice, len(ports)), cfgs: cfgs,
		done: make(chan error, 1), stopped: make(chan struct{}), cancel: cancel}
	links := make([][]*link.Link, len(ports))
	prefixes := make([]netip.Prefix, len(ports))
	for i := range ports {
		links[i] = make([]*link.Link, len(ports))
		for j, c := range cfgs[i] {
			if c == nil {
				continue
			}
			if links[i][j], err = link.New(*c); err != nil {
				cancel()
				return nil, err
			}
		}
		if prefixes[i], err = netip.ParsePrefix(ports[i].prefix); err != nil {
			cancel()
			return nil, err
		}
	}
	devs := make([]forward.Device, len(ports))
	for i, p := range ports {
		err := netns.Do(p.netns, func() error {
			dev, err := forward.OpenTUN(wanIf)
			em.devs[i] = dev
			return err
		})
		if err == nil {
			err = configureWAN(ports, i) // also raises txqueuelen to 4096
		}
		if err != nil {
			close(em.stopped)
			em.Close()
			return nil, err
		}
		devs[i] = em.devs[i]
	}
	// Two ports need no routing: the forwarder sends each packet to the
	// other one, as before the hub existed.
	em.fw = forward.NewMesh(devs, links, forward.RouteByDest(prefixes), forward.Options{})
	go func() {
		defer close(em.stopped)
		em.done <- em.fw.Run(ctx)
	}()
	return em, nil
}

func (em *emulator) Snapshot() statsSnapshot {
	s := statsSnapshot{
		AB:      countersOf(em.fw.LinkStats(portA, portB)),
		BA:      countersOf(em.fw.LinkStats(portB, portA)),
		Forward: map[string]uint64{"write_errors_ab": em.fw.LinkWriteErrors(portA, portB), "write_errors_ba": em.fw.LinkWriteErrors(portB, portA)},
	}
	config := map[string]configView{}
	hub := map[string]linkCounters{}
	fwd := s.Forward.(map[string]uint64)
	for i, from := range em.ports {
		for j, to := range em.ports {
			c := em.cfgs[i][j]
			if c == nil {
				continue
			}
			key := from.name + to.name // "ab", "ba" as before
			if i == portHub || j == portHub {
				key = from.name + "_" + to.name
				hub[key] = countersOf(em.fw.LinkStats(i, j))
				fwd["write_errors_"+key] = em.fw.LinkWriteErrors(i, j)
			}
			config[key] = viewOf(*c)
		}
	}
	s.Config = config
	if len(hub) > 0 {
		s.Hub = hub
		fwd["unroutable"] = em.fw.Unroutable()
	}
	return s
}

func (em *emulator) Done() <-chan error { return em.done }

// Close stops the forwarder, waits for it (so it never reads a closed
// device), then closes the TUN devices, which removes them.
func (em *emulator) Close() {
	em.cancel()
	select {
	case <-em.stopped:
	case <-time.After(2 * time.Second):
	}
	for _, d := range em.devs {
		if d != nil {
			d.Close()
		}
	}
}
