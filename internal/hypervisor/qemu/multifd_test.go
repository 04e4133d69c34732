package qemu

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newMultifdListener(t *testing.T) *multifdListener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &multifdListener{UnixListener: ln, path: path, main: make(chan net.Conn, 1)}
}

// dial connects to l and writes one byte naming the connection.
func dial(t *testing.T, l *multifdListener, b byte) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", l.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte{b}); err != nil {
		t.Fatal(err)
	}
	return c
}

func first(t *testing.T, c net.Conn) byte {
	t.Helper()
	var b [1]byte
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

// QEMU's first connection is the main channel; Accept hands out only
// the multifd channels after it.
func TestMultifdListenerSplitsMain(t *testing.T) {
	l := newMultifdListener(t)
	dial(t, l, 'm')
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	select {
	case c := <-l.main:
		if got := first(t, c); got != 'm' {
			t.Fatalf("main channel is connection %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no main channel")
	}
	dial(t, l, '1')
	dial(t, l, '2')
	for _, want := range []byte{'1', '2'} {
		select {
		case c := <-accepted:
			if got := first(t, c); got != want {
				t.Fatalf("multifd channel %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a multifd channel was not accepted")
		}
	}
}

// A main channel that comes after MigrateOut gave up is closed, not
// left open.
func TestMultifdListenerAbandoned(t *testing.T) {
	l := newMultifdListener(t)
	l.abandon()
	c := dial(t, l, 'm')
	go func() {
		for {
			if _, err := l.Accept(); err != nil {
				return
			}
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Closed with our byte unread: EOF or a reset, not a timeout.
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the late main channel: read %v, want it closed", err)
	}
	select {
	case <-l.main:
		t.Fatal("the late main channel was handed out")
	default:
	}
}
