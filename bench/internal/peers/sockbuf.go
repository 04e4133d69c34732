package peers

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// forceUDPBuffers sets a UDP socket's receive and send buffers to size bytes.
// It uses SO_RCVBUFFORCE/SO_SNDBUFFORCE, which (as root or with
// CAP_NET_ADMIN) lift the net.core.rmem_max/wmem_max caps exactly like
// quic-go does for its own sockets, and falls back to the capped
// SO_RCVBUF/SO_SNDBUF. It returns the effective receive buffer as the kernel
// reports it (twice the requested size, for its bookkeeping), or 0 if unknown.
func forceUDPBuffers(pc net.PacketConn, size int) int {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	eff := 0
	_ = raw.Control(func(fd uintptr) {
		f := int(fd)
		if unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
			_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		}
		if unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size) != nil {
			_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_SNDBUF, size)
		}
		eff, _ = unix.GetsockoptInt(f, unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	return eff
}
