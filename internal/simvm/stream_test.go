package simvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzStream from streamSeeds")

// testStream builds a small valid stream of a VM of pages pages: round 1
// with every page (data pages where data(p) is not nil), round 2 resending
// page 0 with new content, DEVICE and END (with the right digest unless
// badDigest).
func testStream(t testing.TB, pages uint64, compress, badDigest bool, data func(p uint64) []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	e, err := newEncoder(&b, compress)
	if err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.Spec{Name: "vm1", Memory: pages * PageSize, VCPUs: 1, Workload: hypervisor.Workload{Dirty: 1e6}}
	if err := e.writeHeader(pages, spec); err != nil {
		t.Fatal(err)
	}
	crc := make([]uint32, pages)
	send := func(p uint64, content []byte) {
		if e.full() {
			if err := e.flush(); err != nil {
				t.Fatal(err)
			}
		}
		if content == nil {
			e.addZero(p)
			crc[p] = zeroCRC
			return
		}
		copy(e.slot(), content)
		crc[p] = crc32.Checksum(content, castagnoli)
		e.addData(p, crc[p])
	}
	for p := uint64(0); p < pages; p++ {
		send(p, data(p))
	}
	if err := e.writeRound(1); err != nil {
		t.Fatal(err)
	}
	send(0, bytes.Repeat([]byte{0xAB}, PageSize))
	if err := e.writeRound(2); err != nil {
		t.Fatal(err)
	}
	rng, _ := rand.NewPCG(1, 2).MarshalBinary()
	if err := e.writeDevice(deviceState{Workload: spec.Workload, Stamp: 7, RNG: rng, Touched: 1}); err != nil {
		t.Fatal(err)
	}
	d := crcTableDigest(crc)
	if badDigest {
		d[0] ^= 1
	}
	if err := e.writeEnd(d); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// textPage is a compressible page.
func textPage(p uint64) []byte {
	s := strings.Repeat(fmt.Sprintf("page %d of the simulated guest; ", p), PageSize/20)
	return []byte(s[:PageSize])
}

// randomPage is an incompressible page.
func randomPage(p uint64) []byte {
	b := make([]byte, PageSize)
	r := rand.NewChaCha8([32]byte{byte(p), byte(p >> 8), byte(p >> 16), 1})
	_, _ = r.Read(b)
	return b
}

// decodeAll runs the decoder and a receiver over a stream, as the
// destination does, returning the error that stopped it (nil: verified).
func decodeAll(stream []byte, maxApplyPages uint64) error {
	d := newDecoder(bytes.NewReader(stream))
	h, err := d.readHeader()
	if err != nil {
		return err
	}
	var r *receiver
	if h.Pages <= maxApplyPages {
		r = newReceiver(newMemory(h.Pages), nil)
	}
	for {
		rec, err := d.next()
		if err != nil {
			return err
		}
		if rec.Type == recPages {
			k := 0
			for _, e := range rec.Entries {
				if uint64(e.Page) >= h.Pages {
					return fmt.Errorf("decoder let page %d through (%d pages)", e.Page, h.Pages)
				}
				if e.Kind == kindData {
					k++
				}
			}
			if len(rec.Data) != k*PageSize {
				return fmt.Errorf("decoder returned %d bytes for %d data pages", len(rec.Data), k)
			}
		}
		if r != nil {
			done, err := r.apply(rec)
			if err != nil {
				return err
			}
			if done {
				if _, err := d.next(); err != io.EOF {
					return fmt.Errorf("after END: %v, want io.EOF", err)
				}
				return nil
			}
		} else if rec.Type == recEnd {
			return nil
		}
	}
}

func TestStreamRoundTrip(t *testing.T) {
	for _, compress := range []bool{false, true} {
		mixed := func(p uint64) []byte {
			switch p % 3 {
			case 0:
				return nil
			case 1:
				return textPage(p)
			}
			return randomPage(p)
		}
		s := testStream(t, 600, compress, false, mixed)
		if err := decodeAll(s, 1<<20); err != nil {
			t.Fatalf("compress=%v: %v", compress, err)
		}
		// The destination's memory equals what was sent.
		d := newDecoder(bytes.NewReader(s))
		h, _ := d.readHeader()
		m := newMemory(h.Pages)
		r := newReceiver(m, nil)
		for {
			rec, err := d.next()
			if err != nil {
				t.Fatal(err)
			}
			if done, err := r.apply(rec); err != nil {
				t.Fatal(err)
			} else if done {
				break
			}
		}
		for p := uint64(0); p < h.Pages; p++ {
			want := mixed(p)
			if p == 0 {
				want = bytes.Repeat([]byte{0xAB}, PageSize)
			}
			if want == nil {
				want = zeroPage[:]
			}
			if !bytes.Equal(m.page(p), want) {
				t.Fatalf("compress=%v: page %d differs", compress, p)
			}
		}
		if r.dev.Stamp != 7 || r.dev.Workload.Dirty != 1e6 {
			t.Fatalf("device state %+v", r.dev)
		}
	}
	if err := decodeAll(testStream(t, 10, false, true, randomPage), 1<<20); err == nil || !strings.Contains(err.Error(), "verification failed") {
		t.Fatalf("bad END digest: %v", err)
	}
}

// TestDecoderRejects checks that each kind of malformed stream is refused
// with a clear error (never a panic).
func TestDecoderRejects(t *testing.T) {
	good := testStream(t, 4, false, false, func(p uint64) []byte {
		if p == 1 {
			return randomPage(p)
		}
		return nil
	})
	hdrEnd := headerLen + int(binary.BigEndian.Uint16(good[22:]))
	// The first record is PAGES with 4 entries and one data page.
	firstBody := hdrEnd + recHeaderLen
	entry := func(i int) int { return firstBody + pagesPrefix + i*entryLen }
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	put32 := func(b []byte, off int, v uint32) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
	compressedGood := testStream(t, 4, true, false, textPage)
	cFirst := headerLen + int(binary.BigEndian.Uint16(compressedGood[22:]))
	cPayload := cFirst + recHeaderLen + pagesPrefix + 4*entryLen

	cases := []struct {
		name   string
		stream []byte
		want   string
	}{
		{"empty", nil, "inside the header"},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), "bad magic"},
		{"version", mod(func(b []byte) []byte { b[9] = 9; return b }), "version"},
		{"page size", mod(func(b []byte) []byte { return put32(b, 10, 8192) }), "page size"},
		{"page count zero", mod(func(b []byte) []byte { binary.BigEndian.PutUint64(b[14:], 0); return b }), "page count"},
		{"spec pages mismatch", mod(func(b []byte) []byte { binary.BigEndian.PutUint64(b[14:], 5); return b }), "is not 5 pages"},
		{"unknown type", mod(func(b []byte) []byte { b[hdrEnd] = 9; return b }), "unknown record type"},
		{"oversized record", mod(func(b []byte) []byte { return put32(b, hdrEnd+1, maxPagesBody+1) }), "out of range"},
		{"page out of range", mod(func(b []byte) []byte { return put32(b, entry(2), 4) }), "page 4 out of range"},
		{"unknown kind", mod(func(b []byte) []byte { b[entry(2)+4] = 7; return b }), "unknown kind"},
		{"zero page CRC", mod(func(b []byte) []byte { b[entry(0)+5] ^= 1; return b }), "zero page 0"},
		{"data page CRC", mod(func(b []byte) []byte { b[entry(4)+10] ^= 1; return b }), "CRC32C"},
		{"count zero", mod(func(b []byte) []byte { b[firstBody], b[firstBody+1] = 0, 0; return b }), "count 0"},
		{"unknown flag", mod(func(b []byte) []byte { b[firstBody+2] = 4; return b }), "flags"},
		{"wrong length", mod(func(b []byte) []byte {
			n := binary.BigEndian.Uint32(b[hdrEnd+1:])
			b = put32(b, hdrEnd+1, n-1)
			return append(b[:firstBody+int(n)-1], b[firstBody+int(n):]...)
		}), "payload"},
		{"truncated", good[:len(good)-10], "stream ended inside"},
		{"bad zstd", func() []byte {
			b := bytes.Clone(compressedGood)
			for i := cPayload + 4; i < cPayload+40 && i < len(b); i++ {
				b[i] ^= 0x5a
			}
			return b
		}(), "zstd"},
		{"zstd flag on raw payload", mod(func(b []byte) []byte { b[firstBody+2] = flagZstd; return b }), "compressed PAGES payload"},
		{"round out of order", mod(func(b []byte) []byte {
			i := bytes.Index(b[hdrEnd:], []byte{recRound, 0, 0, 0, 4, 0, 0, 0, 1})
			b[hdrEnd+i+8] = 3
			return b
		}), "ROUND 3 after round 0"},
		{"END before DEVICE", func() []byte {
			b := bytes.Clone(good)
			i := bytes.LastIndex(b, []byte(`{"workload"`)) - recHeaderLen
			return append(b[:i], b[len(b)-37:]...)
		}(), "END not right after DEVICE"},
		{"DEVICE unknown field", func() []byte {
			i := bytes.LastIndex(good, []byte(`{"workload"`)) - recHeaderLen
			js := []byte(`{"bogus":1}`)
			b := append(bytes.Clone(good[:i]), recDevice, 0, 0, 0, byte(len(js)))
			return append(append(b, js...), good[len(good)-37:]...)
		}(), "DEVICE"},
	}
	for _, c := range cases {
		err := decodeAll(c.stream, 1<<20)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// streamSeeds are the committed seeds of FuzzStream: valid streams and
// edge cases.
func streamSeeds(t testing.TB) map[string][]byte {
	some := func(p uint64) []byte {
		if p%2 == 1 {
			return textPage(p)
		}
		return nil
	}
	valid := testStream(t, 4, false, false, some)
	return map[string][]byte{
		"valid-raw":        valid,
		"valid-zstd":       testStream(t, 4, true, false, textPage),
		"valid-zero":       testStream(t, 3, false, false, func(uint64) []byte { return nil }),
		"bad-digest":       testStream(t, 2, false, true, randomPage),
		"truncated":        valid[:len(valid)/2],
		"header-only":      valid[:headerLen+int(binary.BigEndian.Uint16(valid[22:]))],
		"oversized-record": append(bytes.Clone(valid[:headerLen+int(binary.BigEndian.Uint16(valid[22:]))]), recPages, 0xff, 0xff, 0xff, 0xff),
	}
}

func TestFuzzCorpusUpToDate(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzStream")
	for name, s := range streamSeeds(t) {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		path := filepath.Join(dir, name)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("seed %s is missing or stale (regenerate with go test -run TestFuzzCorpusUpToDate -update-corpus): %v", name, err)
		}
	}
}

// FuzzStream feeds arbitrary bytes to the destination's decoder and
// receiver: they must fail cleanly (or verify), never panic, and never let
// an out-of-range page through. Its seeds are the committed corpus
// (testdata/fuzz/FuzzStream, kept current by TestFuzzCorpusUpToDate).
func FuzzStream(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		err := decodeAll(b, 64)
		if err != nil && !errors.Is(err, errStream) {
			t.Fatalf("error not marked as a stream fault: %v", err)
		}
	})
}

// TestStreamAllocs: encoding and decoding a PAGES record allocate nothing
// once the buffers exist (a 4 GiB VM is a million pages).
func TestStreamAllocs(t *testing.T) {
	page := randomPage(1)
	e, err := newEncoder(io.Discard, false)
	if err != nil {
		t.Fatal(err)
	}
	crc := crc32.Checksum(page, castagnoli)
	encode := func() {
		for p := uint64(0); p < maxBatch; p++ {
			if p%2 == 0 {
				e.addZero(p)
				continue
			}
			copy(e.slot(), page)
			e.addData(p, crc)
		}
		if err := e.flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(10, encode); n != 0 {
		t.Fatalf("encoding a batch: %v allocations", n)
	}
	var b bytes.Buffer
	e.w = &b
	encode()
	rec := b.Bytes()
	r := bytes.NewReader(rec)
	d := newDecoder(r)
	d.state, d.pages = decRecords, maxBatch
	m := newMemory(maxBatch)
	rv := newReceiver(m, nil)
	decode := func() {
		r.Reset(rec)
		got, err := d.next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rv.apply(got); err != nil {
			t.Fatal(err)
		}
	}
	decode()
	if n := testing.AllocsPerRun(10, decode); n != 0 {
		t.Fatalf("decoding and applying a batch: %v allocations", n)
	}
}
