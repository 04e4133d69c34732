package agent

import (
	"errors"
	"io"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/sudp"
	"github.com/ferry-vm/ferry/internal/zstream"
)

// A migration stream of kind streamFramed carries the hypervisor's bytes
// in zstream frames, each chunk compressed or not as the source's policy
// decides (package zstream); the other direction (QEMU's return path,
// post-copy page requests) is raw. The encoder and decoder are used
// whole-buffer only (EncodeAll, DecodeAll) and hold no goroutines, so
// they are left to the garbage collector rather than closed under a
// copy that may still be running.

// framedStream is the source's end: writes are framed.
type framedStream struct {
	*sudp.Stream
	zw    *zstream.Writer
	ended func(zstream.Stats) // called once the last frame is written
}

func (f *framedStream) Write(p []byte) (int, error)         { return f.zw.Write(p) }
func (f *framedStream) ReadFrom(r io.Reader) (int64, error) { return f.zw.ReadFrom(r) }

// WriteTo keeps io.Copy on the raw direction's Read, whatever fast
// paths the embedded stream gains.
func (f *framedStream) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{f.Stream})
}

// CloseWrite ends the stream after its last frame.
func (f *framedStream) CloseWrite() error {
	if f.ended != nil {
		f.ended(f.zw.Stats())
	}
	return f.Stream.CloseWrite()
}

// unframedStream is the destination's end: reads are unframed.
type unframedStream struct {
	*sudp.Stream
	zr      *zstream.Reader
	refused func() // a malformed frame (counted once: the stream is failed for good)
	counted bool
}

func (u *unframedStream) Read(p []byte) (int, error) {
	n, err := u.zr.Read(p)
	if err != nil && errors.Is(err, zstream.ErrFrame) && !u.counted {
		u.counted = true
		if u.refused != nil {
			u.refused()
		}
	}
	return n, err
}

// WriteTo keeps io.Copy on the unframing Read, whatever fast paths the
// embedded stream gains (one that read the stream directly would pass
// the frames on undecoded).
func (u *unframedStream) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{u})
}

// ReadFrom keeps the raw direction's writes on the stream's Write.
func (u *unframedStream) ReadFrom(r io.Reader) (int64, error) { return u.Stream.ReadFrom(r) }

// newUnframed is the destination's end of framed stream s, counting a
// malformed frame in the agent's metrics.
func (a *Agent) newUnframed(s *sudp.Stream) (*unframedStream, error) {
	zr, err := zstream.NewReader(s)
	if err != nil {
		return nil, err
	}
	return &unframedStream{Stream: s, zr: zr, refused: a.metrics.framesRefused.Inc}, nil
}

// streamCompressionOf is the source's setting for a migration's stream
// ("" is "auto").
func streamCompressionOf(p hypervisor.MigrationParams) string {
	if p.StreamCompression == "" {
		return hypervisor.StreamCompressionAuto
	}
	return p.StreamCompression
}
