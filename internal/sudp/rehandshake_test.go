package sudp

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
)

// TestRehandshakeOverUDP: over real sockets, the endpoint routes
// re-handshake messages to their connection, a session re-handshakes every
// RehandshakeInterval while a stream flows across the switches intact, and
// the metrics count it.
func TestRehandshakeOverUDP(t *testing.T) {
	p := newPair(t, Config{Conn: core.Config{RehandshakeInterval: 100 * time.Millisecond}})
	ctx := ctxT(t)
	st, err := p.cliConn.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = byte(i * 13)
	}
	const chunks = 25
	go func() {
		// About a second of trickle: ten re-handshake intervals.
		for i := 0; i < chunks; i++ {
			if _, err := st.Write(chunk); err != nil {
				return
			}
			time.Sleep(40 * time.Millisecond)
		}
		st.CloseWrite()
	}()
	rs, err := p.srvConn.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rs)
	if err != nil || len(got) != chunks*len(chunk) {
		t.Fatalf("got %d bytes, err %v", len(got), err)
	}
	for i := 0; i < chunks; i++ {
		if !bytes.Equal(got[i*len(chunk):(i+1)*len(chunk)], chunk) {
			t.Fatalf("chunk %d corrupted", i)
		}
	}
	cs, ss := p.cliConn.Stats(), p.srvConn.Stats()
	t.Logf("re-handshakes: client %d (started %d), server %d (started %d); collisions %d/%d", cs.Rehandshakes, cs.RehandshakesStarted, ss.Rehandshakes, ss.RehandshakesStarted, cs.RehandshakeCollisions, ss.RehandshakeCollisions)
	if cs.Rehandshakes < 3 || ss.Rehandshakes < 3 {
		t.Fatalf("re-handshakes in ~1 s at a 100 ms interval: client %d, server %d", cs.Rehandshakes, ss.Rehandshakes)
	}
	if cs.RehandshakeRejected+ss.RehandshakeRejected != 0 {
		t.Fatal("an honest peer's re-handshake message failed authentication")
	}
	if v := metricValue(t, p.srv, "ferry_sudp_rehandshakes_total", "event", "completed"); v < 3 {
		t.Fatalf("ferry_sudp_rehandshakes_total{event=completed} = %v", v)
	}
}
