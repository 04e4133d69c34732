package simvm

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// Guest memory and its dirty tracking.
//
// The guest's memory is one []byte, allocated with make: the runtime maps
// fresh anonymous memory for it, so pages the guest never writes are never
// faulted in (a 4 GiB VM that touched 10 MiB costs 10 MiB of RAM). An
// incoming VM's memory is reserved whole instead (reserve.go).
//
// Two bitmaps of one bit per page, as atomic 64-bit words, sit beside it:
// dirty (written since the migrator last took the page) and touched
// (ever written; an untouched page is known to be zero without reading
// it). Page contents are guarded by striped mutexes: a writer (the
// dirtier, or the destination applying a received page) takes the page's
// stripe, writes the page, sets its bits, and releases the stripe; the
// migrator clears a word of dirty bits atomically and then copies each
// page out under its stripe. Whatever a writer does after the migrator
// cleared a bit sets it again, so the page is sent again in a later round:
// no write is ever lost, and no stripe is held while anything is written
// to the stream.

// nStripes is the number of page locks (a power of two). Only two parties
// ever contend (the dirtier and the migrator), so a few hundred stripes
// make collisions rare while costing 16 KiB.
const nStripes = 256

// stripe is one page lock, padded to a cache line so that neighbouring
// stripes taken by different goroutines do not share one.
type stripe struct {
	sync.Mutex
	_ [56]byte
}

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	zeroPage   [PageSize]byte
	// zeroCRC is the CRC32C of a page of zeros.
	zeroCRC = crc32.Checksum(zeroPage[:], castagnoli)
)

// memory is the guest's memory with its dirty and touched bitmaps.
type memory struct {
	mem     []byte
	pages   uint64
	stripes [nStripes]stripe
	dirty   []atomic.Uint64 // bit p%64 of word p/64: page p written since last taken
	touched []atomic.Uint64 // bit set: page ever written (clear: page is zero)
	// ndirty counts set dirty bits; it may be off by one for an instant
	// (a bit set before its count), hence signed.
	ndirty   atomic.Int64
	ntouched atomic.Uint64
}

func newMemory(pages uint64) *memory { return memoryOver(make([]byte, pages*PageSize)) }

// memoryOver tracks buf (zero, a whole number of pages) as guest memory.
func memoryOver(buf []byte) *memory {
	pages := uint64(len(buf)) / PageSize
	words := (pages + 63) / 64
	return &memory{
		mem:     buf,
		pages:   pages,
		dirty:   make([]atomic.Uint64, words),
		touched: make([]atomic.Uint64, words),
	}
}

func (m *memory) stripe(p uint64) *stripe { return &m.stripes[p&(nStripes-1)] }

func (m *memory) page(p uint64) []byte {
	off := p * PageSize
	return m.mem[off : off+PageSize : off+PageSize]
}

// markLocked sets page p's touched and dirty bits; the caller holds p's
// stripe and has just written the page. Touched is set before dirty: a
// migrator that took the dirty bit earlier and then finds the page
// untouched knows that a write in flight will set dirty again.
func (m *memory) markLocked(p uint64) {
	w, bit := p/64, uint64(1)<<(p%64)
	if m.touched[w].Load()&bit == 0 && m.touched[w].Or(bit)&bit == 0 {
		m.ntouched.Add(1)
	}
	if m.dirty[w].Load()&bit == 0 && m.dirty[w].Or(bit)&bit == 0 {
		m.ndirty.Add(1)
	}
}

// stamp is the dirtier's write: one byte of the stamp every 512 bytes, so
// a page's content changes at every write while the write stays cheap.
func (m *memory) stamp(p, stamp uint64) {
	s := m.stripe(p)
	s.Lock()
	pg := m.page(p)
	for i := 0; i < PageSize; i += 512 {
		pg[i] = byte(stamp >> (i / 512 % 8 * 8))
	}
	m.markLocked(p)
	s.Unlock()
}

// store writes src as page p (the destination applying a received page,
// or a test writing a pattern).
func (m *memory) store(p uint64, src []byte) {
	s := m.stripe(p)
	s.Lock()
	copy(m.page(p), src)
	m.markLocked(p)
	s.Unlock()
}

// zero makes page p zero. An untouched page already is; a touched one is
// cleared and stays touched (and the zero invariant holds).
func (m *memory) zero(p uint64) {
	w, bit := p/64, uint64(1)<<(p%64)
	if m.touched[w].Load()&bit == 0 {
		return
	}
	s := m.stripe(p)
	s.Lock()
	clear(m.page(p))
	s.Unlock()
}

// markAllDirty starts a migration: every page is to be sent.
func (m *memory) markAllDirty() {
	for w := range m.dirty {
		mask := ^uint64(0)
		if rest := m.pages - uint64(w)*64; rest < 64 {
			mask = 1<<rest - 1
		}
		old := m.dirty[w].Swap(mask)
		m.ndirty.Add(int64(bits.OnesCount64(mask)) - int64(bits.OnesCount64(old)))
	}
}

// takeDirty clears dirty word w and returns the bits it had, with the
// touched word read after the clear (see markLocked for why that order
// makes the lock-free zero test safe).
func (m *memory) takeDirty(w int) (dirty, touched uint64) {
	if m.dirty[w].Load() == 0 {
		return 0, 0 // the common case in later rounds: no write to the line
	}
	dirty = m.dirty[w].Swap(0)
	m.ndirty.Add(-int64(bits.OnesCount64(dirty)))
	return dirty, m.touched[w].Load()
}

// copyPage copies page p into dst under its stripe.
func (m *memory) copyPage(p uint64, dst []byte) {
	s := m.stripe(p)
	s.Lock()
	copy(dst, m.page(p))
	s.Unlock()
}

// dirtyBytes is the memory still to send.
func (m *memory) dirtyBytes() uint64 { return uint64(max(m.ndirty.Load(), 0)) * PageSize }

// digest is the SHA-256 of the whole memory, page by page under each
// page's stripe; untouched pages hash as zeros without being read (and so
// without being faulted in).
func (m *memory) digest() [32]byte {
	h := sha256.New()
	for w := range m.touched {
		tw := m.touched[w].Load()
		for i := uint64(0); i < 64; i++ {
			p := uint64(w)*64 + i
			if p >= m.pages {
				break
			}
			if tw&(1<<i) == 0 {
				h.Write(zeroPage[:])
				continue
			}
			s := m.stripe(p)
			s.Lock()
			h.Write(m.page(p))
			s.Unlock()
		}
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// crcTableDigest is the SHA-256 over a per-page CRC32C table, each entry
// as 4 bytes big-endian, page 0 first (the END record's digest).
func crcTableDigest(crc []uint32) [32]byte {
	h := sha256.New()
	var buf [16 << 10]byte
	for len(crc) > 0 {
		n := min(len(crc), len(buf)/4)
		for i, c := range crc[:n] {
			buf[4*i], buf[4*i+1], buf[4*i+2], buf[4*i+3] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
		}
		h.Write(buf[:4*n])
		crc = crc[n:]
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// fill writes incompressible data to the first n pages (a guest that has
// used its memory). It runs before the VM serves anything.
func (m *memory) fill(n uint64, seed uint64) {
	r := rand.NewPCG(seed, n)
	for p := range min(n, m.pages) {
		pg := m.page(p)
		for i := 0; i < PageSize; i += 8 {
			binary.LittleEndian.PutUint64(pg[i:], r.Uint64())
		}
		m.markLocked(p)
	}
}
