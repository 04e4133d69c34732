package relay

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/ratelimit"
)

var (
	t0     = time.Unix(1_700_000_000, 0)
	keyA   = [KeySize]byte{1, 2, 3}
	keyB   = [KeySize]byte{4, 5, 6}
	keyX   = [KeySize]byte{7, 7, 7}
	addrA  = netip.MustParseAddrPort("198.51.100.1:4000")
	addrB  = netip.MustParseAddrPort("203.0.113.2:5000")
	addrX  = netip.MustParseAddrPort("192.0.2.66:6000")
	addrA2 = netip.MustParseAddrPort("198.51.100.1:4999")
)

const testID AllocID = 0x1122334455667788

func bindMsg(id AllocID, counter uint64, key [KeySize]byte) []byte {
	return AppendMsg(nil, Msg{Kind: KindBind, ID: id, Counter: counter}, &key)
}

// sudpLike is a datagram shaped like SUDP data (type 0x04).
var sudpLike = append([]byte{0x04, 0}, bytes.Repeat([]byte{0xab}, 100)...)

// step is one datagram into the core and what must come out.
type step struct {
	at     time.Duration // after t0
	side   Side
	from   netip.AddrPort
	data   []byte
	id     AllocID // zero: testID
	kind   ActionKind
	reason Reason
	to     netip.AddrPort // for Forward and Reply
}

func TestCoreDecisions(t *testing.T) {
	bound := []step{ // both sides bound, the start of most scenarios
		{side: SideA, from: addrA, data: bindMsg(testID, 10, keyA), kind: Reply, to: addrA},
		{side: SideB, from: addrB, data: bindMsg(testID, 10, keyB), kind: Reply, to: addrB},
	}
	with := func(steps ...step) []step { return append(append([]step{}, bound...), steps...) }
	cases := []struct {
		name  string
		steps []step
	}{
		{"forward both ways", with(
			step{side: SideA, from: addrA, data: sudpLike, kind: Forward, to: addrB},
			step{side: SideB, from: addrB, data: sudpLike, kind: Forward, to: addrA},
		)},
		{"before any bind nothing passes", []step{
			{side: SideA, from: addrA, data: sudpLike, kind: Drop, reason: DropUnbound},
		}},
		{"peer not bound yet", []step{
			{side: SideA, from: addrA, data: bindMsg(testID, 1, keyA), kind: Reply, to: addrA},
			{side: SideA, from: addrA, data: sudpLike, kind: Drop, reason: DropPeerUnbound},
		}},
		{"third party cannot inject", with(
			step{side: SideA, from: addrX, data: sudpLike, kind: Drop, reason: DropUnbound},
			step{side: SideB, from: addrX, data: sudpLike, kind: Drop, reason: DropUnbound},
		)},
		{"A's address on B's port is not B", with(
			step{side: SideB, from: addrA, data: sudpLike, kind: Drop, reason: DropUnbound},
		)},
		{"bind with the wrong key refused", []step{
			{side: SideA, from: addrX, data: bindMsg(testID, 1, keyX), kind: Drop, reason: DropBindBadMAC},
			{side: SideA, from: addrX, data: sudpLike, kind: Drop, reason: DropUnbound},
		}},
		{"side B's key does not bind side A", []step{
			{side: SideA, from: addrX, data: bindMsg(testID, 1, keyB), kind: Drop, reason: DropBindBadMAC},
		}},
		{"bind for another allocation id refused", []step{
			{side: SideA, from: addrA, data: bindMsg(testID+1, 1, keyA), kind: Drop, reason: DropBindBadMAC},
		}},
		{"bind for an unknown allocation", []step{
			{id: testID + 1, side: SideA, from: addrA, data: bindMsg(testID+1, 1, keyA), kind: Drop, reason: DropNoAlloc},
		}},
		{"an ack is not a bind", []step{
			{side: SideA, from: addrA, data: AppendMsg(nil, Msg{Kind: KindAck, ID: testID, Counter: 1}, &keyA), kind: Drop, reason: DropBindMalformed},
		}},
		{"short bind malformed", []step{
			{side: SideA, from: addrA, data: bindMsg(testID, 1, keyA)[:MsgSize-1], kind: Drop, reason: DropBindMalformed},
		}},
		{"replayed bind from another address does not move the binding", with(
			step{side: SideA, from: addrX, data: bindMsg(testID, 10, keyA), kind: Drop, reason: DropBindReplay},
			step{side: SideA, from: addrX, data: sudpLike, kind: Drop, reason: DropUnbound},
			step{side: SideA, from: addrA, data: sudpLike, kind: Forward, to: addrB},
		)},
		{"older counter refused", with(
			step{side: SideA, from: addrA2, data: bindMsg(testID, 9, keyA), kind: Drop, reason: DropBindReplay},
		)},
		{"newer bind moves the binding (NAT rebinding)", with(
			step{side: SideA, from: addrA2, data: bindMsg(testID, 11, keyA), kind: Reply, to: addrA2},
			step{side: SideA, from: addrA, data: sudpLike, kind: Drop, reason: DropUnbound},
			step{side: SideA, from: addrA2, data: sudpLike, kind: Forward, to: addrB},
			step{side: SideB, from: addrB, data: sudpLike, kind: Forward, to: addrA2},
		)},
		{"relay datagrams from the bound address are never forwarded", with(
			step{side: SideA, from: addrA, data: append([]byte{Magic}, sudpLike[1:]...), kind: Drop, reason: DropBindMalformed},
			step{side: SideA, from: addrA, data: bindMsg(testID, 10, keyA), kind: Drop, reason: DropBindReplay},
		)},
		{"empty datagram from the bound address is forwarded (SUDP drops it)", with(
			step{side: SideA, from: addrA, data: []byte{}, kind: Forward, to: addrB},
		)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCore(t0, Limits{})
			if err := c.Allocate(t0, testID, &keyA, &keyB); err != nil {
				t.Fatal(err)
			}
			var want Stats
			for i, s := range tc.steps {
				id := s.id
				if id == 0 {
					id = testID
				}
				a := c.Handle(t0.Add(s.at), id, s.side, s.from, s.data)
				if a.Kind != s.kind || a.Reason != s.reason {
					t.Fatalf("step %d: got kind %d reason %v, want kind %d reason %v", i, a.Kind, a.Reason, s.kind, s.reason)
				}
				switch a.Kind {
				case Forward:
					want.ForwardedPackets++
					if a.To != s.to || a.Out != s.side.Other() {
						t.Fatalf("step %d: forward to %v out of %v, want %v out of %v", i, a.To, a.Out, s.to, s.side.Other())
					}
				case Reply:
					want.BindsAccepted++
					key := keyA
					if s.side == SideB {
						key = keyB
					}
					m, err := ParseMsg(a.Ack)
					if err != nil || m.Kind != KindAck || m.ID != testID || !VerifyMsg(a.Ack, &key) || a.To != s.to || a.Out != s.side {
						t.Fatalf("step %d: bad ack %x (%v) to %v out of %v", i, a.Ack, err, a.To, a.Out)
					}
					if c.Bound(testID, s.side) != s.from {
						t.Fatalf("step %d: side %v bound to %v, want %v", i, s.side, c.Bound(testID, s.side), s.from)
					}
				case Drop:
					want.Dropped[s.reason]++
				}
			}
			got := c.Stats()
			if got.ForwardedPackets != want.ForwardedPackets || got.BindsAccepted != want.BindsAccepted || got.Dropped != want.Dropped {
				t.Fatalf("stats %+v, want forwarded %d binds %d dropped %v", got, want.ForwardedPackets, want.BindsAccepted, want.Dropped)
			}
		})
	}
}

func bindBoth(t *testing.T, c *Core, now time.Time) {
	t.Helper()
	for _, s := range []struct {
		side Side
		from netip.AddrPort
		key  [KeySize]byte
	}{{SideA, addrA, keyA}, {SideB, addrB, keyB}} {
		if a := c.Handle(now, testID, s.side, s.from, bindMsg(testID, uint64(now.UnixNano()), s.key)); a.Kind != Reply {
			t.Fatalf("bind side %v: %+v", s.side, a)
		}
	}
}

func TestCoreAllocationCap(t *testing.T) {
	c := NewCore(t0, Limits{MaxAllocations: 2})
	for i := range 2 {
		if err := c.Allocate(t0, AllocID(i+1), &keyA, &keyB); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Allocate(t0, 3, &keyA, &keyB); err != ErrTooManyAllocations {
		t.Fatalf("third allocation: %v, want ErrTooManyAllocations", err)
	}
	if err := c.Allocate(t0, 1, &keyA, &keyB); err != ErrDuplicateID {
		t.Fatalf("duplicate id: %v", err)
	}
	if !c.Release(1) || c.Release(1) {
		t.Fatal("release twice")
	}
	if err := c.Allocate(t0, 3, &keyA, &keyB); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	s := c.Stats()
	if s.Allocations != 2 || s.AllocsCreated != 3 || s.AllocsRefused != 1 || s.AllocsReleased != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCoreReleaseZeroesKeys(t *testing.T) {
	c := NewCore(t0, Limits{})
	if err := c.Allocate(t0, testID, &keyA, &keyB); err != nil {
		t.Fatal(err)
	}
	a := c.allocs[testID]
	c.Release(testID)
	if a.keys != [2][KeySize]byte{} {
		t.Fatal("keys survive release")
	}
}

func TestCoreIdleExpiry(t *testing.T) {
	c := NewCore(t0, Limits{IdleTimeout: 10 * time.Second})
	if err := c.Allocate(t0, testID, &keyA, &keyB); err != nil {
		t.Fatal(err)
	}
	if err := c.Allocate(t0, testID+1, &keyA, &keyB); err != nil {
		t.Fatal(err)
	}
	bindBoth(t, c, t0.Add(5*time.Second))
	// Traffic keeps testID alive; refused datagrams do not.
	for s := 6; s <= 14; s++ {
		now := t0.Add(time.Duration(s) * time.Second)
		if a := c.Handle(now, testID, SideA, addrA, sudpLike); a.Kind != Forward {
			t.Fatalf("t=%d: %+v", s, a)
		}
		c.Handle(now, testID+1, SideA, addrX, sudpLike)
		got := c.Expire(now)
		if s != 10 && len(got) != 0 {
			t.Fatalf("t=%ds expired %v", s, got)
		}
		if s == 10 && (len(got) != 1 || got[0] != testID+1) {
			t.Fatalf("t=10s expired %v, want the idle allocation", got)
		}
	}
	if got := c.Expire(t0.Add(23 * time.Second)); len(got) != 0 {
		t.Fatalf("expired %v 9 s after the last forward", got)
	}
	if got := c.Expire(t0.Add(24 * time.Second)); len(got) != 1 || got[0] != testID {
		t.Fatalf("expired %v 10 s after the last forward", got)
	}
	if s := c.Stats(); s.AllocsExpired != 2 || s.Allocations != 0 {
		t.Fatalf("stats %+v", s)
	}
	if a := c.Handle(t0.Add(25*time.Second), testID, SideA, addrA, sudpLike); a.Reason != DropNoAlloc {
		t.Fatalf("after expiry: %+v", a)
	}
}

func TestCoreAllocationRate(t *testing.T) {
	// 100 packets a second, burst 100 ms: 10 back to back, then one per 10 ms.
	c := NewCore(t0, Limits{AllocPackets: 100, Burst: 100 * time.Millisecond})
	if err := c.Allocate(t0, testID, &keyA, &keyB); err != nil {
		t.Fatal(err)
	}
	bindBoth(t, c, t0)
	count := func(now time.Time, n int) (fwd int) {
		for range n {
			if c.Handle(now, testID, SideA, addrA, sudpLike).Kind == Forward {
				fwd++
			}
		}
		return fwd
	}
	if got := count(t0, 50); got != 10 {
		t.Fatalf("burst forwarded %d, want 10", got)
	}
	if got := count(t0.Add(100*time.Millisecond), 50); got != 10 {
		t.Fatalf("after 100 ms forwarded %d, want 10", got)
	}
	s := c.Stats()
	if s.Dropped[DropAllocRate] != 80 || s.Dropped[DropGlobalRate] != 0 {
		t.Fatalf("dropped %v", s.Dropped)
	}
	// Another allocation has its own bucket.
	if err := c.Allocate(t0, testID+1, &keyA, &keyB); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(100 * time.Millisecond)
	c.Handle(now, testID+1, SideA, addrA, bindMsg(testID+1, 1, keyA))
	c.Handle(now, testID+1, SideB, addrB, bindMsg(testID+1, 1, keyB))
	if a := c.Handle(now, testID+1, SideA, addrA, sudpLike); a.Kind != Forward {
		t.Fatalf("second allocation throttled by the first: %+v", a)
	}
}

func TestCoreByteRate(t *testing.T) {
	// 1 MB/s, burst 100 ms = 100 000 bytes; datagrams of 1000 bytes.
	c := NewCore(t0, Limits{AllocBytes: 1e6, Burst: 100 * time.Millisecond})
	if err := c.Allocate(t0, testID, &keyA, &keyB); err != nil {
		t.Fatal(err)
	}
	bindBoth(t, c, t0)
	d := make([]byte, 1000)
	fwd := 0
	for range 200 {
		if c.Handle(t0, testID, SideB, addrB, d).Kind == Forward {
			fwd++
		}
	}
	if fwd != 100 || c.Stats().Dropped[DropAllocRate] != 100 {
		t.Fatalf("forwarded %d, dropped %v", fwd, c.Stats().Dropped)
	}
}

func TestCoreGlobalRate(t *testing.T) {
	c := NewCore(t0, Limits{GlobalPackets: 100, Burst: 100 * time.Millisecond})
	for i := range 3 {
		id := testID + AllocID(i)
		if err := c.Allocate(t0, id, &keyA, &keyB); err != nil {
			t.Fatal(err)
		}
		c.Handle(t0, id, SideA, addrA, bindMsg(id, 1, keyA))
		c.Handle(t0, id, SideB, addrB, bindMsg(id, 1, keyB))
	}
	fwd := 0
	for range 10 {
		for i := range 3 {
			if c.Handle(t0, testID+AllocID(i), SideA, addrA, sudpLike).Kind == Forward {
				fwd++
			}
		}
	}
	if fwd != 10 || c.Stats().Dropped[DropGlobalRate] != 20 {
		t.Fatalf("forwarded %d, dropped %v", fwd, c.Stats().Dropped)
	}
}

func TestCoreBindRatePerSource(t *testing.T) {
	c := NewCore(t0, Limits{Bind: ratelimit.Config{Rate: 1, Burst: 3}})
	if err := c.Allocate(t0, testID, &keyA, &keyB); err != nil {
		t.Fatal(err)
	}
	// A flood of forged binds from X spends X's budget before any MAC work…
	for i := range 10 {
		c.Handle(t0, testID, SideA, addrX, bindMsg(testID, uint64(i+1), keyX))
	}
	s := c.Stats()
	if s.Dropped[DropBindBadMAC] != 3 || s.Dropped[DropBindRate] != 7 {
		t.Fatalf("dropped %v", s.Dropped)
	}
	// …and not A's: A (another address) still binds.
	if a := c.Handle(t0, testID, SideA, addrA, bindMsg(testID, 1, keyA)); a.Kind != Reply {
		t.Fatalf("A's bind: %+v", a)
	}
}
