package sudp

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
)

// Review tests of the goroutine driver: each fails until the defect it
// describes is fixed.

// Request/response over bidirectional streams written for net.Conn: the
// server reads the request (its known length, as a length-prefixed protocol
// does), answers, and Closes the stream; the client reads the answer to EOF
// and Closes. The client's FIN reaches the server after the server's Close,
// so the server's receive side stays in "FIN known, not read" forever:
// Stream.Close only half-closes a bidirectional stream (unlike TCP's
// Close), core never treats a fully-read-but-FIN-unread side as finished,
// the stream is never forgotten, and MAX_STREAMS never comes back. After
// MaxStreams exchanges OpenStream blocks for good.
func TestReview_StreamCloseLeaksStreamCredit(t *testing.T) {
	p := newPair(t, Config{Conn: core.Config{MaxStreams: 16}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		for {
			s, err := p.srvConn.AcceptStream(ctx)
			if err != nil {
				return
			}
			req := make([]byte, 4)
			if _, err := io.ReadFull(s, req); err != nil {
				return
			}
			s.Write(append(req, " ok"...))
			s.Close()
		}
	}()
	const n = 40
	for i := 0; i < n; i++ {
		octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := p.cliConn.OpenStream(octx)
		ocancel()
		if err != nil {
			t.Fatalf("exchange %d of %d: OpenStream: %v (server holds the streams of earlier, finished exchanges)", i, n, err)
		}
		if _, err := s.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		resp, err := io.ReadAll(s)
		if err != nil || string(resp) != "ping ok" {
			t.Fatalf("exchange %d: %q %v", i, resp, err)
		}
		s.Close()
	}
}

// Endpoint.Close closes connections one after another and, for each, waits
// for its goroutine to exit -- which happens only after the 3 x PTO
// draining period, so every connection costs the full 50 ms grace time.
// A server with 1000 agents takes ~50 s to shut down.
func TestReview_EndpointCloseSerialDelay(t *testing.T) {
	p := newPair(t, Config{})
	ctx := ctxT(t)
	const n = 10
	for i := 1; i < n; i++ {
		if _, err := p.cli.Dial(ctx, p.srv.LocalAddr().String(), pub(p.srvKey), p.psk); err != nil {
			t.Fatal(err)
		}
		if _, err := p.srv.Accept(ctx); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	p.srv.Close()
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("closing an endpoint with %d connections took %v", n, d)
	}
}
