package simvm

import (
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestReserve: reserved memory is zero, whole, writable and resident
// before anything writes it; a size the host cannot have fails with an
// error that says what was asked for.
func TestReserve(t *testing.T) {
	const size = 8 << 20
	b, err := reserve(size)
	if err != nil {
		t.Fatal(err)
	}
	defer release(b)
	if len(b) != size {
		t.Fatalf("reserved %d bytes, want %d", len(b), size)
	}
	if resident := residentPages(t, b); resident != size/PageSize {
		t.Fatalf("%d of %d pages resident after reserve", resident, size/PageSize)
	}
	for i := 0; i < len(b); i += PageSize / 2 {
		if b[i] != 0 {
			t.Fatalf("byte %d is %d, want 0", i, b[i])
		}
		b[i] = 1
	}

	if b, err := reserve(1 << 50); err == nil {
		release(b)
		t.Fatal("reserved 1 PiB")
	} else if !strings.Contains(err.Error(), "guest memory") {
		t.Fatalf("error %q does not say what failed", err)
	}
}

// residentPages counts b's pages in RAM (mincore).
func residentPages(t *testing.T, b []byte) int {
	t.Helper()
	vec := make([]byte, (len(b)+PageSize-1)/PageSize)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
