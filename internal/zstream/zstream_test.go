package zstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// memory returns n bytes of guest-like memory: random, text (letters of
// three bits) and zeros, in stretches of 1 MiB.
func memory(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for off := 0; off < n; off += 1 << 20 {
		end := min(off+1<<20, n)
		switch r.IntN(3) {
		case 0:
			for i := off; i < end; i++ {
				b[i] = byte(r.Uint32())
			}
		case 1:
			for i := off; i < end; i++ {
				b[i] = 'a' + byte(r.IntN(8))
			}
		}
	}
	return b
}

// slowLink is a writer whose every write waits (on a fake clock) as a
// full send queue would.
type slowLink struct {
	bytes.Buffer
	clock *time.Time
	wait  time.Duration
}

func (s *slowLink) Write(p []byte) (int, error) {
	*s.clock = s.clock.Add(s.wait)
	return s.Buffer.Write(p)
}

func roundTrip(t *testing.T, data []byte, wait time.Duration, always bool, reads int) (Stats, []byte) {
	t.Helper()
	clock := time.Unix(0, 0)
	link := &slowLink{clock: &clock, wait: wait}
	w, err := NewWriter(link, always)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.now = func() time.Time { return clock }
	// Reads of varied sizes, as a socket gives them.
	src := io.Reader(bytes.NewReader(data))
	if reads > 0 {
		src = &chunky{r: src, n: reads}
	}
	if _, err := w.ReadFrom(src); err != nil {
		t.Fatal(err)
	}
	wire := append([]byte(nil), link.Bytes()...)
	r, err := NewReader(bytes.NewReader(wire))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, differing from the %d written", len(got), len(data))
	}
	st := w.Stats()
	if st.Raw != uint64(len(data)) || st.Wire != uint64(len(wire)) {
		t.Fatalf("stats %+v for %d bytes in, %d on the wire", st, len(data), len(wire))
	}
	return st, wire
}

type chunky struct {
	r io.Reader
	n int
	i int
}

func (c *chunky) Read(p []byte) (int, error) {
	c.i++
	return c.r.Read(p[:min(len(p), 1+(c.i*7919)%c.n)])
}

func TestRoundTrip(t *testing.T) {
	data := memory(8<<20, 1)
	// The link holds the stream back: what compresses is compressed.
	st, _ := roundTrip(t, data, 3*time.Millisecond, false, 0)
	ratio := float64(st.Raw) / float64(st.Wire)
	t.Logf("slow link: %+v, %.2f×", st, ratio)
	if ratio < 1.8 {
		t.Fatalf("a third random, a third text, a third zeros crossed a slow link at %.2f×, want ≥ 1.8", ratio)
	}
	// A link faster than the compressor: raw once LinkMemory frames
	// went without a wait.
	st, _ = roundTrip(t, data, 0, false, 0)
	t.Logf("fast link: %+v", st)
	if st.Tried > LinkMemory {
		t.Fatalf("fast link: %+v, want at most %d tries, then raw frames", st, LinkMemory)
	}
	// "zstd": compresses on a fast link too.
	st, _ = roundTrip(t, data, 0, true, 0)
	if float64(st.Raw)/float64(st.Wire) < 1.8 {
		t.Fatalf("always: %+v", st)
	}
	// Small, uneven reads.
	roundTrip(t, data[:1<<20], time.Millisecond, false, 5000)
	// Random data: tried rarely, sent raw.
	rnd := make([]byte, 16<<20)
	r := rand.New(rand.NewPCG(2, 2))
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	st, _ = roundTrip(t, rnd, 3*time.Millisecond, false, 0)
	t.Logf("random: %+v", st)
	// Judged random from a sample: never tried, all raw.
	if st.Compressed != 0 || st.Tried != 0 || st.Random != st.Frames || st.Wire != st.Raw+st.Frames*headerLen {
		t.Fatalf("random data: %+v, want no try, nothing compressed", st)
	}
	// Nothing at all: no frame.
	if st, wire := roundTrip(t, nil, 0, false, 0); st.Frames != 0 || len(wire) != 0 {
		t.Fatalf("empty stream: %+v", st)
	}
}

func frame(flags byte, payload []byte) []byte {
	h := []byte{flags, 0, 0, 0}
	h[1] = byte(len(payload) >> 16)
	binary.BigEndian.PutUint16(h[2:], uint16(len(payload)))
	return append(h, payload...)
}

func TestReaderRefuses(t *testing.T) {
	enc, _ := zstd.NewWriter(nil)
	big := enc.EncodeAll(make([]byte, MaxFrame+1), nil)
	empty := enc.EncodeAll(nil, nil)
	for _, tc := range []struct {
		name  string
		wire  []byte
		frame bool // ErrFrame (else a truncation)
	}{
		{"reserved flag", frame(0x02, []byte("x")), true},
		{"empty frame", frame(0, nil), true},
		{"oversized length", []byte{0, 0x04, 0x00, 0x01}, true},
		{"bad zstd", frame(flagZstd, []byte("not zstd at all")), true},
		{"zstd decoding past the bound", frame(flagZstd, big), true},
		{"zstd decoding to nothing", frame(flagZstd, empty), true},
		{"truncated header", []byte{0, 0}, false},
		{"truncated payload", frame(0, []byte("hello"))[:6], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := NewReader(bytes.NewReader(append(frame(0, []byte("ok")), tc.wire...)))
			defer r.Close()
			got, err := io.ReadAll(r)
			if string(got) != "ok" {
				t.Fatalf("the good frame before read as %q", got)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if errors.Is(err, ErrFrame) != tc.frame || (!tc.frame && !errors.Is(err, io.ErrUnexpectedEOF)) {
				t.Fatalf("error %v", err)
			}
			if _, err2 := r.Read(make([]byte, 1)); err2 == nil {
				t.Fatal("a failed reader read on")
			}
		})
	}
}

func FuzzReader(f *testing.F) {
	w, _ := NewWriter(io.Discard, true)
	f.Add(frame(0, []byte("raw")))
	var buf bytes.Buffer
	w.w = &buf
	w.Write(memory(300<<10, 3))
	f.Add(buf.Bytes()[:2000])
	f.Add(frame(flagZstd, []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		n, err := io.Copy(io.Discard, r)
		if err == nil && len(b) == 0 && n != 0 {
			t.Fatal("bytes from nothing")
		}
		// Bounded: a frame yields at most MaxFrame bytes.
		if n > int64(len(b)/headerLen+1)*MaxFrame {
			t.Fatalf("%d bytes out of %d", n, len(b))
		}
	})
}
