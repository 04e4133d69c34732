package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/zstream"
)

// Carrying the migration stream: the MA joins the hypervisor's descriptor
// to a bulk stream of the direct link (and a VM's disk channel to further
// streams of it).

// prepareIncoming starts the destination VM waiting for the stream and a
// job that joins it to the link once the source opens its stream.
func (a *Agent) prepareIncoming(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	if o.Spec == nil {
		return errMissing("the VM's spec")
	}
	done, err := a.migs.open(ctx, o.ID)
	if err != nil {
		return err
	}
	defer done()
	if j := a.migs.get(o.ID); j != nil {
		return nil
	}
	// The copy is recorded as incoming before it exists: until it runs,
	// its stop (QEMU exits when its stream fails) is the migration's
	// failure, not a VM's crash.
	var vm hypervisor.VM
	var conn net.Conn
	err = a.createVM(o.Spec.Name, expectIncoming, o.ID, func() (err error) {
		if cp, ok := mig.(hypervisor.ChannelPreparer); ok {
			vm, conn, err = cp.PrepareIncomingChannels(ctx, *o.Spec, o.Params)
		} else {
			vm, conn, err = mig.PrepareIncoming(ctx, *o.Spec)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("agent: prepare incoming %s: %w", o.VM, err)
	}
	j := &job{order: o, role: migration.Destination, mig: mig, conn: conn, phase: migration.PhasePreparing, at: time.Now()}
	j.order.VM = vm.ID
	if old, err := a.migs.add(j); old != nil || err != nil {
		conn.Close()
		return err
	}
	// One acceptor takes the link's streams as the source opens them: the
	// migration stream goes to the job, disk channels (QEMU's NBD mirror)
	// to the driver's disk socket.
	type accepted struct {
		s   io.ReadWriteCloser
		c   *sudp.Conn
		err error
	}
	migStream := make(chan accepted, 1)
	acceptor := func(ctx context.Context) {
		l, err := a.waitLink(ctx, o.Topic)
		if err != nil {
			migStream <- accepted{err: err}
			return
		}
		sent := false
		for {
			s, err := l.c.AcceptStream(ctx)
			if err != nil {
				if !sent {
					migStream <- accepted{err: err}
				}
				return
			}
			kind, err := readStreamKind(ctx, s)
			switch {
			case err != nil:
				a.log.Warn("agent: migration link stream", "id", o.ID, "err", err)
				s.Reset(1)
			case (kind == streamMigration || kind == streamFramed) && !sent:
				sent = true
				if kind == streamMigration {
					migStream <- accepted{s: s, c: l.c}
					break
				}
				us, err := a.newUnframed(s)
				if err != nil {
					s.Reset(1)
					migStream <- accepted{err: err}
					return
				}
				migStream <- accepted{s: us, c: l.c}
			case kind == streamDisk:
				a.serveDiskStream(ctx, j, s)
			case kind == streamChannel || kind == streamFramedChannel:
				a.serveChannelStream(ctx, j, s, kind == streamFramedChannel)
			default:
				a.log.Warn("agent: unexpected stream on a migration link", "id", o.ID, "kind", kind)
				s.Reset(1)
			}
		}
	}
	a.runJob(j, func(ctx context.Context) (io.ReadWriteCloser, *sudp.Conn, error) {
		select {
		case r := <-migStream:
			return r.s, r.c, r.err
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}, acceptor)
	return nil
}

// Each stream of a migration link starts with one byte saying what it
// carries (protocol.md §16.2).
const (
	streamMigration byte = 'M' // the hypervisor's migration stream
	// The hypervisor's migration stream in zstream frames (source to
	// destination; raw the other way).
	streamFramed byte = 'Z'
	streamDisk   byte = 'D' // one connection of the disk channel
	// One connection of a named channel (hypervisor.ChannelMover): the
	// kind byte is followed by the name's length (one byte) and the name.
	streamChannel byte = 'C'
	// The same, its content in zstream frames (source to destination).
	streamFramedChannel byte = 'c'
)

// channelHeader is what a channel stream starts with.
func channelHeader(name string, framed bool) []byte {
	kind := streamChannel
	if framed {
		kind = streamFramedChannel
	}
	return append([]byte{kind, byte(len(name))}, name...)
}

// readChannelName reads a channel stream's name (after its kind byte),
// refusing one that is not a valid channel name.
func readChannelName(ctx context.Context, s *sudp.Stream) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
	defer cancel()
	stop := context.AfterFunc(rctx, func() { s.Reset(1) })
	defer stop()
	var n [1]byte
	if _, err := io.ReadFull(s, n[:]); err != nil {
		return "", fmt.Errorf("reading the channel's name: %w", err)
	}
	if n[0] == 0 || int(n[0]) > hypervisor.MaxChannelName {
		return "", fmt.Errorf("channel name of %d bytes", n[0])
	}
	name := make([]byte, n[0])
	if _, err := io.ReadFull(s, name); err != nil {
		return "", fmt.Errorf("reading the channel's name: %w", err)
	}
	if !hypervisor.ValidChannel(string(name)) {
		return "", fmt.Errorf("channel name %q", name)
	}
	return string(name), nil
}

func readStreamKind(ctx context.Context, s *sudp.Stream) (byte, error) {
	var b [1]byte
	rctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
	defer cancel()
	stop := context.AfterFunc(rctx, func() { s.Reset(1) })
	defer stop()
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return 0, fmt.Errorf("reading the stream's kind: %w", err)
	}
	return b[0], nil
}

// serveDiskStream joins one disk-channel stream to the incoming VM's disk
// socket (destination).
func (a *Agent) serveDiskStream(ctx context.Context, j *job, s *sudp.Stream) {
	dm, ok := j.mig.(hypervisor.DiskMover)
	path := ""
	if ok {
		path = dm.IncomingDiskSocket(j.order.VM)
	}
	if path == "" {
		a.log.Warn("agent: a disk stream for a VM that receives no disk", "id", j.order.ID, "vm", j.order.VM)
		s.Reset(1)
		return
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		a.log.Warn("agent: connecting a disk stream", "id", j.order.ID, "err", err)
		s.Reset(1)
		return
	}
	a.migs.wg.Add(1)
	go func() {
		defer a.migs.wg.Done()
		if err := pump(ctx, s, conn, func() {}); err != nil && ctx.Err() == nil {
			a.log.Warn("agent: disk stream", "id", j.order.ID, "err", err)
		}
	}()
}

// serveChannelStream joins one stream of a named channel to the
// connection the driver makes for it (destination).
func (a *Agent) serveChannelStream(ctx context.Context, j *job, s *sudp.Stream, framed bool) {
	name, err := readChannelName(ctx, s)
	if err != nil {
		a.log.Warn("agent: migration channel stream", "id", j.order.ID, "err", err)
		s.Reset(1)
		return
	}
	cm, ok := j.mig.(hypervisor.ChannelMover)
	if !ok {
		a.log.Warn("agent: a channel stream for a driver without channels", "id", j.order.ID, "channel", name)
		s.Reset(1)
		return
	}
	var rs io.ReadWriteCloser = s
	if framed {
		us, err := a.newUnframed(s)
		if err != nil {
			s.Reset(1)
			return
		}
		rs = us
	}
	conn, err := cm.DialChannel(ctx, j.order.VM, name)
	if err != nil {
		a.log.Warn("agent: connecting a channel stream", "id", j.order.ID, "channel", name, "err", err)
		s.Reset(1)
		return
	}
	a.log.Info("agent: migration channel joined", "id", j.order.ID, "channel", name, "framed", framed)
	a.migs.wg.Add(1)
	go func() {
		defer a.migs.wg.Done()
		if err := pump(ctx, rs, conn, func() {}); err != nil && ctx.Err() == nil {
			a.log.Warn("agent: channel stream", "id", j.order.ID, "channel", name, "err", err)
		}
	}()
}

// serveDiskChannel (source) accepts the hypervisor's disk-channel
// connections on ln and carries each over a new stream of the link,
// until ctx ends.
func (a *Agent) serveDiskChannel(ctx context.Context, id string, ln net.Listener, lc *sudp.Conn) {
	a.serveListener(ctx, id, ln, lc, []byte{streamDisk}, "")
}

// serveListener (source) accepts connections on ln and carries each
// over a new stream of the link that starts with header, until ctx ends.
// compression is the migration's setting for a hypervisor's own channel
// (hypervisor.ChannelMover: QEMU's multifd channels, libvirt's QEMU
// stream and its NBD disk stream): the stream is then framed unless
// off, and its backlog bounded as the main stream's is; "" for the
// QEMU driver's disk channel (raw).
func (a *Agent) serveListener(ctx context.Context, id string, ln net.Listener, lc *sudp.Conn, header []byte, compression string) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
		s, err := lc.OpenStreamPriority(sctx, sudp.PriorityBulk)
		cancel()
		if err == nil {
			_, err = s.Write(header)
		}
		if err != nil {
			a.log.Warn("agent: opening a migration side stream", "id", id, "err", err)
			conn.Close()
			continue
		}
		var ws io.ReadWriteCloser = s
		if compression != "" {
			s.SetMaxQueueDelay(streamQueueDelay)
			if compression != hypervisor.StreamCompressionOff {
				zw, err := zstream.NewWriter(s, compression == hypervisor.StreamCompressionZstd)
				if err != nil {
					s.Reset(1)
					conn.Close()
					continue
				}
				ws = &framedStream{Stream: s, zw: zw}
			}
			a.log.Info("agent: migration channel opened", "id", id, "channel", string(header[2:]), "compression", compression)
		}
		a.migs.wg.Add(1)
		go func() {
			defer a.migs.wg.Done()
			if err := pump(ctx, ws, conn, func() {}); err != nil && ctx.Err() == nil {
				a.log.Warn("agent: migration side stream", "id", id, "err", err)
			}
		}()
	}
}

// startOutgoing starts the hypervisor's migration of the VM and a job
// carrying it over the link.
func (a *Agent) startOutgoing(ctx context.Context, mig hypervisor.Migrator, o migration.Order) error {
	done, err := a.migs.open(ctx, o.ID)
	if err != nil {
		return err
	}
	defer done()
	if j := a.migs.get(o.ID); j != nil {
		return nil
	}
	l := a.peers.link(o.Topic)
	if l == nil {
		return fmt.Errorf("agent: no link for %s (the MMC introduces the agents first)", o.Topic)
	}
	sctx, cancel := context.WithTimeout(ctx, peerHelloTimeout)
	s, err := l.c.OpenStreamPriority(sctx, sudp.PriorityBulk)
	cancel()
	if err != nil {
		return fmt.Errorf("agent: open migration stream: %w", err)
	}
	// The hypervisor times its stop-and-copy by how fast the stream takes
	// its bytes: they must not pile up in a send buffer (16 MiB is over a
	// second at 100 Mbit/s, all of it downtime once the guest is paused).
	s.SetMaxQueueDelay(streamQueueDelay)
	// The stream is framed unless compression is off: each chunk is
	// then compressed or not as the link and the data call for.
	var ms io.ReadWriteCloser = s
	kind := streamMigration
	compression := streamCompressionOf(o.Params)
	if compression != hypervisor.StreamCompressionOff {
		zw, err := zstream.NewWriter(s, compression == hypervisor.StreamCompressionZstd)
		if err != nil {
			s.Reset(1)
			return fmt.Errorf("agent: migration stream: %w", err)
		}
		kind = streamFramed
		ms = &framedStream{Stream: s, zw: zw, ended: func(st zstream.Stats) {
			a.log.Info("agent: migration stream sent", "id", o.ID, "bytes", st.Raw, "wire_bytes", st.Wire,
				"ratio", float64(st.Raw)/float64(max(st.Wire, 1)), "frames", st.Frames, "compressed", st.Compressed, "tried", st.Tried, "random", st.Random)
		}}
	}
	if _, err := s.Write([]byte{kind}); err != nil {
		s.Reset(1)
		return fmt.Errorf("agent: migration stream: %w", err)
	}
	// A VM with local disks: the driver copies them first, over a disk
	// channel this agent serves on a Unix socket and carries over the
	// link.
	// The channel is served from before the driver starts: QEMU connects
	// its NBD client while the driver sets the mirrors up.
	var conn net.Conn
	stopDisks := func() {}
	if dm, ok := mig.(hypervisor.DiskMover); ok && dm.MovesDisks(o.VM) {
		path := filepath.Join(a.cfg.DataDir, "migrations", o.ID+".disk")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			s.Reset(1)
			return fmt.Errorf("agent: %w", err)
		}
		_ = os.Remove(path)
		ln, err := net.Listen("unix", path)
		if err != nil {
			s.Reset(1)
			return fmt.Errorf("agent: disk channel: %w", err)
		}
		a.migs.mu.Lock()
		dctx, cancel := context.WithCancel(a.migs.ctx)
		a.migs.mu.Unlock()
		stopDisks = cancel
		a.migs.wg.Add(1)
		go func() {
			defer a.migs.wg.Done()
			a.serveDiskChannel(dctx, o.ID, ln, l.c)
		}()
		conn, err = dm.MigrateOutDisks(ctx, o.VM, o.Params, path)
		if err != nil {
			stopDisks()
			s.Reset(1)
			return fmt.Errorf("agent: migrate %s: %w", o.VM, err)
		}
	} else {
		// A driver whose hypervisor connects its own channels (libvirt):
		// they are served before the migration starts, as the disk
		// channel is.
		if cm, ok := mig.(hypervisor.ChannelMover); ok {
			lns, err := cm.ListenChannels(o.VM, o.Params)
			if err != nil {
				s.Reset(1)
				return fmt.Errorf("agent: migrate %s: %w", o.VM, err)
			}
			a.migs.mu.Lock()
			cctx, cancel := context.WithCancel(a.migs.ctx)
			a.migs.mu.Unlock()
			stopDisks = cancel
			for name, ln := range lns {
				a.migs.wg.Add(1)
				go func() {
					defer a.migs.wg.Done()
					a.serveListener(cctx, o.ID, ln, l.c, channelHeader(name, compression != hypervisor.StreamCompressionOff), compression)
				}()
			}
		}
		if conn, err = mig.MigrateOut(ctx, o.VM, o.Params); err != nil {
			stopDisks()
			s.Reset(1)
			return fmt.Errorf("agent: migrate %s: %w", o.VM, err)
		}
	}
	j := &job{order: o, role: migration.Source, mig: mig, conn: conn, phase: migration.PhaseTransferring, at: time.Now(), link: l.c}
	if old, err := a.migs.add(j); old != nil || err != nil {
		conn.Close()
		stopDisks()
		s.Reset(1)
		return err
	}
	// The disk channel ends with the job (the memory migration is over,
	// and the mirrors were completed before it).
	a.runJob(j, func(context.Context) (io.ReadWriteCloser, *sudp.Conn, error) { return ms, l.c, nil }, func(ctx context.Context) {
		select {
		case <-j.done:
		case <-ctx.Done():
		}
		stopDisks()
	})
	return nil
}

// waitLink waits for the direct link of topic to come up.
func (a *Agent) waitLink(ctx context.Context, topic string) (*link, error) {
	ctx, cancel := context.WithTimeout(ctx, linkWait)
	defer cancel()
	for {
		l, added := a.peers.linkOrWait(topic)
		if l != nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent: no link for %s: %w", topic, ctx.Err())
		case <-added:
		}
	}
}

// runJob starts j's goroutines: one joins the stream (from getStream) to
// the hypervisor's descriptor, one watches the hypervisor's progress, and
// side (if not nil) serves the link's other streams; all stop with the job.
func (a *Agent) runJob(j *job, getStream func(context.Context) (io.ReadWriteCloser, *sudp.Conn, error), side func(context.Context)) {
	a.migs.mu.Lock()
	ctx := a.migs.ctx
	a.migs.mu.Unlock()
	ctx, stop := context.WithCancel(ctx)
	j.stop = stop
	if side != nil {
		a.migs.wg.Add(1)
		go func() {
			defer a.migs.wg.Done()
			side(ctx)
		}()
	}
	a.migs.wg.Add(2)
	pumped := make(chan error, 1)
	go func() {
		defer a.migs.wg.Done()
		s, lc, err := getStream(ctx)
		if err == nil {
			j.mu.Lock()
			j.link = lc
			if j.role == migration.Destination {
				// The stream's first byte (its kind) was just read.
				j.firstByte = time.Now()
			}
			if j.phase == migration.PhasePreparing {
				j.phase, j.at = migration.PhaseTransferring, time.Now()
			}
			j.mu.Unlock()
			a.postPhase(j)
			err = pump(ctx, s, j.conn, j.kickWatch)
		} else {
			j.conn.Close()
		}
		pumped <- err
	}()
	go func() {
		defer a.migs.wg.Done()
		defer close(j.done)
		a.watchJob(ctx, j, pumped, j.kick)
		if ph, _ := j.get(); ph == migration.PhaseCommitted {
			// A post-copy destination, committed while it still pulled
			// pages: now it has them all.
			a.peers.closeLink(j.order.Topic)
		}
	}()
}

// pump carries bytes both ways between the link stream s and the
// hypervisor's descriptor conn until the hypervisor's side ends (or
// either side fails), then closes both. ended is called as each
// direction ends: the hypervisor has likely reached its outcome, and the
// watcher should look now rather than at its next poll (downtime).
func pump(ctx context.Context, s io.ReadWriteCloser, conn net.Conn, ended func()) error {
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(s, conn) // hypervisor → link
		if cw, ok := s.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
		done <- err
	}()
	go func() {
		_, err := io.Copy(conn, s) // link → hypervisor
		if cw, ok := conn.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
		done <- err
	}()
	var err error
	for n := 0; n < 2 && err == nil; n++ {
		select {
		case err = <-done:
			ended()
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		// A failure either way ends the migration: unblock the copies.
		conn.Close()
		s.Close()
		return err
	}
	conn.Close()
	if st, ok := s.(interface{ Flush(context.Context) error }); ok {
		// Let the last bytes and FIN reach the peer before closing.
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = st.Flush(fctx)
		cancel()
	}
	s.Close()
	return nil
}
