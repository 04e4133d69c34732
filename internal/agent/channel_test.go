package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/zstream"
)

// streamPair is a connected pair of SUDP streams over loopback.
func streamPair(t *testing.T) (client, server *sudp.Stream) {
	t.Helper()
	key := func() noise.DHKey {
		k, err := handshake.GenerateKeypair(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	srvKey, cliKey := key(), key()
	psk := [32]byte{7}
	var srvPub, cliPub [32]byte
	copy(srvPub[:], srvKey.Public)
	copy(cliPub[:], cliKey.Public)
	srv, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: srvKey, ClusterID: "test",
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			if peer != cliPub {
				return handshake.Peer{}, errors.New("unknown")
			}
			return handshake.Peer{ID: "peer", PSK: psk, Allowed: true}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cli, err := sudp.Listen(sudp.Config{Listen: "127.0.0.1:0", Static: cliKey, ClusterID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := cli.Dial(ctx, srv.LocalAddr().String(), srvPub, psk)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client, err = cc.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A stream exists for the peer once its first bytes arrive.
	if _, err := client.Write([]byte{streamChannel}); err != nil {
		t.Fatal(err)
	}
	server, err = sc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := readStreamKind(ctx, server); err != nil || k != streamChannel {
		t.Fatalf("kind %q, %v", k, err)
	}
	return client, server
}

// A channel stream's name is read after its kind; a name that is empty,
// too long or not lower-case letters and digits is refused.
func TestReadChannelName(t *testing.T) {
	for _, c := range []struct {
		after []byte // what follows the kind byte
		name  string
		ok    bool
	}{
		{channelHeader("qemu", false)[1:], "qemu", true},
		{channelHeader("nbd", true)[1:], "nbd", true},
		{[]byte{0}, "", false},
		{append([]byte{17}, "abcdefghijklmnopq"...), "", false},
		{append([]byte{5}, "../.."...), "", false},
		{append([]byte{4}, "QEMU"...), "", false},
	} {
		cli, srv := streamPair(t)
		if _, err := cli.Write(c.after); err != nil {
			t.Fatal(err)
		}
		name, err := readChannelName(context.Background(), srv)
		if (err == nil) != c.ok || name != c.name {
			t.Errorf("after %q: name %q, %v; want %q, ok %v", c.after, name, err, c.name, c.ok)
		}
	}
}

// A framed stream that brings a malformed frame fails the read with
// zstream.ErrFrame, and is counted once.
func TestUnframedRefusesAndCounts(t *testing.T) {
	cli, srv := streamPair(t)
	// A good frame, then one whose length is past the bound.
	if _, err := cli.Write([]byte{0, 0, 0, 2, 'o', 'k', 0, 0x10, 0, 0}); err != nil {
		t.Fatal(err)
	}
	zr, err := zstream.NewReader(srv)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	u := &unframedStream{Stream: srv, zr: zr, refused: func() { n++ }}
	got, err := io.ReadAll(u)
	if string(got) != "ok" || !errors.Is(err, zstream.ErrFrame) {
		t.Fatalf("read %q, %v; want ok, then a refused frame", got, err)
	}
	if _, err := u.Read(make([]byte, 1)); err == nil || n != 1 {
		t.Fatalf("after the refusal: %v, counted %d times, want an error and once", err, n)
	}
}
