package core

import (
	"net/netip"
	"testing"
	"time"
)

// The largest datagram follows the path's address family: a 1500-byte
// MTU carries 1472 bytes of UDP payload on IPv4 and 1452 on IPv6; a
// configured size is kept (and still capped on IPv6).
func TestDatagramSizeByFamily(t *testing.T) {
	v4, v6 := netip.MustParseAddrPort("198.18.1.1:7946"), netip.MustParseAddrPort("[2001:db8::1]:7946")
	for _, tc := range []struct {
		cfg  int
		addr netip.AddrPort
		want int
	}{
		{0, v4, MaxDatagramSizeIPv4},
		{0, netip.MustParseAddrPort("[::ffff:198.18.1.1]:7946"), MaxDatagramSizeIPv4},
		{0, v6, MaxDatagramSizeIPv6},
		{1300, v4, 1300},
	} {
		c := newConn(Config{MaxDatagramSize: tc.cfg}, nil, time.Now(), true, 1, tc.addr)
		if c.cfg.MaxDatagramSize != tc.want {
			t.Errorf("MaxDatagramSize %d to %v: %d, want %d", tc.cfg, tc.addr, c.cfg.MaxDatagramSize, tc.want)
		}
	}

	// Bulk data over the simulated IPv4 path fills 1472-byte datagrams;
	// once the path is IPv6, none is larger than 1452.
	s := handshakeSim(t, 7, link{delay: 5 * time.Millisecond}, Config{})
	largest := [2]int{}
	moved := false
	s.onSend = func(side int, b []byte) {
		if side != 0 {
			return
		}
		i := 0
		if moved {
			i = 1
		}
		largest[i] = max(largest[i], len(b))
	}
	bulkTransfer(t, s, 1<<20)
	if largest[0] != MaxDatagramSizeIPv4 {
		t.Fatalf("largest datagram on IPv4: %d, want %d", largest[0], MaxDatagramSizeIPv4)
	}
	cli := s.conn[0]
	cli.path.addr = v6
	moved = true
	buf := make([]byte, 4096)
	id, err := cli.OpenStream(true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.StreamWrite(id, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		n, _, ok := cli.PollTransmit(s.now, buf)
		if !ok {
			break
		}
		largest[1] = max(largest[1], n)
	}
	if largest[1] == 0 || largest[1] > MaxDatagramSizeIPv6 {
		t.Fatalf("largest datagram on IPv6: %d, want 1..%d", largest[1], MaxDatagramSizeIPv6)
	}
}
