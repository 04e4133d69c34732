package qemu

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func TestPatternIsXorshift32(t *testing.T) {
	p := Pattern(1, 12)
	// xorshift32 from 1: 270369, 67634689, 2647435461.
	want := []uint32{270369, 67634689, 2647435461}
	for i, w := range want {
		if got := binary.LittleEndian.Uint32(p[4*i:]); got != w {
			t.Fatalf("word %d: %d, want %d", i, got, w)
		}
	}
	if bytes.Equal(Pattern(seedOf("a"), 64), Pattern(seedOf("b"), 64)) {
		t.Fatal("two names give the same pattern")
	}
}

func TestLayout(t *testing.T) {
	for _, tc := range []struct {
		spec             hypervisor.Spec
		patLen, dirtyLen uint64
		ticks            uint32
	}{
		{hypervisor.Spec{Name: "a", Memory: 68 << 20}, 0, 0, 0},
		{hypervisor.Spec{Name: "a", Memory: 68 << 20, Workload: hypervisor.Workload{Fill: 1}}, 64 << 20, 0, 0},
		{hypervisor.Spec{Name: "a", Memory: 68 << 20, Workload: hypervisor.Workload{Fill: 1, Dirty: 4096 * 100}}, 48 << 20, 16 << 20, 6553},
		{hypervisor.Spec{Name: "a", Memory: 1 << 30, Workload: hypervisor.Workload{Fill: 0.5, Dirty: DirtyFlatOut}}, ((1<<30 - 4<<20 - 64<<20) / 2) &^ 4095, 64 << 20, 0},
	} {
		l := Layout(tc.spec)
		if l.PatternLen != tc.patLen || l.DirtyLen != tc.dirtyLen || l.PagesPerTick != tc.ticks {
			t.Errorf("%+v: layout %+v; want pattern %d, dirty %d, pages per tick %d", tc.spec, l, tc.patLen, tc.dirtyLen, tc.ticks)
		}
		if l.DirtyLen > 0 && (l.DirtyAddr < l.PatternAddr+l.PatternLen || l.DirtyAddr+l.DirtyLen > tc.spec.Memory-topReserve) {
			t.Errorf("%+v: regions overlap or overflow: %+v", tc.spec, l)
		}
	}
}

func TestCheckDirtied(t *testing.T) {
	l := GuestLayout{DirtyLen: 4 * pageSize}
	region := make([]byte, l.DirtyLen)
	for i, v := range []uint32{3, 3, 2, 2} { // 10 pages written: 2 passes + 2
		binary.LittleEndian.PutUint32(region[i*pageSize:], v)
	}
	if err := l.CheckDirtied(region, GuestCounters{Pages: 10, Generation: 2}); err != nil {
		t.Fatal(err)
	}
	if err := l.CheckDirtied(region, GuestCounters{Pages: 11, Generation: 2}); err == nil {
		t.Fatal("a page one pass behind passed")
	}
	binary.LittleEndian.PutUint32(region[3*pageSize:], 7)
	if err := l.CheckDirtied(region, GuestCounters{Pages: 10, Generation: 2}); err == nil {
		t.Fatal("a corrupted page passed")
	}
}

// The committed guest.bin is what guest.S assembles to (when binutils
// are here to say so).
func TestGuestImageMatchesSource(t *testing.T) {
	as, err1 := exec.LookPath("as")
	ld, err2 := exec.LookPath("ld")
	if err1 != nil || err2 != nil {
		t.Skip("binutils (as, ld) not installed: cannot reassemble guest/guest.S to compare")
	}
	dir := t.TempDir()
	obj, bin := filepath.Join(dir, "guest.o"), filepath.Join(dir, "guest.bin")
	if out, err := exec.Command(as, "--32", "-o", obj, "guest/guest.S").CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command(ld, "-m", "elf_i386", "-Ttext=0x100000", "--oformat=binary", "-o", bin, obj).CombinedOutput(); err != nil {
		t.Fatalf("ld: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, guestImage) {
		t.Fatal("guest/guest.bin is not what guest/guest.S assembles to: run `make guest`")
	}
	// The header and parameter offsets the driver patches.
	le := binary.LittleEndian
	if le.Uint32(b) != 0x1BADB002 || le.Uint32(b[offPagesPerTick:]) != 0 || le.Uint32(b[offStatus:]) != 0 {
		t.Fatal("guest image layout differs from the offsets in guest.go")
	}
}

// Text: the stream's words from TextAt on turned into letters a–h, and
// memory that compresses 2–3× with zstd at text=0.9.
func TestPatternText(t *testing.T) {
	s := hypervisor.Spec{Name: "t", Memory: 20 << 20, Workload: hypervisor.Workload{Fill: 1, Text: 0.9}}
	l := Layout(s)
	if l.PatternLen != 16<<20 || l.TextAt != l.PatternAddr+16<<20-15099494&^4095 {
		t.Fatalf("layout %+v", l)
	}
	if l := Layout(hypervisor.Spec{Name: "t", Memory: 20 << 20, Workload: hypervisor.Workload{Fill: 1}}); l.TextAt != l.PatternAddr+l.PatternLen {
		t.Fatalf("a guest without text has text from %#x (pattern %#x+%#x)", l.TextAt, l.PatternAddr, l.PatternLen)
	}
	data, raw := l.PatternData(), Pattern(l.Seed, int(l.PatternLen))
	from := int(l.TextAt - l.PatternAddr)
	for i := 0; i < len(data); i++ {
		if i < from {
			if data[i] != raw[i] {
				t.Fatalf("byte %d (text from %d) is %#x, want the stream's %#x", i, from, data[i], raw[i])
			}
		} else if data[i] < 'a' || data[i] > 'h' || data[i]-'a' != raw[i]&7 {
			t.Fatalf("byte %d (text from %d) is %#x, want the letter of %#x", i, from, data[i], raw[i])
		}
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	ratio := float64(len(data)) / float64(len(enc.EncodeAll(data, nil)))
	t.Logf("zstd (fastest) compresses text=0.9 memory %.2f×", ratio)
	if ratio < 2 || ratio > 3 {
		t.Fatalf("text=0.9 compresses %.2f×, want 2–3", ratio)
	}
}
