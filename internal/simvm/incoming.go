package simvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// The destination side of a live migration. A VM started with
// Config.Incoming is paused with no memory content; migrate-incoming hands
// it the stream's descriptor. It applies pages as they come (each page's
// CRC32C checked by the decoder), keeps its own table of the CRC32C of
// every page's latest version, and at END compares that table's SHA-256
// with the source's: on a match it is completed and Verified, still
// paused until resumed; on a mismatch or any stream error it is failed and
// refuses to ever run.

// incoming is a VM's incoming migration. st and the flags are guarded by
// VM.migMu; the counters are updated by the receiving goroutine.
type incoming struct {
	st      hypervisor.MigrationStatus
	started bool // migrate-incoming arrived
	resumed bool // verified and resumed: an ordinary VM from then on

	received    atomic.Uint64 // distinct pages received (round 1 progress)
	transferred atomic.Uint64
	zeros       atomic.Uint64
	bytes       atomic.Uint64
}

// status is the incoming migration's progress; VM.migMu is held.
func (in *incoming) status() hypervisor.MigrationStatus {
	st := in.st
	st.Transferred, st.ZeroPages, st.StreamBytes = in.transferred.Load(), in.zeros.Load(), in.bytes.Load()
	if st.State == hypervisor.MigActive {
		st.Remaining = st.Total - min(in.received.Load()*PageSize, st.Total)
	}
	if in.started {
		end := st.Finished
		if end.IsZero() {
			end = time.Now()
		}
		if dt := end.Sub(st.Started).Seconds(); dt > 0 {
			st.Rate = float64(st.StreamBytes) / dt
		}
	}
	return st
}

// startIncoming is migrate-incoming: it starts receiving from rw, which it
// owns.
func (v *VM) startIncoming(rw io.ReadWriteCloser) error {
	v.migMu.Lock()
	defer v.migMu.Unlock()
	in := v.in
	var err error
	switch {
	case in == nil:
		err = errors.New("not an incoming VM (start it with --incoming)")
	case in.started:
		err = errors.New("migrate-incoming was already received")
	}
	if err != nil {
		rw.Close()
		return err
	}
	in.started = true
	in.st.Started = time.Now()
	ctx := v.ctx
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		stop := context.AfterFunc(ctx, func() { rw.Close() }) // the VM's shutdown ends a blocked read
		err := v.receive(in, rw)
		stop()
		// Closing our end at once also tells a source still writing
		// (after a failure here) that the stream is gone.
		rw.Close()
		v.finishIncoming(in, err)
	}()
	return nil
}

func (v *VM) finishIncoming(in *incoming, err error) {
	v.migMu.Lock()
	defer v.migMu.Unlock()
	in.st.Finished = time.Now()
	if err != nil {
		in.st.State, in.st.Error = hypervisor.MigFailed, err.Error()
		v.log.Warn("simvm: incoming migration failed", "id", v.cfg.ID, "err", err)
		return
	}
	in.st.State, in.st.Verified, in.st.Remaining = hypervisor.MigCompleted, true, 0
	v.log.Info("simvm: incoming migration verified", "id", v.cfg.ID, "rounds", in.st.Round,
		"stream_bytes", in.bytes.Load(), "elapsed", in.st.Finished.Sub(in.st.Started))
}

// receive reads and applies the stream; nil means the image is complete
// and verified and the device state applied.
func (v *VM) receive(in *incoming, rw io.Reader) error {
	d := newDecoder(bufio.NewReaderSize(countingReader{rw, &in.bytes}, 256<<10))
	h, err := d.readHeader()
	if err != nil {
		return err
	}
	if h.Pages != v.mem.pages || h.Spec.Memory != v.cfg.Memory {
		return fmt.Errorf("%w: the stream is for a VM of %d bytes (%d pages); this VM has %d bytes (%d pages)",
			errStream, h.Spec.Memory, h.Pages, v.cfg.Memory, v.mem.pages)
	}
	if h.Spec.Name != v.cfg.Name || h.Spec.VCPUs != v.cfg.VCPUs {
		v.log.Warn("simvm: incoming stream's VM differs in name or vCPUs", "stream_name", h.Spec.Name,
			"stream_vcpus", h.Spec.VCPUs, "name", v.cfg.Name, "vcpus", v.cfg.VCPUs)
	}
	v.migMu.Lock()
	in.st.Round = 1
	v.migMu.Unlock()
	r := newReceiver(v.mem, in)
	for {
		rec, err := d.next()
		if err != nil {
			return err
		}
		done, err := r.apply(rec)
		if err != nil {
			return err
		}
		if rec.Type == recRound {
			v.migMu.Lock()
			in.st.Round = int(rec.Round) + 1
			v.migMu.Unlock()
		}
		if done {
			v.migMu.Lock()
			in.st.Round = int(d.round) // the stop-and-copy's
			v.migMu.Unlock()
			v.applyDevice(r.dev)
			return nil
		}
	}
}

// receiver applies decoded records to memory and keeps the per-page CRC
// table; it is the destination's logic without the VM around it (the fuzz
// target drives it too).
type receiver struct {
	mem  *memory
	in   *incoming // counters; nil in tests
	crc  []uint32
	got  []uint64 // pages received at least once
	ngot uint64
	dev  deviceState
}

func newReceiver(m *memory, in *incoming) *receiver {
	return &receiver{mem: m, in: in, crc: make([]uint32, m.pages), got: make([]uint64, (m.pages+63)/64)}
}

// apply applies rec; it returns done once END has verified the image.
func (r *receiver) apply(rec *record) (done bool, err error) {
	switch rec.Type {
	case recPages:
		var data, zeros, fresh uint64
		k := 0
		for _, e := range rec.Entries {
			p := uint64(e.Page)
			if bit := uint64(1) << (p % 64); r.got[p/64]&bit == 0 {
				r.got[p/64] |= bit
				fresh++
			}
			if e.Kind == kindData {
				r.mem.store(p, rec.Data[k*PageSize:(k+1)*PageSize])
				k++
				data++
			} else {
				r.mem.zero(p)
				zeros++
			}
			r.crc[p] = e.CRC
		}
		r.ngot += fresh
		if r.in != nil {
			r.in.received.Add(fresh)
			r.in.transferred.Add(data * PageSize)
			r.in.zeros.Add(zeros)
		}
	case recDevice:
		r.dev = rec.Device
	case recEnd:
		if r.ngot != r.mem.pages {
			return false, fmt.Errorf("%w: incomplete image: %d of %d pages received", errStream, r.ngot, r.mem.pages)
		}
		if crcTableDigest(r.crc) != rec.Digest {
			return false, fmt.Errorf("%w: image verification failed: the digest of the page checksums differs from the source's", errStream)
		}
		return true, nil
	}
	return false, nil
}

// applyDevice sets the guest's state from the source's DEVICE record
// (already checked by the decoder); the VM is paused.
func (v *VM) applyDevice(d deviceState) {
	v.dmu.Lock()
	_ = v.pcg.UnmarshalBinary(d.RNG)
	v.stamp = d.Stamp
	v.dmu.Unlock()
	w := d.Workload
	v.wl.Store(&w)
	v.mem.ntouched.Store(d.Touched)
	v.dirty.Store(d.DirtyBytes)
	v.net.Store(d.NetBytes)
	v.mu.Lock()
	v.rate.at, v.rate.lastCPU, v.rate.lastDirty, v.rate.lastNT = time.Now(), processCPU(), d.DirtyBytes, d.NetBytes
	v.mu.Unlock()
}

// countingReader counts the bytes read from the descriptor.
type countingReader struct {
	r io.Reader
	n *atomic.Uint64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(uint64(n))
	return n, err
}
