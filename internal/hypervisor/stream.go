package hypervisor

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// streamSocketBuffer is the send and receive buffer of each end of a
// migration stream's socket pair. Small on purpose: what sits in them
// when the VM pauses for its final copy is sent during the downtime (the
// default ~200 KiB per side is 30 ms at 100 Mbit/s); the migration
// agent's SUDP stream has its own bounded queue behind.
const streamSocketBuffer = 64 << 10

// StreamPair makes the socket pair a migration stream runs on: vm goes to
// the hypervisor process (over SCM_RIGHTS), ma is the migration agent's
// end. The caller closes vm once the hypervisor holds its own copy, or
// the agent would never see EOF when the hypervisor closes the stream.
func StreamPair() (vm *os.File, ma net.Conn, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("hypervisor: socketpair: %w", err)
	}
	for _, fd := range fds {
		_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, streamSocketBuffer)
		_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, streamSocketBuffer)
	}
	mine := os.NewFile(uintptr(fds[0]), "migration-stream")
	vm = os.NewFile(uintptr(fds[1]), "migration-stream-vm")
	ma, err = net.FileConn(mine)
	mine.Close()
	if err != nil {
		vm.Close()
		return nil, nil, fmt.Errorf("hypervisor: %w", err)
	}
	return vm, ma, nil
}
