package socket

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestGROSegmentParsing(t *testing.T) {
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafePointer(&oob[unix.CmsgLen(0)])) = 1452
	if got := groSegment(oob); got != 1452 {
		t.Fatalf("segment %d, want 1452", got)
	}
	// Truncated or bogus headers are ignored, never read past the buffer.
	if got := groSegment(oob[:unix.CmsgLen(0)-1]); got != 0 {
		t.Fatalf("truncated header gave %d", got)
	}
	h.SetLen(1 << 20)
	if got := groSegment(oob); got != 0 {
		t.Fatalf("oversized length gave %d", got)
	}
	if got := groSegment(nil); got != 0 {
		t.Fatalf("empty gave %d", got)
	}
}

func TestBatchFull(t *testing.T) {
	b := NewBatch(1452)
	for i := 0; i < MaxSegments; i++ {
		if b.Full(1452) {
			if b.Len()*1452+1452 <= maxGSOBytes {
				t.Fatalf("full after %d datagrams", b.Len())
			}
			break
		}
		b.Commit(copy(b.Next(1452), make([]byte, 1452)))
	}
	if !b.Full(1452) {
		t.Fatal("batch never full")
	}
	b.Reset()
	if b.Len() != 0 || b.Full(1452) {
		t.Fatal("reset batch not empty")
	}
}

// Datagrams of mixed sizes sent in one batch (GSO runs where possible)
// arrive intact and in order over loopback.
func TestSendReadLoopback(t *testing.T) {
	for _, small := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "small"}[small], func(t *testing.T) { sendRead(t, small) })
	}
}

// sendRead: a GSO batch of mixed sizes arrives intact, also at a socket
// opened with ListenSmall (no GRO, 2 KiB receive buffers).
func sendRead(t *testing.T, small bool) {
	listenRx := Listen
	if small {
		listenRx = ListenSmall
	}
	rx, err := listenRx("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	tx, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	t.Logf("GSO available: %v", tx.GSO())
	sizes := []int{1400, 1400, 1400, 900, 1400, 1400, 200, 1400}
	b := NewBatch(1400)
	b.To = rx.LocalAddr()
	var want [][]byte
	for i, n := range sizes {
		p := bytes.Repeat([]byte{byte(i + 1)}, n)
		want = append(want, p)
		b.Commit(copy(b.Next(1400), p))
	}
	if err := tx.Send(b); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		ds, err := rx.Read(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.From != tx.LocalAddr() {
				t.Fatalf("from %v, want %v", d.From, tx.LocalAddr())
			}
			got = append(got, append([]byte(nil), d.Data...))
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes of %d, want %d bytes of %d", i, len(got[i]), got[i][0], len(want[i]), want[i][0])
		}
	}
}
