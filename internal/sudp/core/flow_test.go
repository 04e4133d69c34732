package core

import (
	"testing"
	"time"
)

// A receiver that never reads bounds both its own memory (the stream and
// connection windows) and the sender's (the send buffer): the sender's
// writes stop being accepted instead of queueing without limit.
func TestSlowReceiverBoundsMemory(t *testing.T) {
	cfg := Config{StreamWindow: InitialStreamWindow, ConnWindow: InitialConnWindow, StreamSendBuffer: 256 << 10}
	s := handshakeSim(t, 3, link{delay: 5 * time.Millisecond}, cfg)
	c := s.conn[0]
	id, err := c.OpenStream(false, PriorityBulk)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	written := 0
	for round := 0; round < 200; round++ {
		n, err := c.StreamWrite(id, chunk)
		if err != nil {
			t.Fatal(err)
		}
		written += n
		for i := 0; i < 50 && s.step(); i++ {
		}
	}
	if written > cfg.StreamSendBuffer+int(cfg.StreamWindow) {
		t.Fatalf("sender accepted %d bytes with a %d-byte send buffer and a %d-byte window: not bounded", written, cfg.StreamSendBuffer, cfg.StreamWindow)
	}
	srv := s.conn[1]
	sid, ok := srv.AcceptStream(false)
	if !ok {
		t.Fatal("stream not seen by the receiver")
	}
	if got := srv.StreamReadable(sid); got > int(cfg.StreamWindow) {
		t.Fatalf("receiver buffered %d bytes beyond its %d window", got, cfg.StreamWindow)
	}
	if c.StreamWritable(id) != 0 {
		t.Fatal("sender still accepting writes")
	}
	// Reading frees the receiver's window and the sender continues.
	buf := make([]byte, 1<<20)
	read := 0
	for round := 0; round < 500 && read < written; round++ {
		n, _, err := srv.StreamRead(sid, buf)
		if err != nil {
			t.Fatal(err)
		}
		read += n
		for i := 0; i < 50 && s.step(); i++ {
		}
	}
	if read != written {
		t.Fatalf("read %d of %d bytes after the receiver resumed", read, written)
	}
}

// The rate cap (QEMU's max-bandwidth equivalent) holds in virtual time.
func TestMaxRateCap(t *testing.T) {
	const rate = 2 << 20 // bytes per second
	s := handshakeSim(t, 4, link{delay: 10 * time.Millisecond}, Config{MaxRate: rate})
	const total = 6 << 20
	elapsed := bulkTransfer(t, s, total).Seconds()
	got := total / elapsed
	t.Logf("capped at %d B/s: %.0f B/s over %.2f s (virtual)", rate, got, elapsed)
	if got > rate*1.10 || got < rate*0.85 {
		t.Fatalf("rate %.0f B/s, cap %d B/s", got, rate)
	}
}

// Stream-count credit comes back in batches: a control channel sending one
// small message per stream must not cost an extra ack-eliciting MAX_STREAMS
// packet (and the peer's ACK of it) per message, yet the sender must never
// stall on the limit.
func TestMaxStreamsAdvertisedInBatches(t *testing.T) {
	const limit = 16
	s := reviewSim(t, 5, link{delay: 5 * time.Millisecond}, Config{MaxStreams: limit})
	cli, srv := s.conn[0], s.conn[1]
	adverts := 0
	last := srv.advMaxStreams[1]
	buf := make([]byte, 512)
	const n = 10 * limit
	for i := 0; i < n; i++ {
		id, err := cli.OpenStream(true, PriorityNormal)
		if err != nil {
			t.Fatalf("message %d: %v (stream limit %d)", i, err, cli.peerMaxStreams)
		}
		if _, err := cli.StreamWrite(id, buf[:200]); err != nil {
			t.Fatal(err)
		}
		if err := cli.StreamCloseWrite(id); err != nil {
			t.Fatal(err)
		}
		done := false
		for j := 0; j < 10000 && !done; j++ {
			s.step()
			if sid, ok := srv.AcceptStream(true); ok && sid != id {
				t.Fatalf("accepted stream %d, want %d", sid, id)
			}
			_, fin, _ := srv.StreamRead(id, buf)
			done = fin
		}
		if !done {
			t.Fatalf("message %d not delivered", i)
		}
		runFor(s, 20*time.Millisecond)
		if srv.advMaxStreams[1] != last {
			adverts++
			last = srv.advMaxStreams[1]
		}
	}
	// One MAX_STREAMS per limit/2 messages, not one per message.
	if want := n/(limit/2) + 1; adverts > want {
		t.Fatalf("%d MAX_STREAMS advertisements for %d messages, want at most %d", adverts, n, want)
	}
	if adverts < n/limit {
		t.Fatalf("only %d MAX_STREAMS advertisements for %d messages with a limit of %d: credit not returned", adverts, n, limit)
	}
}
