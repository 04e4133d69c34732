package sudp

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
)

// Refusing an oversized message stops the sender (STOP_SENDING reaches it)
// and frees the stream on both sides.
func TestStopSendingReachesSender(t *testing.T) {
	p := newPair(t, Config{})
	ctx := ctxT(t)
	m, err := p.cliConn.OpenMessage(ctx, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for i := 0; i < 10000; i++ {
			if _, err := m.Write(buf); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	if _, err := p.srvConn.ReceiveMessage(ctx, 1000); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("ReceiveMessage: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, core.ErrStreamStopped) {
			t.Fatalf("sender's write ended with %v, want ErrStreamStopped", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sender never learned the receiver stopped")
	}
}

// A reset stream reports the application's code to the reader.
func TestResetCarriesCode(t *testing.T) {
	p := newPair(t, Config{})
	ctx := ctxT(t)
	m, err := p.cliConn.OpenMessage(ctx, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	in, err := p.srvConn.AcceptMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m.Reset(core.CodeApplication + 7)
	_, err = io.ReadAll(in)
	var se *core.StreamError
	if !errors.As(err, &se) || se.Code != core.CodeApplication+7 || !errors.Is(err, core.ErrStreamReset) {
		t.Fatalf("read after reset: %v", err)
	}
}

// A deadline set while a Read is blocked wakes it (net.Conn semantics).
func TestDeadlineWakesBlockedRead(t *testing.T) {
	p := newPair(t, Config{})
	ctx := ctxT(t)
	s, err := p.cliConn.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked read ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("deadline did not wake the blocked read")
	}
}
