package zstream

import (
	"io"
	"testing"
)

// BenchmarkWriter: the compressor's speed on guest-like memory (a third
// random, a third text, a third zeros), every chunk tried.
func BenchmarkWriter(b *testing.B) {
	data := memory(32<<20, 9)
	w, err := NewWriter(io.Discard, true)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := w.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	st := w.Stats()
	b.ReportMetric(float64(st.Raw)/float64(st.Wire), "ratio")
}

// BenchmarkReader: the decompressor's speed on the same.
func BenchmarkReader(b *testing.B) {
	data := memory(32<<20, 9)
	var wire []byte
	w, _ := NewWriter(writerFunc(func(p []byte) (int, error) { wire = append(wire, p...); return len(p), nil }), true)
	if _, err := w.Write(data); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		r, _ := NewReader(&sliceReader{b: wire})
		if n, err := io.Copy(io.Discard, r); err != nil || n != int64(len(data)) {
			b.Fatal(n, err)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}
