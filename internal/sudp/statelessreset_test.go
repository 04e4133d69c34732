package sudp

import (
	"errors"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
)

// crash stops an endpoint as a crash would: no CLOSE reaches any peer.
func crash(e *Endpoint) {
	e.sock.Close()
	e.Close()
}

func hasPeerResetToken(c *Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.cc.PeerResetToken()
	return ok
}

// A server that crashed and came back on the same port with the same
// static key answers the client's next packet with a stateless reset: the
// client notices within a round trip or so, not at its 30 s idle timeout.
func TestStatelessResetAfterRestart(t *testing.T) {
	p := &testPair{cliKey: genKey(t), srvKey: genKey(t), psk: [32]byte{5}}
	p.srv = newServer(t, Config{Static: p.srvKey}, p.psk, p.cliKey)
	p.cli = newClientEndpoint(t, p.cliKey)
	ctx := ctxT(t)
	var err error
	if p.cliConn, err = p.cli.Dial(ctx, p.srv.LocalAddr().String(), pub(p.srvKey), p.psk); err != nil {
		t.Fatal(err)
	}
	if p.srvConn, err = p.srv.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	stillServing(t, p)
	// The server's token rides on its first packet after the client
	// confirmed the keys.
	waitFor(t, "the server's reset token", func() bool { return hasPeerResetToken(p.cliConn) })
	addr := p.srv.LocalAddr()
	crash(p.srv)
	srv2 := newServer(t, Config{Static: p.srvKey, Listen: addr.String()}, p.psk, p.cliKey)

	start := time.Now()
	// A packet the client sent on its own since the crash (an ACK) may
	// have drawn the reset already: the send then fails with it.
	if err := p.cliConn.SendMessage(ctx, []byte("are you there?"), PriorityNormal); err != nil && !errors.Is(err, core.ErrStatelessReset) {
		t.Fatal(err)
	}
	select {
	case <-p.cliConn.Done():
	case <-time.After(3 * time.Second):
		t.Fatalf("client still believes in the connection %v after the server restarted (idle timeout: %v); restarted server: %d resets sent, %d limited",
			time.Since(start), core.DefaultConfig().IdleTimeout, srv2.Stats().ResetsSent, srv2.Stats().ResetsLimited)
	}
	elapsed := time.Since(start)
	if err := p.cliConn.Err(); !errors.Is(err, core.ErrStatelessReset) {
		t.Fatalf("client connection ended with %v, want ErrStatelessReset", err)
	}
	if st := p.cliConn.Stats(); st.StatelessResets != 1 {
		t.Fatalf("stateless resets counted %d", st.StatelessResets)
	}
	if s := srv2.Stats(); s.ResetsSent == 0 {
		t.Fatalf("restarted server sent no reset: %+v", s)
	}
	t.Logf("client noticed the restart in %v", elapsed)
	if elapsed > time.Second {
		t.Fatalf("client took %v to notice", elapsed)
	}
	// And reconnects to the new server.
	c, err := p.cli.Dial(ctx, addr.String(), pub(p.srvKey), p.psk)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	c.Close()
}

// A reset from a server with another static key (or forged without the
// token) does not end the connection.
func TestStatelessResetNeedsTheToken(t *testing.T) {
	p := &testPair{cliKey: genKey(t), srvKey: genKey(t), psk: [32]byte{6}}
	p.srv = newServer(t, Config{Static: p.srvKey}, p.psk, p.cliKey)
	p.cli = newClientEndpoint(t, p.cliKey)
	ctx := ctxT(t)
	var err error
	if p.cliConn, err = p.cli.Dial(ctx, p.srv.LocalAddr().String(), pub(p.srvKey), p.psk); err != nil {
		t.Fatal(err)
	}
	if p.srvConn, err = p.srv.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	stillServing(t, p)
	waitFor(t, "the server's reset token", func() bool { return hasPeerResetToken(p.cliConn) })
	addr := p.srv.LocalAddr()
	crash(p.srv)
	other := newServer(t, Config{Static: genKey(t), Listen: addr.String()}, p.psk, p.cliKey)
	// A packet the client sent on its own since the crash (an ACK) may
	// have drawn the reset already: the send then fails with it.
	if err := p.cliConn.SendMessage(ctx, []byte("are you there?"), PriorityNormal); err != nil && !errors.Is(err, core.ErrStatelessReset) {
		t.Fatal(err)
	}
	waitFor(t, "a reset from the impostor", func() bool { return other.Stats().ResetsSent > 0 })
	time.Sleep(100 * time.Millisecond)
	if err := p.cliConn.Err(); err != nil {
		t.Fatalf("a reset without the token ended the connection: %v", err)
	}
}
