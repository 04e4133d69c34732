package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// A model hypervisor for the orchestration tests: VMs are byte slices in
// memory, a migration is a length-prefixed copy of them followed by their
// SHA-256, and every driver of a test shares one world that counts the
// running copies of each VM and records any moment with two. It keeps the
// simulated VM's contract (hypervisor/migration.go): a source resumes by
// itself only if the stream fails before its last byte; a destination
// resumes only when told, and only with a verified image. Gates let a test
// hold a migration in a phase while it injects a failure. (The real
// simulated VM is exercised end to end in e2e and hypervisor/sim.)

type world struct {
	mu         sync.Mutex
	running    map[string]int // VM name → running copies
	violations []string
}

func newWorld() *world { return &world{running: map[string]int{}} }

func (w *world) change(vm string, delta int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.running[vm] += delta
	if n := w.running[vm]; n > 1 {
		w.violations = append(w.violations, fmt.Sprintf("%s: %d running copies", vm, n))
	}
}

func (w *world) copies(vm string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running[vm]
}

func (w *world) problems() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.violations...)
}

type fakeVM struct {
	spec    hypervisor.Spec
	state   hypervisor.State
	data    []byte
	mig     hypervisor.MigrationStatus
	pending bool // incoming, not yet resumed
	// switchNow is closed by StartPostcopy (a source offering post-copy).
	switchNow chan struct{}
}

// gate names.
const (
	gatePrepare = "prepare" // PrepareIncoming blocks
	gateEnd     = "end"     // a source blocks before its last bytes
	gateResume  = "resume"  // Resume blocks
	gateSwitch  = "switch"  // StartPostcopy blocks
	gateVerify  = "verify"  // a destination that read the whole stream blocks before verifying it
)

// Post-copy in the model: a source allowed it offers to switch
// (PostcopyReady) before its last chunk instead of stopping for it, and on
// StartPostcopy pauses for good and sends a switch mark, then the rest.
// A destination that read the mark may be resumed before it has the rest.
// The stream's length word carries postcopyFlag when the mark may come.
const (
	postcopyFlag = 1 << 63
	switchMark   = 0xA5
)

type fakeDriver struct {
	w     *world
	mu    sync.Mutex
	vms   map[string]*fakeVM
	gates map[string]chan struct{}
	// waiting counts who waits at each gate; badImage makes the next
	// verification fail.
	waiting  map[string]int
	badImage bool
	wg       sync.WaitGroup
}

func newFakeDriver(w *world) *fakeDriver {
	return &fakeDriver{w: w, vms: map[string]*fakeVM{}, gates: map[string]chan struct{}{}, waiting: map[string]int{}}
}

var (
	_ hypervisor.Driver           = (*fakeDriver)(nil)
	_ hypervisor.Migrator         = (*fakeDriver)(nil)
	_ hypervisor.PostcopyMigrator = (*fakeDriver)(nil)
)

// hold closes gate name's door: the operation waits until release.
func (d *fakeDriver) hold(name string) {
	d.mu.Lock()
	d.gates[name] = make(chan struct{})
	d.mu.Unlock()
}

func (d *fakeDriver) release(name string) {
	d.mu.Lock()
	if g := d.gates[name]; g != nil {
		close(g)
		delete(d.gates, name)
	}
	d.mu.Unlock()
}

func (d *fakeDriver) pass(ctx context.Context, name string) error {
	d.mu.Lock()
	g := d.gates[name]
	if g != nil {
		d.waiting[name]++
	}
	d.mu.Unlock()
	if g == nil {
		return nil
	}
	defer func() {
		d.mu.Lock()
		d.waiting[name]--
		d.mu.Unlock()
	}()
	select {
	case <-g:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// atGate reports whether an operation waits at gate name.
func (d *fakeDriver) atGate(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.waiting[name] > 0
}

func (d *fakeDriver) Name() string { return "fake" }

func (d *fakeDriver) List(context.Context) ([]hypervisor.VM, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []hypervisor.VM
	for id, v := range d.vms {
		out = append(out, hypervisor.VM{ID: id, Name: id, State: v.state, VCPUs: v.spec.VCPUs, Memory: v.spec.Memory})
	}
	return out, nil
}

func (d *fakeDriver) Create(_ context.Context, s hypervisor.Spec) (hypervisor.VM, error) {
	data := make([]byte, s.Memory)
	r := rand.New(rand.NewPCG(uint64(len(s.Name)), s.Memory))
	text := len(data) - int(float64(len(data))*s.Workload.Text) // its last Text of it letters a–h
	for i := range data {
		data[i] = byte(r.Uint32())
		if i >= text {
			data[i] = 'a' + data[i]&7
		}
	}
	d.mu.Lock()
	if d.vms[s.Name] != nil {
		d.mu.Unlock()
		return hypervisor.VM{}, errors.New("exists")
	}
	d.vms[s.Name] = &fakeVM{spec: s, state: hypervisor.StateRunning, data: data}
	d.mu.Unlock()
	d.w.change(s.Name, 1)
	return hypervisor.VM{ID: s.Name, Name: s.Name, State: hypervisor.StateRunning, Memory: s.Memory, VCPUs: s.VCPUs}, nil
}

func (d *fakeDriver) vm(id string) (*fakeVM, error) {
	v := d.vms[id]
	if v == nil {
		return nil, fmt.Errorf("%w: %s", hypervisor.ErrNotFound, id)
	}
	return v, nil
}

func (d *fakeDriver) Stats(_ context.Context, id string) (hypervisor.Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return hypervisor.Stats{}, err
	}
	return hypervisor.Stats{MemTotal: v.spec.Memory, MemUsed: v.spec.Memory}, nil
}

func (d *fakeDriver) SetWorkload(context.Context, string, hypervisor.Workload) error { return nil }

func (d *fakeDriver) Pause(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return err
	}
	d.setState(id, v, hypervisor.StatePaused)
	return nil
}

// setState changes a VM's run state and the world's count (d.mu held).
func (d *fakeDriver) setState(id string, v *fakeVM, s hypervisor.State) {
	was := v.state == hypervisor.StateRunning
	v.state = s
	if now := s == hypervisor.StateRunning; now != was {
		if now {
			d.w.change(id, 1)
		} else {
			d.w.change(id, -1)
		}
	}
}

func (d *fakeDriver) Resume(ctx context.Context, id string) error {
	if err := d.pass(ctx, gateResume); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return err
	}
	if v.pending && !(v.mig.State == hypervisor.MigCompleted && v.mig.Verified) && v.mig.Postcopy != hypervisor.PostcopyActive {
		return errors.New("incoming VM without a verified image")
	}
	if v.switchNow != nil && v.mig.Postcopy == hypervisor.PostcopyActive { // only a source has switchNow
		return errors.New("a source that switched to post-copy cannot run")
	}
	v.pending = false
	d.setState(id, v, hypervisor.StateRunning)
	return nil
}

func (d *fakeDriver) Destroy(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return err
	}
	d.setState(id, v, hypervisor.StateStopped)
	delete(d.vms, id)
	return nil
}

func (d *fakeDriver) MigrationStatus(_ context.Context, id string) (hypervisor.MigrationStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return hypervisor.MigrationStatus{}, err
	}
	return v.mig, nil
}

func (d *fakeDriver) CancelMigration(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return err
	}
	if v.mig.State == hypervisor.MigActive {
		v.mig.State = hypervisor.MigCancelled
		d.setState(id, v, hypervisor.StateRunning)
	}
	return nil
}

// chunk is the transfer's unit; a source sends one every chunkEvery so
// that a test can catch it mid-transfer.
const (
	chunk      = 64 << 10
	chunkEvery = 5 * time.Millisecond
)

// StartPostcopy implements hypervisor.PostcopyMigrator.
func (d *fakeDriver) StartPostcopy(ctx context.Context, id string) error {
	if err := d.pass(ctx, gateSwitch); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return err
	}
	switch {
	case v.mig.Postcopy == hypervisor.PostcopyActive:
		return nil
	case v.mig.State != hypervisor.MigActive || v.mig.Postcopy != hypervisor.PostcopyReady:
		return fmt.Errorf("cannot switch a migration that is %s to post-copy", v.mig.State)
	}
	close(v.switchNow)
	// The switch happens here, under the lock: the guest stops for good.
	d.setState(id, v, hypervisor.StatePaused)
	v.mig.Postcopy, v.mig.PausedAt = hypervisor.PostcopyActive, time.Now()
	return nil
}

func (d *fakeDriver) MigrateOut(ctx context.Context, id string, p hypervisor.MigrationParams) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.vm(id)
	if err != nil {
		return nil, err
	}
	if v.state != hypervisor.StateRunning || v.mig.State == hypervisor.MigActive {
		return nil, errors.New("not migratable now")
	}
	ours, theirs := net.Pipe()
	v.mig = hypervisor.MigrationStatus{State: hypervisor.MigActive, Round: 1, Total: uint64(len(v.data)),
		Remaining: uint64(len(v.data)), Started: time.Now()}
	v.switchNow = nil
	if p.Postcopy {
		v.switchNow = make(chan struct{})
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer ours.Close()
		d.send(id, v, ours)
	}()
	return theirs, nil
}

// send is the source side of a migration.
func (d *fakeDriver) send(id string, v *fakeVM, w net.Conn) {
	fail := func(err error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		if v.mig.State == hypervisor.MigActive {
			v.mig.State, v.mig.Error = hypervisor.MigFailed, err.Error()
			if v.mig.Postcopy != hypervisor.PostcopyActive {
				d.setState(id, v, hypervisor.StateRunning) // resumes itself: the image is incomplete
			}
		}
	}
	var hdr [8]byte
	word := uint64(len(v.data))
	if v.switchNow != nil {
		word |= postcopyFlag
	}
	binary.BigEndian.PutUint64(hdr[:], word)
	if _, err := w.Write(hdr[:]); err != nil {
		fail(err)
		return
	}
	for off := 0; off < len(v.data); off += chunk {
		d.mu.Lock()
		cancelled := v.mig.State != hypervisor.MigActive
		d.mu.Unlock()
		if cancelled {
			return
		}
		end := min(off+chunk, len(v.data))
		if end == len(v.data) && v.switchNow != nil {
			// Offer post-copy, and wait for the switch (or the end of the
			// stream: the peer's close fails the migration, the guest
			// running on).
			d.mu.Lock()
			v.mig.Postcopy = hypervisor.PostcopyReady
			d.mu.Unlock()
			broken := make(chan struct{})
			go func() {
				var b [1]byte
				_, _ = w.Read(b[:]) // nothing comes back but a close
				close(broken)
			}()
			select {
			case <-v.switchNow:
			case <-broken:
				fail(errors.New("stream closed while offering post-copy"))
				return
			}
			if _, err := w.Write([]byte{switchMark}); err != nil {
				d.mu.Lock()
				v.mig.State, v.mig.Error = hypervisor.MigFailed, "post-copy stream broken: "+err.Error()
				d.mu.Unlock()
				return
			}
		} else if end == len(v.data) {
			if err := d.pass(context.Background(), gateEnd); err != nil {
				fail(err)
				return
			}
			d.mu.Lock()
			if v.mig.State != hypervisor.MigActive {
				d.mu.Unlock()
				return
			}
			d.setState(id, v, hypervisor.StatePaused) // stop-and-copy
			v.mig.PausedAt = time.Now()
			d.mu.Unlock()
		}
		_ = w.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := w.Write(v.data[off:end]); err != nil {
			fail(err)
			return
		}
		d.mu.Lock()
		v.mig.Transferred, v.mig.StreamBytes, v.mig.Remaining = uint64(end), uint64(end), uint64(len(v.data)-end)
		v.mig.Rate = chunk / chunkEvery.Seconds()
		d.mu.Unlock()
		time.Sleep(chunkEvery)
	}
	sum := sha256.Sum256(v.data)
	if _, err := w.Write(sum[:]); err != nil {
		fail(err)
		return
	}
	d.mu.Lock()
	v.mig.State, v.mig.Finished = hypervisor.MigCompleted, time.Now() // postmigrate: stays paused
	d.mu.Unlock()
}

func (d *fakeDriver) PrepareIncoming(ctx context.Context, s hypervisor.Spec) (hypervisor.VM, net.Conn, error) {
	if err := d.pass(ctx, gatePrepare); err != nil {
		return hypervisor.VM{}, nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.vms[s.Name] != nil {
		return hypervisor.VM{}, nil, errors.New("exists")
	}
	v := &fakeVM{spec: s, state: hypervisor.StateMigrating, pending: true,
		mig: hypervisor.MigrationStatus{State: hypervisor.MigActive, Total: s.Memory, Started: time.Now()}}
	d.vms[s.Name] = v
	ours, theirs := net.Pipe()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer ours.Close()
		d.receive(v, ours)
	}()
	return hypervisor.VM{ID: s.Name, Name: s.Name, State: v.state}, theirs, nil
}

// receive is the destination side.
func (d *fakeDriver) receive(v *fakeVM, r io.Reader) {
	fail := func(err error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		v.mig.State, v.mig.Error = hypervisor.MigFailed, err.Error()
	}
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		fail(err)
		return
	}
	n := binary.BigEndian.Uint64(hdr[:])
	postcopy := n&postcopyFlag != 0
	n &^= postcopyFlag
	if n != v.spec.Memory {
		fail(errors.New("size mismatch"))
		return
	}
	data := make([]byte, n)
	head := len(data)
	if postcopy {
		head = (len(data) - 1) / chunk * chunk // all but the last chunk
	}
	if _, err := io.ReadFull(r, data[:head]); err != nil {
		fail(err)
		return
	}
	if postcopy {
		var mark [1]byte
		if _, err := io.ReadFull(r, mark[:]); err != nil || mark[0] != switchMark {
			fail(fmt.Errorf("no switch mark: %v", err))
			return
		}
		d.mu.Lock()
		v.mig.Postcopy = hypervisor.PostcopyActive
		d.mu.Unlock()
	}
	if _, err := io.ReadFull(r, data[head:]); err != nil {
		fail(err)
		return
	}
	var sum [32]byte
	if _, err := io.ReadFull(r, sum[:]); err != nil {
		fail(err)
		return
	}
	_ = d.pass(context.Background(), gateVerify) // tests release every gate
	d.mu.Lock()
	bad := d.badImage
	d.badImage = false
	d.mu.Unlock()
	if got := sha256.Sum256(data); bad || !bytes.Equal(got[:], sum[:]) {
		fail(errors.New("image does not verify"))
		return
	}
	d.mu.Lock()
	v.data = data
	if v.state != hypervisor.StateRunning { // a post-copy destination may run already
		v.state = hypervisor.StatePaused
	}
	v.mig.State, v.mig.Verified, v.mig.Transferred, v.mig.Remaining, v.mig.Finished = hypervisor.MigCompleted, true, n, 0, time.Now()
	d.mu.Unlock()
}

// content returns VM id's bytes and state, if this driver has it.
func (d *fakeDriver) content(id string) ([]byte, hypervisor.State, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := d.vms[id]
	if v == nil {
		return nil, "", false
	}
	return v.data, v.state, true
}
