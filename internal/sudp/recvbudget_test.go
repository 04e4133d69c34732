package sudp

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/core"
	"github.com/ferry-vm/ferry/internal/sudp/handshake"
	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// hostilePeer holds a real session with the server and sends whatever
// frames it likes over a real socket: the enrolling host or migration agent
// of issue #20, which has the keys and ignores the rules.
type hostilePeer struct {
	t    *testing.T
	sock *net.UDPConn
	dcid uint64
	aead cipher.AEAD
	iv   [12]byte
	pn   uint64
}

// dialHostile runs the handshake by hand and derives the first send key
// generation as docs/protocol.md §6 specifies.
func dialHostile(t *testing.T, srv *Endpoint, key [32]byte, psk [32]byte, clientPriv []byte) *hostilePeer {
	t.Helper()
	sock, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	kp, err := handshake.KeypairFromPrivate([32]byte(clientPriv))
	if err != nil {
		t.Fatal(err)
	}
	in, err := handshake.NewInitiator(handshake.InitiatorConfig{Static: kp, RemoteStatic: key, PSK: psk, ClusterID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := in.Initiation(time.Now(), 0x5eed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sock.Write(pkt); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := sock.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	s, err := in.HandleResponse(time.Now(), buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	k, err := hkdf.Expand(sha256.New, s.SendKey[:], "ferry sudp key", 32)
	if err != nil {
		t.Fatal(err)
	}
	iv, err := hkdf.Expand(sha256.New, s.SendKey[:], "ferry sudp iv", 12)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	h := &hostilePeer{t: t, sock: sock, dcid: s.RemoteCID, aead: aead}
	copy(h.iv[:], iv)
	return h
}

// send seals frames as the next packet and sends it.
func (h *hostilePeer) send(frames []byte) {
	b := wire.AppendHeader(nil, wire.Header{DstCID: h.dcid, PN: h.pn})
	nonce := h.iv
	var p [8]byte
	binary.BigEndian.PutUint64(p[:], h.pn)
	for i := range p {
		nonce[4+i] ^= p[i]
	}
	h.pn++
	b = h.aead.Seal(b, nonce[:], frames, b[:wire.DataHeaderSize])
	if _, err := h.sock.Write(b); err != nil {
		h.t.Fatal(err)
	}
}

// syncBuffer is a log sink the endpoint's goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAttackTinyOutOfOrderFrames: over real sockets, a peer with a session
// floods one-byte frames at every other offset. The server closes that
// connection with CodeRecvBudget, counts it in the Prometheus collector and
// logs it, and keeps serving another peer on the same endpoint.
func TestAttackTinyOutOfOrderFrames(t *testing.T) {
	const bound = 512
	logs := &syncBuffer{}
	srvKey, badKey, goodKey := genKey(t), genKey(t), genKey(t)
	psk := [32]byte{2, 0}
	srv := newServer(t, Config{
		Static: srvKey,
		Conn:   core.Config{MaxRecvRanges: bound},
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, psk, badKey, goodKey)
	ctx := ctxT(t)

	good := newClientEndpoint(t, goodKey)
	goodConn, err := good.Dial(ctx, srv.LocalAddr().String(), pub(srvKey), psk)
	if err != nil {
		t.Fatal(err)
	}
	goodSrv, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}

	bad := dialHostile(t, srv, pub(srvKey), psk, badKey.Private)
	bad.send(wire.AppendPing(nil)) // confirms the keys
	badSrv, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One byte high up, then one-byte frames below it at every other
	// offset, 64 to a packet, paced so the socket buffer keeps them.
	const stream = 0 // the peer's first bidirectional stream
	bad.send(append(wire.AppendStreamHeader(nil, stream, 1<<20, 1, false), 'x'))
	var pkt []byte
	for i := 0; i < 2*bound/64 && badSrv.Err() == nil; i++ {
		pkt = pkt[:0]
		for k := 0; k < 64; k++ {
			pkt = append(wire.AppendStreamHeader(pkt, stream, uint64(2*(64*i+k)+1), 1, false), 'x')
		}
		bad.send(pkt)
		time.Sleep(time.Millisecond)
	}
	waitFor(t, "the hostile connection closed", func() bool { return badSrv.Err() != nil })
	var ce *core.CloseError
	if err := badSrv.Err(); !errors.As(err, &ce) || ce.Code != core.CodeRecvBudget {
		t.Fatalf("hostile connection ended with %v, want CodeRecvBudget", err)
	}
	waitFor(t, "the close counted", func() bool {
		return metricValue(t, srv, "ferry_sudp_receive_budget_closes_total", "bound", "ranges") == 1
	})
	waitFor(t, "the close logged", func() bool {
		return bytes.Contains([]byte(logs.String()), []byte("peer exceeded the receive budget"))
	})
	t.Logf("log: %s", logs.String())

	// The endpoint and its other connection are unaffected.
	if err := goodConn.SendMessage(ctx, []byte("still here"), PriorityControl); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if m, err := goodSrv.ReceiveMessage(rctx, 100); err != nil || string(m) != "still here" {
		t.Fatalf("other connection broken: %q %v", m, err)
	}
	if goodSrv.Err() != nil {
		t.Fatalf("other connection closed: %v", goodSrv.Err())
	}
}
