package sudp

import (
	"io"
	"testing"
)

// BenchmarkLoopbackStream measures one bulk stream over loopback through
// the whole stack (both endpoints in this process).
func BenchmarkLoopbackStream(b *testing.B) {
	p := newPair(b, Config{})
	ctx := ctxT(b)
	const chunk = 256 << 10
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	st, err := p.cliConn.OpenStreamPriority(ctx, PriorityBulk)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan int64)
	go func() {
		rs, err := p.srvConn.AcceptStream(ctx)
		if err != nil {
			done <- 0
			return
		}
		n, _ := io.Copy(io.Discard, rs)
		done <- n
	}()
	b.ResetTimer()
	for b.Loop() {
		if _, err := st.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	st.CloseWrite()
	if n := <-done; n != int64(b.N)*chunk {
		b.Fatalf("received %d of %d", n, int64(b.N)*chunk)
	}
}
