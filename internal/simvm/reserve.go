package simvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/internal/units"
)

// Destination memory is reserved before the transfer, as QEMU's
// -mem-prealloc does and for the same two reasons:
//
//   - A destination short of memory fails (or is OOM-killed) while it is
//     being prepared, with the source untouched, rather than half-way
//     through the copy.
//   - The cost of faulting fresh memory in leaves the transfer. On a
//     virtualised host that cost is large (measured here: 1.2–3 s of
//     kernel time per GiB of 4 KiB faults when the hypervisor below must
//     back the pages too), and during a migration it competes for the CPU
//     with the copy itself. The reservation asks for transparent huge
//     pages, which cut the faults 512-fold; the kernel's compaction for
//     them, which made on-demand huge pages slower, is paid here, before
//     the copy, too.

// reserve maps size bytes of anonymous memory backed by huge pages where
// the kernel has them, and populates them all for writing. The memory is
// zero. release unmaps it.
func reserve(size uint64) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("simvm: mapping %s of guest memory: %w", units.FormatBytes(size), err)
	}
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE) // advice: a kernel without THP ignores it
	switch err := unix.Madvise(b, unix.MADV_POPULATE_WRITE); {
	case err == nil:
	case errors.Is(err, unix.EINVAL):
		// Before Linux 5.14: touch every page instead.
		for i := 0; i < len(b); i += PageSize {
			b[i] = 0
		}
	default:
		_ = unix.Munmap(b)
		return nil, fmt.Errorf("simvm: reserving %s of guest memory on this host: %w", units.FormatBytes(size), err)
	}
	return b, nil
}

func release(b []byte) { _ = unix.Munmap(b) }
