package core

import (
	"testing"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// benchRecv feeds one stream 1400-byte frames in the order perm gives
// within each group of len(perm) packets, and reads whenever 64 KiB are
// ready: the receive path alone (frame handling, storage, ranges, read),
// without the AEAD or the simulator around it.
func benchRecv(b *testing.B, perm []int) {
	s := establishedSim(b)
	c := s.conn[1]
	const size = 1400
	id := uint64(40) // a client bidirectional stream the simulation left unused
	data := make([]byte, size)
	buf := make([]byte, 64<<10)
	var base uint64
	b.SetBytes(int64(size * len(perm)))
	b.ReportAllocs()
	for b.Loop() {
		for _, k := range perm {
			f := wire.Stream{ID: id, Offset: base + uint64(k*size), Data: data}
			if err := c.onStreamFrame(&f); err != nil {
				b.Fatal(err)
			}
		}
		base += uint64(size * len(perm))
		for c.StreamReadable(id) >= len(buf) {
			if _, _, err := c.StreamRead(id, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkStreamRecvInOrder is the bulk path: every frame extends the data.
func BenchmarkStreamRecvInOrder(b *testing.B) { benchRecv(b, []int{0, 1, 2, 3, 4, 5, 6, 7}) }

// BenchmarkStreamRecvReordered leaves a hole per 8 packets, filled after the
// seven that follow it (one loss recovered per group).
func BenchmarkStreamRecvReordered(b *testing.B) { benchRecv(b, []int{1, 2, 3, 4, 5, 6, 7, 0}) }
