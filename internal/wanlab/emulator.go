package wanlab

// This file is where the lab meets the emulation engine: it opens the two
// TUN devices inside their namespaces and runs a forward.Forwarder between
// them through one link.Link per direction.

import (
	"context"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab/forward"
	"github.com/ferry-vm/ferry/internal/wanlab/link"
	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

type emulator struct {
	devs    [2]*forward.TUNDevice
	fw      *forward.Forwarder
	cfgs    [2]link.Config
	done    chan error
	stopped chan struct{} // closed when the forwarder's Run returned
	cancel  context.CancelFunc
}

func newEmulator(ctx context.Context, st *State) (*emulator, error) {
	ab, ba, err := BuildConfigs(st.Spec)
	if err != nil {
		return nil, err
	}
	// Distinct seeds: with equal ones both directions would drop the k-th
	// packet together, correlating the two directions' losses.
	if ba.Seed == ab.Seed {
		ba.Seed = ab.Seed + 1
	}
	ctx, cancel := context.WithCancel(ctx)
	em := &emulator{done: make(chan error, 1), stopped: make(chan struct{}), cancel: cancel, cfgs: [2]link.Config{ab, ba}}
	var links [2]*link.Link
	for d := range 2 {
		if links[d], err = link.New(em.cfgs[d]); err != nil {
			return nil, err
		}
	}
	for s := range 2 {
		err := netns.Do(st.Sites[s].WANNetns, func() error {
			dev, err := forward.OpenTUN(wanIf)
			em.devs[s] = dev
			return err
		})
		if err == nil {
			err = configureWAN(st, s) // also raises txqueuelen to 4096
		}
		if err != nil {
			close(em.stopped)
			em.Close()
			return nil, err
		}
	}
	em.fw = forward.New(em.devs[0], em.devs[1], links[0], links[1], forward.Options{})
	go func() {
		defer close(em.stopped)
		em.done <- em.fw.Run(ctx)
	}()
	return em, nil
}

func (em *emulator) Snapshot() statsSnapshot {
	ab, ba := em.fw.Stats()
	wab, wba := em.fw.WriteErrors()
	return statsSnapshot{
		AB:      countersOf(ab),
		BA:      countersOf(ba),
		Config:  map[string]configView{"ab": viewOf(em.cfgs[0]), "ba": viewOf(em.cfgs[1])},
		Forward: map[string]uint64{"write_errors_ab": wab, "write_errors_ba": wba},
	}
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
