package qemu

import (
	_ "embed"
	"encoding/binary"
	"fmt"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// The test guest (guest/guest.S): a multiboot kernel that writes a
// seeded pattern, then dirties a region of memory at a set rate. A VM
// that names no kernel and no bootable disk boots it, so real QEMU VMs
// have memory content that a migration test can check.

//go:embed guest/guest.bin
var guestImage []byte

// Where the guest image lives in guest memory, and its fields (offsets
// in the image; guest physical address = GuestLoadAddr + offset).
const (
	GuestLoadAddr = 0x100000

	offPatternAddr  = 0x20
	offPatternLen   = 0x24
	offSeed         = 0x28
	offDirtyAddr    = 0x2c
	offDirtyLen     = 0x30
	offPagesPerTick = 0x34
	offTextAt       = 0x38
	offStatus       = 0x3c
	offGeneration   = 0x40
	offPages        = 0x44

	// GuestCountersAddr is where the guest's status, generation and
	// pages counters (three little-endian uint32) are.
	GuestCountersAddr = GuestLoadAddr + offStatus

	// tickHz is the guest's timer rate (PIT channel 0 at 1 kHz).
	tickHz   = 1000
	pageSize = 4096
	// patternAddr: the pattern starts at 2 MiB, above the image;
	// topReserve: the last 2 MiB below the end of memory hold the
	// firmware's tables (ACPI, SMBIOS), which the guest leaves alone.
	patternAddr = 2 << 20
	topReserve  = 2 << 20
)

// GuestLayout is what the test guest does in a VM of a given spec.
type GuestLayout struct {
	PatternAddr, PatternLen uint64
	Seed                    uint32
	DirtyAddr, DirtyLen     uint64
	PagesPerTick            uint32 // pages written per 1 kHz tick, 16.16 fixed point; 0: flat out
	// TextAt is the guest address from which the pattern is text
	// (letters a–h) instead of random bytes: PatternAddr+PatternLen or
	// more, none. One stretch of each, so that a compressor's blocks
	// see one kind at a time, as they would a real guest's text and
	// its random data.
	TextAt uint64
}

// Layout returns the test guest's plan for spec s: the pattern fills
// Workload.Fill of the memory, its last Workload.Text of it text between 2 MiB and 2 MiB below its end (the
// rest of it, up to 64 MiB
// or a quarter of memory, is the dirtied region); Workload.Dirty sets
// the dirty rate (0 with a region: flat out is "dirty=max"; see
// DirtyFlatOut). The seed derives from the VM's name so two VMs differ.
func Layout(s hypervisor.Spec) GuestLayout {
	usable := s.Memory - min(s.Memory, patternAddr+topReserve)
	dirtyLen := min(usable/4, 64<<20) &^ (pageSize - 1)
	if s.Workload.Dirty == 0 {
		dirtyLen = 0
	}
	patLen := uint64(float64(usable-dirtyLen)*s.Workload.Fill) &^ (pageSize - 1)
	l := GuestLayout{
		PatternAddr: patternAddr, PatternLen: patLen, Seed: seedOf(s.Name),
		DirtyAddr: patternAddr + usable - dirtyLen, DirtyLen: dirtyLen,
	}
	text := uint64(float64(patLen)*min(max(s.Workload.Text, 0), 1)) &^ (pageSize - 1)
	l.TextAt = l.PatternAddr + patLen - text
	if s.Workload.Dirty > 0 && s.Workload.Dirty < DirtyFlatOut {
		l.PagesPerTick = uint32(max(min(s.Workload.Dirty/pageSize/tickHz*65536, 1<<31), 1))
	}
	return l
}

// DirtyFlatOut is a dirty rate at or above which the guest writes pages
// as fast as it runs (under TCG, far faster than any WAN link).
const DirtyFlatOut = 1 << 40

// seedOf is FNV-1a of the name, never 0 (xorshift's fixed point).
func seedOf(name string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	if h == 0 {
		h = 1
	}
	return h
}

// image returns the guest image with l's parameters.
func (l GuestLayout) image() ([]byte, error) {
	if l.PatternAddr+l.PatternLen > 1<<32 || l.DirtyAddr+l.DirtyLen > 1<<32 {
		return nil, fmt.Errorf("qemu: the test guest runs in 32-bit mode and uses at most 4 GiB; this layout reaches past it")
	}
	img := append([]byte(nil), guestImage...)
	le := binary.LittleEndian
	le.PutUint32(img[offPatternAddr:], uint32(l.PatternAddr))
	le.PutUint32(img[offPatternLen:], uint32(l.PatternLen))
	le.PutUint32(img[offSeed:], l.Seed)
	le.PutUint32(img[offDirtyAddr:], uint32(l.DirtyAddr))
	le.PutUint32(img[offDirtyLen:], uint32(l.DirtyLen))
	le.PutUint32(img[offPagesPerTick:], l.PagesPerTick)
	le.PutUint32(img[offTextAt:], uint32(min(l.TextAt, 1<<32-1)))
	return img, nil
}

// Pattern returns the first n bytes (n a multiple of 4) of the stream the
// guest writes from seed.
func Pattern(seed uint32, n int) []byte {
	out := make([]byte, n)
	x := seed
	for i := 0; i+4 <= n; i += 4 {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		binary.LittleEndian.PutUint32(out[i:], x)
	}
	return out
}

// PatternData returns what the guest writes in [PatternAddr,
// +PatternLen): Pattern's stream, its words from TextAt on turned into
// text.
func (l GuestLayout) PatternData() []byte {
	out := Pattern(l.Seed, int(l.PatternLen))
	for i := 0; i+4 <= len(out); i += 4 {
		if l.PatternAddr+uint64(i) >= l.TextAt {
			w := binary.LittleEndian.Uint32(out[i:])
			binary.LittleEndian.PutUint32(out[i:], w&0x07070707+0x61616161)
		}
	}
	return out
}

// GuestCounters are the test guest's progress counters.
type GuestCounters struct {
	Status     uint32 // 1 once the pattern is written
	Generation uint32 // passes over the dirtied region completed
	Pages      uint32 // pages written (wraps at 2^32)
}

// ParseCounters reads the 12 bytes at GuestCountersAddr.
func ParseCounters(b []byte) (GuestCounters, error) {
	if len(b) < 12 {
		return GuestCounters{}, fmt.Errorf("qemu: %d bytes of counters, want 12", len(b))
	}
	le := binary.LittleEndian
	return GuestCounters{Status: le.Uint32(b), Generation: le.Uint32(b[4:]), Pages: le.Uint32(b[8:])}, nil
}

// CheckDirtied checks the dirtied region's content (region, read while
// the guest is paused) against its counters: page i's first word is the
// number of passes that wrote it. It returns the first page that is off.
func (l GuestLayout) CheckDirtied(region []byte, c GuestCounters) error {
	n := l.DirtyLen / pageSize
	if n == 0 || uint64(len(region)) != l.DirtyLen {
		return fmt.Errorf("qemu: dirtied region is %d bytes, want %d", len(region), l.DirtyLen)
	}
	full, next := uint64(c.Pages)/n, uint64(c.Pages)%n
	for i := uint64(0); i < n; i++ {
		want := full
		if i < next {
			want++
		}
		if got := uint64(binary.LittleEndian.Uint32(region[i*pageSize:])); got != want&0xffffffff {
			return fmt.Errorf("qemu: dirtied page %d holds %d, want %d (pages %d, generation %d)", i, got, want, c.Pages, c.Generation)
		}
	}
	return nil
}

// Image returns the test guest's kernel image with l's parameters: for
// VMs other drivers boot (a libvirt domain's <kernel>).
func (l GuestLayout) Image() ([]byte, error) { return l.image() }
