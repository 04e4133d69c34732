// Package socket is SUDP's UDP I/O: batched receive (recvmmsg) with generic
// receive offload (UDP_GRO), and batched send with generic segmentation
// offload (UDP_SEGMENT), falling back to sendmmsg where the kernel refuses
// offload. It moves datagrams and knows nothing of the protocol.
package socket

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Sizes of the batch I/O.
const (
	// MaxSegments is the most datagrams one GSO send carries (the kernel
	// allows 64; 64 KiB of total payload is the tighter bound).
	MaxSegments = 64
	maxGSOBytes = 65000
	// ReadBatch is how many receive buffers one recvmmsg fills.
	ReadBatch = 16
	// recvBufSize holds a whole GRO super-datagram.
	recvBufSize = 65536
	sockBufSize = 16 << 20
)

// Conn is a UDP socket with batched I/O.
type Conn struct {
	udp  *net.UDPConn
	raw  syscall.RawConn
	v4   *ipv4.PacketConn
	v6   *ipv6.PacketConn
	is6  bool
	gso  atomic.Bool
	gro  bool
	rmsg []ipv4.Message // used only by the single reader
}

// Listen opens a UDP socket on addr ("host:port").
func Listen(addr string) (*Conn, error) { return listen(addr, false) }

// ListenSmall opens a socket for a low-rate endpoint: no receive offload,
// and a few datagram-sized receive buffers instead of 1 MiB of GRO buffers
// (for processes that hold thousands of endpoints, like a load generator).
func ListenSmall(addr string) (*Conn, error) { return listen(addr, true) }

func listen(addr string, small bool) (*Conn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	network := "udp4"
	if ua.IP != nil && ua.IP.To4() == nil {
		network = "udp6"
	}
	u, err := net.ListenUDP(network, ua)
	if err != nil {
		return nil, err
	}
	c := &Conn{udp: u, is6: network == "udp6"}
	if c.raw, err = u.SyscallConn(); err != nil {
		u.Close()
		return nil, err
	}
	if c.is6 {
		c.v6 = ipv6.NewPacketConn(u)
	} else {
		c.v4 = ipv4.NewPacketConn(u)
	}
	c.setBuffers()
	c.gso.Store(c.sockoptInt(unix.IPPROTO_UDP, unix.UDP_SEGMENT, 0) == nil)
	batch, size := ReadBatch, recvBufSize
	if small {
		batch, size = 2, 2048
	} else {
		c.gro = c.sockoptInt(unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	}
	c.rmsg = make([]ipv4.Message, batch)
	for i := range c.rmsg {
		c.rmsg[i].Buffers = [][]byte{make([]byte, size)}
		c.rmsg[i].OOB = make([]byte, unix.CmsgSpace(4))
	}
	return c, nil
}

// setBuffers asks for large socket buffers; as root SO_*BUFFORCE passes the
// sysctl limit (rmem_max is 4 MiB on the lab machines), else the normal
// option gets what the limit allows.
func (c *Conn) setBuffers() {
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if c.sockoptInt(unix.SOL_SOCKET, o[0], sockBufSize) != nil {
			_ = c.sockoptInt(unix.SOL_SOCKET, o[1], sockBufSize)
		}
	}
}

func (c *Conn) sockoptInt(level, opt, v int) error {
	var serr error
	err := c.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), level, opt, v)
	})
	if err != nil {
		return err
	}
	return serr
}

// LocalAddr is the bound address.
func (c *Conn) LocalAddr() netip.AddrPort {
	return c.udp.LocalAddr().(*net.UDPAddr).AddrPort()
}

// GSO reports whether segmentation offload is in use.
func (c *Conn) GSO() bool { return c.gso.Load() }

// Close closes the socket, unblocking a pending Read.
func (c *Conn) Close() error { return c.udp.Close() }

// Datagram is one received datagram; Data aliases a receive buffer that is
// valid until the next Read.
type Datagram struct {
	From netip.AddrPort
	Data []byte
}

// Read blocks for at least one datagram and appends what one recvmmsg
// returned to out, splitting GRO super-datagrams into their segments.
func (c *Conn) Read(out []Datagram) ([]Datagram, error) {
	var n int
	var err error
	if c.is6 {
		n, err = c.v6.ReadBatch(c.rmsg, 0)
	} else {
		n, err = c.v4.ReadBatch(c.rmsg, 0)
	}
	if err != nil {
		return out, err
	}
	for i := 0; i < n; i++ {
		m := &c.rmsg[i]
		ua, ok := m.Addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		from := ua.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		data := m.Buffers[0][:m.N]
		seg := groSegment(m.OOB[:m.NN])
		if seg <= 0 || seg >= len(data) {
			out = append(out, Datagram{From: from, Data: data})
			continue
		}
		for len(data) > 0 {
			k := min(seg, len(data))
			out = append(out, Datagram{From: from, Data: data[:k:k]})
			data = data[k:]
		}
	}
	return out, nil
}

// groSegment finds the UDP_GRO segment size in a control message buffer,
// walking the cmsg headers in place (ParseSocketControlMessage allocates).
func groSegment(oob []byte) int {
	for len(oob) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(*(*int32)(unsafePointer(&oob[unix.CmsgLen(0)])))
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}

// Batch collects datagrams to one destination for a single send.
type Batch struct {
	To    netip.AddrPort
	buf   []byte
	sizes []int
	msgs  []ipv4.Message // sendmmsg scratch: a Batch is owned by one goroutine
	oob   []byte         // UDP_SEGMENT control message
	sa    unix.Sockaddr  // cached destination
	saFor netip.AddrPort
}

// NewBatch allocates a batch able to hold MaxSegments datagrams of up to
// maxSize bytes each.
func NewBatch(maxSize int) *Batch {
	return &Batch{buf: make([]byte, 0, MaxSegments*maxSize), sizes: make([]int, 0, MaxSegments)}
}

// MaxSize is the datagram size the batch was made for.
func (b *Batch) MaxSize() int { return cap(b.buf) / MaxSegments }

// Next returns the buffer to write the next datagram into.
func (b *Batch) Next(maxSize int) []byte {
	off := len(b.buf)
	return b.buf[off : off+maxSize]
}

// Commit records that n bytes were written to the buffer Next returned.
func (b *Batch) Commit(n int) {
	b.buf = b.buf[:len(b.buf)+n]
	b.sizes = append(b.sizes, n)
}

// Len is the number of datagrams in the batch.
func (b *Batch) Len() int { return len(b.sizes) }

// Full reports whether another datagram of maxSize may not fit.
func (b *Batch) Full(maxSize int) bool {
	return len(b.sizes) >= MaxSegments || len(b.buf)+maxSize > cap(b.buf) || len(b.buf)+maxSize > maxGSOBytes
}

// Reset empties the batch.
func (b *Batch) Reset() {
	b.buf = b.buf[:0]
	b.sizes = b.sizes[:0]
}

// Send writes every datagram of the batch to b.To. With GSO the leading
// run of equal-sized datagrams (plus one shorter tail) goes in one sendmsg.
func (c *Conn) Send(b *Batch) error {
	if len(b.sizes) == 0 {
		return nil
	}
	off := 0
	i := 0
	for i < len(b.sizes) {
		if c.gso.Load() && len(b.sizes)-i > 1 {
			seg := b.sizes[i]
			j := i + 1
			total := seg
			for j < len(b.sizes) && b.sizes[j] <= seg {
				total += b.sizes[j]
				j++
				if b.sizes[j-1] < seg {
					break // a shorter segment must be the last
				}
			}
			if j-i > 1 {
				err := c.sendGSO(b, b.buf[off:off+total], seg)
				if err == nil {
					off += total
					i = j
					continue
				}
				if !isGSOUnsupported(err) {
					return err
				}
				c.gso.Store(false)
			}
		}
		// Plain path: sendmmsg of the remaining datagrams.
		n, err := c.sendMany(b, b.buf[off:], b.sizes[i:])
		if err != nil {
			return err
		}
		for k := 0; k < n; k++ {
			off += b.sizes[i+k]
		}
		i += n
	}
	return nil
}

func isGSOUnsupported(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP)
}

func (c *Conn) sendGSO(b *Batch, data []byte, seg int) error {
	if len(b.oob) == 0 {
		b.oob = make([]byte, unix.CmsgSpace(2))
	}
	oob := b.oob
	h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafePointer(&oob[unix.CmsgLen(0)])) = uint16(seg)
	if b.sa == nil || b.saFor != b.To {
		b.sa, b.saFor = c.sockaddr(b.To), b.To
	}
	sa := b.sa
	var serr error
	err := c.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), data, oob, sa, 0)
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("socket: sendmsg gso: %w", serr)
	}
	return nil
}

func (c *Conn) sockaddr(to netip.AddrPort) unix.Sockaddr {
	if c.is6 {
		sa := &unix.SockaddrInet6{Port: int(to.Port())}
		sa.Addr = to.Addr().As16()
		return sa
	}
	sa := &unix.SockaddrInet4{Port: int(to.Port())}
	sa.Addr = to.Addr().Unmap().As4()
	return sa
}

func (c *Conn) sendMany(b *Batch, buf []byte, sizes []int) (int, error) {
	ua := net.UDPAddrFromAddrPort(b.To)
	msgs := b.msgs[:0]
	off := 0
	for _, s := range sizes {
		msgs = append(msgs, ipv4.Message{Buffers: [][]byte{buf[off : off+s]}, Addr: ua})
		off += s
	}
	b.msgs = msgs[:0]
	var n int
	var err error
	if c.is6 {
		n, err = c.v6.WriteBatch(msgs, 0)
	} else {
		n, err = c.v4.WriteBatch(msgs, 0)
	}
	if err != nil {
		return n, fmt.Errorf("socket: sendmmsg: %w", err)
	}
	if n == 0 {
		return 0, fmt.Errorf("socket: sendmmsg sent nothing")
	}
	return n, nil
}
