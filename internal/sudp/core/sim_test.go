package core

import (
	"bytes"
	"container/heap"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/ferry-vm/ferry/internal/sudp/handshake"
)

// The simulation runs two sans-I/O endpoints over an emulated network with a
// virtual clock: every run is a pure function of its seed, so a failure is
// reproduced by its seed alone, and thousands of lossy seconds run in
// milliseconds of CPU.

type link struct {
	delay   time.Duration
	jitter  time.Duration // uniform extra delay: reorders packets
	loss    float64
	dup     float64
	corrupt float64
	rate    float64 // bottleneck bits/s per direction (0: none)
	queue   int     // drop-tail bytes in front of the bottleneck
}

type inflight struct {
	at   time.Time
	seq  uint64
	to   int // 0 client, 1 server
	from netip.AddrPort
	data []byte
}

type eventQ []*inflight

func (q eventQ) Len() int { return len(q) }
func (q eventQ) Less(i, j int) bool {
	if q[i].at.Equal(q[j].at) {
		return q[i].seq < q[j].seq
	}
	return q[i].at.Before(q[j].at)
}
func (q eventQ) Swap(i, j int)   { q[i], q[j] = q[j], q[i] }
func (q *eventQ) Push(x any)     { *q = append(*q, x.(*inflight)) }
func (q *eventQ) Pop() any       { o := *q; x := o[len(o)-1]; *q = o[:len(o)-1]; return x }
func (q eventQ) peek() *inflight { return q[0] }

type sim struct {
	t       testing.TB
	rng     *rand.Rand
	now     time.Time
	link    link
	q       eventQ
	seq     uint64
	addr    [2]netip.AddrPort
	ep      [2]*Endpoint
	conn    [2]*Conn
	buf     []byte
	sent    int
	dropped int
	// bottleneck state per direction (index = receiving side)
	busyUntil [2]time.Time
	// hooks for bulkTransfer: after opening its stream, after each step
	beforeWrite func(id uint64)
	onStep      func()
	// drop, if set, decides whether a packet from side `from` is lost.
	drop func(from int) bool
	// onSend, if set, sees every datagram a side sends, before the link.
	onSend func(side int, b []byte)
	// dropPkt, if set, decides whether a given packet from side `from` is lost.
	dropPkt func(from int, b []byte) bool
}

type chachaReader struct{ r *rand.ChaCha8 }

func (c chachaReader) Read(p []byte) (int, error) { return c.r.Read(p) }

func seededKey(t testing.TB, rng *rand.ChaCha8) noise.DHKey {
	k, err := handshake.GenerateKeypair(chachaReader{rng})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newSim(t testing.TB, seed uint64, l link, cfg Config) *sim {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	cr := rand.NewChaCha8(s)
	s2 := s
	s2[31] = 1
	cr2 := rand.NewChaCha8(s2)
	psk := [32]byte{1, 2, 3}
	serverKey := seededKey(t, cr)
	clientKey := seededKey(t, cr2)
	var clientPub [32]byte
	copy(clientPub[:], clientKey.Public)
	sm := &sim{
		t:    t,
		rng:  rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		now:  time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		link: l,
		addr: [2]netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:4000"), netip.MustParseAddrPort("198.18.1.1:7946")},
		buf:  make([]byte, 2048),
	}
	srv, err := NewEndpoint(EndpointConfig{
		Static: serverKey, ClusterID: "sim", Conn: cfg, Rand: chachaReader{cr},
		Lookup: func(peer [32]byte) (handshake.Peer, error) {
			if peer != clientPub {
				return handshake.Peer{}, fmt.Errorf("unknown")
			}
			return handshake.Peer{ID: "client", PSK: psk, Allowed: true, LoginState: 1}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := NewEndpoint(EndpointConfig{Static: clientKey, ClusterID: "sim", Conn: cfg, Rand: chachaReader{cr2}})
	if err != nil {
		t.Fatal(err)
	}
	sm.ep = [2]*Endpoint{cli, srv}
	var serverPub [32]byte
	copy(serverPub[:], serverKey.Public)
	c, err := cli.Connect(sm.now, sm.addr[1], serverPub, psk)
	if err != nil {
		t.Fatal(err)
	}
	sm.conn[0] = c
	return sm
}

// handshakeSim returns a simulation whose handshake has completed and been
// confirmed by the server.
func handshakeSim(t testing.TB, seed uint64, l link, cfg Config) *sim {
	t.Helper()
	s := newSim(t, seed, l, cfg)
	for i := 0; i < 10000 && (s.conn[1] == nil || !s.conn[1].Confirmed()); i++ {
		s.step()
	}
	if s.conn[1] == nil || !s.conn[1].Confirmed() {
		t.Fatal("handshake did not complete")
	}
	return s
}

// transmit drains both sides' output onto the link.
func (s *sim) transmit() {
	for side := 0; side < 2; side++ {
		c := s.conn[side]
		if c == nil {
			continue
		}
		for i := 0; i < 10000; i++ {
			n, to, ok := c.PollTransmit(s.now, s.buf)
			if !ok {
				break
			}
			if to != s.addr[1-side] {
				s.t.Fatalf("side %d sent to %v", side, to)
			}
			if s.onSend != nil {
				s.onSend(side, s.buf[:n])
			}
			s.send(1-side, s.addr[side], s.buf[:n])
		}
	}
}

func (s *sim) send(to int, from netip.AddrPort, b []byte) {
	s.sent++
	if (s.drop != nil && s.drop(1-to)) || (s.dropPkt != nil && s.dropPkt(1-to, b)) {
		s.dropped++
		return
	}
	depart := s.now
	if s.link.rate > 0 {
		// Drop-tail queue in front of a serialising bottleneck; loss
		// applies after it (a lost packet still used its slot).
		start := s.busyUntil[to]
		if start.Before(s.now) {
			start = s.now
		}
		backlog := float64(start.Sub(s.now)) / float64(time.Second) * s.link.rate / 8
		if s.link.queue > 0 && int(backlog)+len(b) > s.link.queue {
			s.dropped++
			return
		}
		depart = start.Add(time.Duration(float64(len(b)*8) / s.link.rate * float64(time.Second)))
		s.busyUntil[to] = depart
	}
	if s.rng.Float64() < s.link.loss {
		s.dropped++
		return
	}
	copies := 1
	if s.rng.Float64() < s.link.dup {
		copies = 2
	}
	for i := 0; i < copies; i++ {
		d := append([]byte(nil), b...)
		if s.rng.Float64() < s.link.corrupt {
			bit := s.rng.IntN(len(d) * 8)
			d[bit/8] ^= 1 << (bit % 8)
		}
		at := depart.Add(s.link.delay)
		if s.link.jitter > 0 {
			at = at.Add(time.Duration(s.rng.Int64N(int64(s.link.jitter))))
		}
		s.seq++
		heap.Push(&s.q, &inflight{at: at, seq: s.seq, to: to, from: from, data: d})
	}
}

func (s *sim) deliver(p *inflight) {
	ep := s.ep[p.to]
	c, initiation := ep.Route(p.data)
	if initiation {
		reply, nc, _, err := ep.HandleInitiation(s.now, p.from, p.data)
		if reply != nil {
			s.send(1-p.to, s.addr[p.to], reply)
		}
		if err == nil && nc != nil {
			s.conn[p.to] = nc
		}
		return
	}
	if c != nil {
		c.HandleDatagram(s.now, p.from, p.data)
		if c.Confirmed() {
			ep.Confirmed(c)
		}
	}
}

// step advances to the next event (packet arrival or timer) and processes it.
func (s *sim) step() bool {
	next := time.Time{}
	for _, c := range s.conn {
		if c == nil {
			continue
		}
		if t := c.NextTimeout(); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
		if c.WantsToSend() {
			if d := c.PacingDelay(s.now); d > 0 {
				if t := s.now.Add(d); next.IsZero() || t.Before(next) {
					next = t
				}
			}
		}
	}
	if len(s.q) > 0 && (next.IsZero() || !s.q.peek().at.After(next)) {
		p := heap.Pop(&s.q).(*inflight)
		if p.at.After(s.now) {
			s.now = p.at
		}
		s.deliver(p)
	} else if !next.IsZero() {
		if next.After(s.now) {
			s.now = next
		} else {
			s.now = s.now.Add(time.Microsecond)
		}
		for _, c := range s.conn {
			if c != nil {
				if t := c.NextTimeout(); !t.IsZero() && !s.now.Before(t) {
					c.HandleTimeout(s.now)
				}
			}
		}
	} else {
		return false
	}
	s.transmit()
	return true
}

// message builds a self-checking message: id, length, payload, SHA-256.
func makeMessage(rng *rand.Rand, id uint64, size int) []byte {
	m := make([]byte, 16+size+32)
	binary.BigEndian.PutUint64(m, id)
	binary.BigEndian.PutUint64(m[8:], uint64(size))
	for i := 16; i < 16+size; i++ {
		m[i] = byte(rng.Uint32())
	}
	sum := sha256.Sum256(m[:16+size])
	copy(m[16+size:], sum[:])
	return m
}

func checkMessage(m []byte) (uint64, error) {
	if len(m) < 48 {
		return 0, fmt.Errorf("message too short: %d", len(m))
	}
	size := binary.BigEndian.Uint64(m[8:])
	if uint64(len(m)) != 16+size+32 {
		return 0, fmt.Errorf("message length %d, header says %d", len(m), size)
	}
	sum := sha256.Sum256(m[:16+size])
	if !bytes.Equal(sum[:], m[16+size:]) {
		return 0, fmt.Errorf("checksum mismatch")
	}
	return binary.BigEndian.Uint64(m), nil
}

type simResult struct {
	simTime   time.Duration
	delivered int
	dgRecv    int
	stats     [2]ConnStats
}

// runTransfer sends nMsg reliable messages each way (as unidirectional
// streams) and nDg best-effort datagrams client→server, and checks that each
// reliable message arrives exactly once and intact, and that no best-effort
// one arrives corrupted or twice.
func runTransfer(t testing.TB, seed uint64, l link, nMsg, maxSize, nDg int) simResult {
	s := newSim(t, seed, l, Config{StreamWindow: 256 << 10, ConnWindow: 1 << 20, StreamSendBuffer: 256 << 10, IdleTimeout: 60 * time.Second})
	rng := rand.New(rand.NewPCG(seed, 7))
	type out struct {
		data []byte
		id   uint64
		off  int
		sid  uint64
		open bool
	}
	var pending [2][]*out
	for side := 0; side < 2; side++ {
		for i := 0; i < nMsg; i++ {
			size := rng.IntN(maxSize)
			if i%7 == 0 {
				size = rng.IntN(64)
			}
			id := uint64(side)<<32 | uint64(i)
			pending[side] = append(pending[side], &out{data: makeMessage(rng, id, size), id: id})
		}
	}
	recvd := [2]map[uint64]bool{{}, {}}
	partial := [2]map[uint64][]byte{{}, {}}
	dgSeen := map[uint64]bool{}
	dgSent := 0
	buf := make([]byte, 64<<10)
	deadline := s.now.Add(10 * time.Minute)

	for steps := 0; ; steps++ {
		if !s.now.Before(deadline) || steps > 5_000_000 {
			t.Fatalf("seed %d: not done by %v (client %d/%d, server %d/%d messages)", seed,
				s.now.Sub(deadline.Add(-10*time.Minute)), len(recvd[0]), nMsg, len(recvd[1]), nMsg)
		}
		// Application activity on both sides.
		for side := 0; side < 2; side++ {
			c := s.conn[side]
			if c == nil || !c.Established() {
				continue
			}
			if err := c.Err(); err != nil {
				t.Fatalf("seed %d side %d: connection failed: %v", seed, side, err)
			}
			// Writers: up to 4 messages open at once.
			active := 0
			for _, o := range pending[side] {
				if active >= 4 {
					break
				}
				if !o.open {
					id, err := c.OpenStream(true, Priority(o.id%3))
					if err == ErrStreamLimit {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					o.sid, o.open = id, true
				}
				active++
				n, err := c.StreamWrite(o.sid, o.data[o.off:])
				if err != nil {
					t.Fatalf("write: %v", err)
				}
				o.off += n
			}
			kept := pending[side][:0]
			for _, o := range pending[side] {
				if o.open && o.off == len(o.data) {
					if err := c.StreamCloseWrite(o.sid); err != nil {
						t.Fatal(err)
					}
					continue
				}
				kept = append(kept, o)
			}
			pending[side] = kept
			if side == 0 && dgSent < nDg && c.Established() {
				d := makeMessage(rng, uint64(dgSent), rng.IntN(5000))
				if err := c.SendDatagram(d, PriorityControl); err != nil {
					t.Fatal(err)
				}
				dgSent++
			}
			// Readers: accept and drain every incoming message.
			for {
				id, ok := c.AcceptStream(true)
				if !ok {
					break
				}
				partial[side][id] = []byte{}
			}
			for id, got := range partial[side] {
				for {
					n, fin, err := c.StreamRead(id, buf)
					if err != nil {
						t.Fatalf("seed %d: read: %v", seed, err)
					}
					got = append(got, buf[:n]...)
					if fin {
						mid, err := checkMessage(got)
						if err != nil {
							t.Fatalf("seed %d: reliable message corrupted: %v", seed, err)
						}
						if recvd[side][mid] {
							t.Fatalf("seed %d: message %x delivered twice", seed, mid)
						}
						recvd[side][mid] = true
						delete(partial[side], id)
						break
					}
					if n == 0 {
						partial[side][id] = got
						break
					}
				}
			}
			for {
				d, ok := c.RecvDatagram()
				if !ok {
					break
				}
				mid, err := checkMessage(d)
				if err != nil {
					t.Fatalf("seed %d: best-effort message corrupted: %v", seed, err)
				}
				if dgSeen[mid] {
					t.Fatalf("seed %d: datagram %d delivered twice", seed, mid)
				}
				dgSeen[mid] = true
			}
		}
		if len(recvd[0]) == nMsg && len(recvd[1]) == nMsg {
			break
		}
		s.transmit()
		if !s.step() {
			t.Fatalf("seed %d: simulation stalled with nothing scheduled", seed)
		}
	}
	// Once the work is done the connection must go quiet: only ACKs owed
	// and keepalives, no ACK ping-pong.
	sent := s.conn[0].Stats().PacketsSent + s.conn[1].Stats().PacketsSent
	quietUntil := s.now.Add(5 * time.Second)
	for s.now.Before(quietUntil) && s.step() {
	}
	extra := s.conn[0].Stats().PacketsSent + s.conn[1].Stats().PacketsSent - sent
	if testing.Verbose() {
		t.Logf("seed %d: %d packets in idle phase", seed, extra)
	}
	if extra > 200 {
		t.Fatalf("seed %d: %d packets sent in 5 s of idle time", seed, extra)
	}
	return simResult{simTime: s.now.Sub(deadline.Add(-10 * time.Minute)), delivered: 2 * nMsg, dgRecv: len(dgSeen),
		stats: [2]ConnStats{s.conn[0].Stats(), s.conn[1].Stats()}}
}

func TestSimulatedTransfers(t *testing.T) {
	seeds := 200
	if testing.Short() {
		seeds = 15
	}
	type scenario struct {
		name string
		link link
	}
	var scenarios []scenario
	for i := 0; i < seeds; i++ {
		loss := float64(i%7) * 0.05 // 0 … 30 %
		l := link{delay: time.Duration(5+i%4*20) * time.Millisecond, loss: loss}
		switch i % 4 {
		case 1:
			l.jitter = 10 * time.Millisecond
		case 2:
			l.dup = 0.05
			l.jitter = 2 * time.Millisecond
		case 3:
			l.corrupt = 0.03
			l.dup = 0.02
			l.jitter = 5 * time.Millisecond
		}
		scenarios = append(scenarios, scenario{fmt.Sprintf("seed%d_loss%.0f%%", i, loss*100), l})
	}
	for i, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			r := runTransfer(t, uint64(i)+1, sc.link, 12, 40_000, 20)
			if sc.link.loss == 0 && sc.link.corrupt == 0 && r.dgRecv != 20 {
				t.Errorf("lossless link lost best-effort messages: %d/20", r.dgRecv)
			}
			if sc.link.corrupt > 0 && r.stats[0].DroppedAuth+r.stats[1].DroppedAuth == 0 {
				t.Errorf("corruption injected but no packet failed authentication")
			}
		})
	}
}

// BenchmarkSimulatedLossyTransfer reports how fast the simulator runs a
// lossy scenario (the test above runs many of them).
func BenchmarkSimulatedLossyTransfer(b *testing.B) {
	for i := 0; b.Loop(); i++ {
		runTransfer(b, uint64(i), link{delay: 20 * time.Millisecond, loss: 0.1, jitter: 5 * time.Millisecond}, 8, 20_000, 5)
	}
}

func TestSimulatedTransferReport(t *testing.T) {
	for _, loss := range []float64{0, 0.1, 0.3} {
		r := runTransfer(t, 42, link{delay: 25 * time.Millisecond, loss: loss, jitter: 5 * time.Millisecond}, 12, 40_000, 20)
		t.Logf("loss %.0f%%: sim time %v, client sent %d pkts lost %d retx %d B, server drops auth=%d replay=%d, datagrams %d/20",
			loss*100, r.simTime, r.stats[0].PacketsSent, r.stats[0].PacketsLost, r.stats[0].RetransmittedBytes,
			r.stats[1].DroppedAuth, r.stats[1].DroppedReplay, r.dgRecv)
	}
}
