package forward

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// TUNDevice is a TUN interface (IFF_TUN|IFF_NO_PI: each read or write is one
// bare IP packet). The interface lives in the network namespace of the
// thread that called OpenTUN; the device can be used from any goroutine and
// thread afterwards. The interface is not persistent: the kernel deletes it,
// with its addresses and routes, when the device is closed or the process
// dies.
type TUNDevice struct {
	f    *os.File
	name string
	ctl  int // AF_INET socket created in the TUN's namespace, for SIOCSIF* ioctls
}

// OpenTUN creates the TUN interface name (or attaches to an existing
// persistent one) in the calling thread's network namespace. To place it in
// another namespace, call it between runtime.LockOSThread + unix.Setns(target)
// and unix.Setns(back). The interface is created down and without addresses.
func OpenTUN(name string) (*TUNDevice, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("forward: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("forward: tun name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("forward: TUNSETIFF %q: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("forward: tun nonblock: %w", err)
	}
	ctl, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("forward: control socket: %w", err)
	}
	// A non-blocking fd gives a File on Go's poller: reads park the
	// goroutine, not a thread, and SetReadDeadline/Close unblock them.
	return &TUNDevice{f: os.NewFile(uintptr(fd), "tun:"+ifr.Name()), name: ifr.Name(), ctl: ctl}, nil
}

// Name is the interface name the kernel gave.
func (t *TUNDevice) Name() string { return t.name }

// ReadPacket reads one IP packet; a packet longer than buf is truncated.
func (t *TUNDevice) ReadPacket(buf []byte) (int, error) { return t.f.Read(buf) }

// WritePacket injects one IP packet into the interface's namespace, as if
// received on the interface.
func (t *TUNDevice) WritePacket(pkt []byte) error {
	_, err := t.f.Write(pkt)
	return err
}

// SetReadDeadline makes blocked and future reads fail after t (zero: never).
func (t *TUNDevice) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// SetMTU sets the interface MTU (the namespace is the one OpenTUN ran in).
func (t *TUNDevice) SetMTU(mtu int) error {
	return t.ifreqIoctl(unix.SIOCSIFMTU, uint32(mtu))
}

// SetTxQueueLen sets the interface's transmit queue length (as ip link set
// … txqueuelen); the default 500 drops packets at ≥ 500 Mbit/s.
func (t *TUNDevice) SetTxQueueLen(n int) error {
	return t.ifreqIoctl(unix.SIOCSIFTXQLEN, uint32(n))
}

func (t *TUNDevice) ifreqIoctl(req uint, v uint32) error {
	ifr, err := unix.NewIfreq(t.name)
	if err != nil {
		return err
	}
	ifr.SetUint32(v)
	if err := unix.IoctlIfreq(t.ctl, req, ifr); err != nil {
		return fmt.Errorf("forward: ioctl %#x on %s: %w", req, t.name, err)
	}
	return nil
}

// Close closes the device; the kernel then removes a non-persistent interface.
func (t *TUNDevice) Close() error {
	unix.Close(t.ctl)
	return t.f.Close()
}
