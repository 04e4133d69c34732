package link

import (
	"encoding/binary"
	"math"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// udpPacket builds an IPv4/UDP packet of size bytes carrying seq, with valid
// checksums.
func udpPacket(size int, seq uint32) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	p[8], p[9] = 64, 17
	copy(p[12:], []byte{198, 18, 0, 1, 198, 18, 0, 2})
	binary.BigEndian.PutUint16(p[10:], ^sum16(p[:20], 0))
	binary.BigEndian.PutUint16(p[20:], 4000)
	binary.BigEndian.PutUint16(p[22:], 5000)
	binary.BigEndian.PutUint16(p[24:], uint16(size-20))
	binary.BigEndian.PutUint32(p[28:], seq)
	for i := 32; i < size; i++ {
		p[i] = byte(i * 7)
	}
	binary.BigEndian.PutUint16(p[26:], udpChecksum(p))
	return p
}

func sum16(b []byte, s uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// udpChecksum computes the checksum with the checksum field taken as zero.
func udpChecksum(p []byte) uint16 {
	seg := append([]byte(nil), p[20:]...)
	seg[6], seg[7] = 0, 0
	var s uint32
	s += uint32(sum16(p[12:20], 0))
	s += 17 + uint32(len(seg))
	c := ^sum16(seg, s)
	if c == 0 {
		c = 0xffff
	}
	return c
}

func seqOf(p []byte) uint32 { return binary.BigEndian.Uint32(p[28:]) }

func mustNew(t testing.TB, cfg Config) *Link {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// drain runs the link in virtual time until it is empty, returning each
// delivered packet with its delivery time.
func drain(l *Link, fn func(at time.Time, p []byte)) {
	var out [][]byte
	for {
		next, ok := l.NextDelivery()
		if !ok {
			return
		}
		out = l.Dequeue(next, out[:0])
		for _, p := range out {
			fn(next, p)
		}
	}
}

func TestDelayExact(t *testing.T) {
	l := mustNew(t, Config{Delay: 25 * time.Millisecond})
	for i := range 100 {
		l.Enqueue(t0.Add(time.Duration(i)*time.Millisecond), udpPacket(100, uint32(i)))
	}
	n := 0
	drain(l, func(at time.Time, p []byte) {
		want := t0.Add(time.Duration(seqOf(p))*time.Millisecond + 25*time.Millisecond)
		if !at.Equal(want) || seqOf(p) != uint32(n) {
			t.Fatalf("packet %d (seq %d) at %v, want %v", n, seqOf(p), at.Sub(t0), want.Sub(t0))
		}
		n++
	})
	if n != 100 {
		t.Fatalf("delivered %d", n)
	}
	// Nothing is delivered a nanosecond early.
	l.Enqueue(t0.Add(time.Second), udpPacket(100, 0))
	if out := l.Dequeue(t0.Add(time.Second+25*time.Millisecond-1), nil); len(out) != 0 {
		t.Fatal("delivered early")
	}
}

func TestRateSpacing(t *testing.T) {
	l := mustNew(t, Config{Rate: 100e6, Delay: 5 * time.Millisecond, QueueBytes: 1 << 20})
	const n = 200
	for i := range n {
		l.Enqueue(t0, udpPacket(1500, uint32(i)))
	}
	var times []time.Time
	drain(l, func(at time.Time, p []byte) { times = append(times, at) })
	if len(times) != n {
		t.Fatalf("delivered %d", len(times))
	}
	for i, at := range times {
		want := t0.Add(5*time.Millisecond + time.Duration(i+1)*120*time.Microsecond)
		if !at.Equal(want) {
			t.Fatalf("packet %d at %v, want %v", i, at.Sub(t0), want.Sub(t0))
		}
	}
}

func TestQueueOverflow(t *testing.T) {
	l := mustNew(t, Config{Rate: 10e6, QueueBytes: 15000})
	for i := range 100 {
		l.Enqueue(t0, udpPacket(1500, uint32(i)))
		if s := l.Stats(); s.QueuedBytes > 15000 {
			t.Fatalf("queue %d bytes", s.QueuedBytes)
		}
	}
	s := l.Stats()
	if s.DroppedQueue != 90 || s.QueuedPackets != 10 || s.QueuedBytes != 15000 {
		t.Fatalf("stats %+v", s)
	}
	// After one packet time (1.2 ms) one slot is free again.
	l.Dequeue(t0.Add(1200*time.Microsecond), nil)
	l.Enqueue(t0.Add(1200*time.Microsecond), udpPacket(1500, 0))
	l.Enqueue(t0.Add(1200*time.Microsecond), udpPacket(1500, 0))
	if s := l.Stats(); s.DroppedQueue != 91 || s.QueuedBytes != 15000 {
		t.Fatalf("stats %+v", s)
	}
	drain(l, func(time.Time, []byte) {})
	s = l.Stats()
	if s.Enqueued != s.DroppedQueue+s.Delivered || s.QueuedPackets != 0 || s.InFlightPackets != 0 {
		t.Fatalf("conservation: %+v", s)
	}
}

func TestQueueLimitDefaults(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want int
	}{
		{Config{}, 0},
		{Config{Rate: 100e6}, 1250000},
		{Config{Rate: 1e6}, MinDefaultQueueBytes},
		{Config{Rate: 100e6, QueueDelay: 50 * time.Millisecond}, 625000},
		{Config{Rate: 100e6, QueueBytes: 1000}, 1000},
	} {
		if got := tc.cfg.QueueLimit(); got != tc.want {
			t.Errorf("%+v: limit %d, want %d", tc.cfg, got, tc.want)
		}
	}
}

// within4Sigma checks a binomial proportion.
func within4Sigma(t *testing.T, what string, k, n int, p float64) {
	t.Helper()
	got := float64(k) / float64(n)
	sigma := math.Sqrt(p * (1 - p) / float64(n))
	if math.Abs(got-p) > 4*sigma {
		t.Errorf("%s: %.5f, want %.5f ± %.5f", what, got, p, 4*sigma)
	}
}

func TestLossRate(t *testing.T) {
	const n = 100000
	for _, p := range []float64{0.01, 0.05, 0.15} {
		l := mustNew(t, Config{Loss: p, Rate: 1e9, Delay: time.Millisecond, Seed: 7})
		buf := udpPacket(1500, 0)
		delivered := 0
		for i := range n {
			now := t0.Add(time.Duration(i) * 20 * time.Microsecond)
			l.Enqueue(now, buf)
			delivered += len(l.Dequeue(now, nil))
		}
		drain(l, func(time.Time, []byte) { delivered++ })
		s := l.Stats()
		if int(s.DroppedLoss)+delivered != n || s.DroppedQueue != 0 {
			t.Fatalf("p=%v: %+v, delivered %d", p, s, delivered)
		}
		within4Sigma(t, "loss", int(s.DroppedLoss), n, p)
	}
}

func TestLossAfterBottleneck(t *testing.T) {
	// Cut link: every packet still occupies the bottleneck.
	l := mustNew(t, Config{Rate: 100e6, Loss: 1, QueueBytes: 1 << 20})
	for range 10 {
		l.Enqueue(t0, udpPacket(1500, 0))
	}
	if s := l.Stats(); s.QueuedPackets != 10 {
		t.Fatalf("%+v", s)
	}
	l.Dequeue(t0.Add(1200*time.Microsecond), nil)
	if s := l.Stats(); s.DroppedLoss != 10 || s.QueuedPackets != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestGilbertElliott(t *testing.T) {
	ge := &GilbertElliott{P: 0.01, R: 0.25, K: 0, H: 1}
	l := mustNew(t, Config{GE: ge, Loss: 0.5 /* overridden */, Seed: 3})
	const n = 200000
	var lostRun, bursts, lost int
	for i := range n {
		l.Enqueue(t0, udpPacket(64, uint32(i)))
		if len(l.Dequeue(t0, nil)) == 0 {
			lost++
			lostRun++
		} else if lostRun > 0 {
			bursts++
			lostRun = 0
		}
	}
	mean := float64(lost) / float64(bursts)
	if math.Abs(mean-1/ge.R) > 0.1/ge.R {
		t.Errorf("mean burst %.2f, want %.2f", mean, 1/ge.R)
	}
	if want := ge.LossRate(); math.Abs(float64(lost)/n-want) > 0.1*want {
		t.Errorf("loss %.4f, want %.4f", float64(lost)/n, want)
	}
	t.Logf("GE: loss %.4f (model %.4f), mean burst %.2f (1/R = %.2f)", float64(lost)/n, ge.LossRate(), mean, 1/ge.R)
}

func TestJitterKeepsOrder(t *testing.T) {
	d, j := 20*time.Millisecond, 5*time.Millisecond
	l := mustNew(t, Config{Delay: d, Jitter: j, Seed: 1})
	sent := map[uint32]time.Time{}
	for i := range 5000 {
		now := t0.Add(time.Duration(i) * 100 * time.Microsecond)
		sent[uint32(i)] = now
		l.Enqueue(now, udpPacket(100, uint32(i)))
	}
	var next uint32
	var minD, maxD time.Duration = time.Hour, 0
	drain(l, func(at time.Time, p []byte) {
		if seqOf(p) != next {
			t.Fatalf("got seq %d, want %d", seqOf(p), next)
		}
		next++
		dl := at.Sub(sent[seqOf(p)])
		minD, maxD = min(minD, dl), max(maxD, dl)
	})
	if next != 5000 || minD < d || maxD >= d+j {
		t.Fatalf("delivered %d, delay range [%v, %v]", next, minD, maxD)
	}
	// Sparse packets (spacing > jitter) see the whole uniform range.
	l = mustNew(t, Config{Delay: d, Jitter: j, Seed: 1})
	for i := range 1000 {
		l.Enqueue(t0.Add(time.Duration(i)*10*time.Millisecond), udpPacket(100, uint32(i)))
	}
	var sum time.Duration
	minD, maxD = time.Hour, 0
	drain(l, func(at time.Time, p []byte) {
		dl := at.Sub(t0.Add(time.Duration(seqOf(p)) * 10 * time.Millisecond))
		minD, maxD, sum = min(minD, dl), max(maxD, dl), sum+dl
	})
	mean := sum / 1000
	if minD < d || maxD >= d+j || maxD-minD < j*9/10 || mean < d+j/2-j/10 || mean > d+j/2+j/10 {
		t.Fatalf("sparse: delay range [%v, %v], mean %v", minD, maxD, mean)
	}
}

func TestReorder(t *testing.T) {
	const n, p = 50000, 0.05
	l := mustNew(t, Config{Delay: 10 * time.Millisecond, Reorder: p, ReorderDelay: time.Millisecond, Seed: 5})
	for i := range n {
		l.Enqueue(t0.Add(time.Duration(i)*100*time.Microsecond), udpPacket(100, uint32(i)))
	}
	var maxSeen uint32
	late, got := 0, 0
	drain(l, func(_ time.Time, p []byte) {
		s := seqOf(p)
		if got > 0 && s < maxSeen {
			late++
		}
		maxSeen = max(maxSeen, s)
		got++
	})
	if got != n {
		t.Fatalf("delivered %d", got)
	}
	within4Sigma(t, "reordered", late, n, p)
	if s := l.Stats(); int(s.Reordered) < late {
		t.Errorf("stats %+v, late %d", s, late)
	}
}

func TestDuplicateCorrupt(t *testing.T) {
	const n = 100000
	l := mustNew(t, Config{Duplicate: 0.02, Corrupt: 0.03, Seed: 9})
	bad, dupSeen := 0, 0
	var last uint32 = math.MaxUint32
	for i := range n {
		l.Enqueue(t0, udpPacket(200, uint32(i)))
		for _, p := range l.Dequeue(t0, nil) {
			if binary.BigEndian.Uint16(p[26:]) != udpChecksum(p) || ^sum16(p[:20], 0) != 0 {
				t.Fatalf("packet %d: checksum not fixed up", i)
			}
			if udpPacket(200, seqOf(p))[32] != p[32] || string(udpPacket(200, seqOf(p))) != string(p) {
				bad++
			}
			if seqOf(p) == last {
				dupSeen++
			}
			last = seqOf(p)
		}
	}
	s := l.Stats()
	within4Sigma(t, "duplicate", int(s.Duplicated), n, 0.02)
	within4Sigma(t, "corrupt", int(s.Corrupted), n, 0.03)
	if dupSeen != int(s.Duplicated) || s.Delivered != n+s.Duplicated {
		t.Errorf("duplicates seen %d, stats %+v", dupSeen, s)
	}
	// Corrupted packets whose duplicate is a copy count twice; a bit flip in
	// the seq field would hide one, so allow a small slack.
	if bad < int(s.Corrupted)*9/10 {
		t.Errorf("corrupted packets seen %d, counted %d", bad, s.Corrupted)
	}
}

func TestCorruptChecksumAllCases(t *testing.T) {
	l := mustNew(t, Config{Corrupt: 1})
	for size := 33; size < 80; size++ { // odd and even lengths, 5..51 payload bytes
		for i := range 50 {
			p := udpPacket(size, uint32(i))
			orig := string(p)
			l.Enqueue(t0, p)
			q := l.Dequeue(t0, nil)[0]
			if binary.BigEndian.Uint16(q[26:]) != udpChecksum(q) {
				t.Fatalf("size %d: bad checksum", size)
			}
			if string(q[:26]) != orig[:26] {
				t.Fatalf("size %d: header changed", size)
			}
		}
	}
	// No payload: untouched.
	p := udpPacket(32, 0)[:28]
	p[3] = 28
	l.Enqueue(t0, p)
	if l.Dequeue(t0, nil); l.Stats().Corrupted != 47*50 {
		t.Fatalf("corrupted %d", l.Stats().Corrupted)
	}
}

func TestSetConfigCut(t *testing.T) {
	l := mustNew(t, Config{Delay: 10 * time.Millisecond})
	l.Enqueue(t0, udpPacket(100, 0))
	if err := l.SetConfig(Config{Delay: 10 * time.Millisecond, Loss: 1}); err != nil {
		t.Fatal(err)
	}
	l.Enqueue(t0, udpPacket(100, 1))
	got := 0
	drain(l, func(time.Time, []byte) { got++ })
	if got != 1 || l.Stats().DroppedLoss != 1 {
		t.Fatalf("got %d, %+v", got, l.Stats())
	}
	if err := l.SetConfig(Config{Loss: 2}); err == nil {
		t.Fatal("loss 2 accepted")
	}
}

func TestValidate(t *testing.T) {
	bad := []Config{
		{Delay: -1}, {Loss: -0.1}, {Loss: math.NaN()}, {Rate: -1}, {Rate: math.Inf(1)},
		{QueueBytes: -1}, {Rate: 1e6, QueueBytes: 1000, QueueDelay: time.Millisecond},
		{GE: &GilbertElliott{P: 1.5}}, {Duplicate: 1.1},
	}
	for _, c := range bad {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

func TestDeterministic(t *testing.T) {
	run := func() []uint32 {
		l := mustNew(t, Config{Loss: 0.1, Jitter: time.Millisecond, Reorder: 0.1, Seed: 42})
		var got []uint32
		for i := range 2000 {
			l.Enqueue(t0.Add(time.Duration(i)*50*time.Microsecond), udpPacket(64, uint32(i)))
		}
		drain(l, func(_ time.Time, p []byte) { got = append(got, seqOf(p)) })
		return got
	}
	a, b := run(), run()
	if len(a) != len(b) {
		t.Fatal("different lengths")
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("different order")
		}
	}
}

func TestProfilesAndParse(t *testing.T) {
	for _, p := range Profiles() {
		c, err := ParseProfile(p.Name)
		if err != nil || c.Validate() != nil {
			t.Errorf("%s: %v", p.Name, err)
		}
	}
	if c, _ := ParseProfile("WAN"); c.Rate != 100e6 || c.Delay != 25*time.Millisecond || c.Loss != 0.01 {
		t.Errorf("wan %+v", c)
	}
	if _, err := ParseProfile("moon"); err == nil {
		t.Error("unknown profile accepted")
	}
	if r, err := ParseRate("100mbit"); err != nil || r != 100e6 {
		t.Errorf("rate %v %v", r, err)
	}
	if r, err := ParseRate("unlimited"); err != nil || r != 0 {
		t.Errorf("rate %v %v", r, err)
	}
	for in, want := range map[string]float64{"1%": 0.01, "0.5 %": 0.005, "0.02": 0.02, "0": 0, "100%": 1} {
		if got, err := ParseLoss(in); err != nil || math.Abs(got-want) > 1e-12 {
			t.Errorf("ParseLoss(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"101%", "-1%", "2", "x"} {
		if _, err := ParseLoss(in); err == nil {
			t.Errorf("ParseLoss(%q) accepted", in)
		}
	}
	if b, d, err := ParseQueue("64KiB"); err != nil || b != 65536 || d != 0 {
		t.Errorf("queue %v %v %v", b, d, err)
	}
	if b, d, err := ParseQueue("50ms"); err != nil || b != 0 || d != 50*time.Millisecond {
		t.Errorf("queue %v %v %v", b, d, err)
	}
	if _, _, err := ParseQueue("lots"); err == nil {
		t.Error("queue lots accepted")
	}
}

// steady runs a pooled link with all features on, at 1 Gbit/s.
type steady struct {
	l    *Link
	free [][]byte
	out  [][]byte
	now  time.Time
}

func newSteady(t testing.TB) *steady {
	s := &steady{now: t0}
	s.l = mustNew(t, Config{Rate: 1e9, Delay: 10 * time.Millisecond, Jitter: 100 * time.Microsecond,
		Loss: 0.01, Reorder: 0.01, Duplicate: 0.01, Corrupt: 0.01})
	s.l.SetBuffers(s.get, func(b []byte) { s.free = append(s.free, b) })
	return s
}

func (s *steady) get(n int) []byte {
	if k := len(s.free); k > 0 {
		b := s.free[k-1]
		s.free = s.free[:k-1]
		return b[:n]
	}
	return make([]byte, n, 1500)
}

func (s *steady) step() {
	p := s.get(1500)
	p[0] = 0x45
	p[9] = 17
	s.l.Enqueue(s.now, p)
	s.now = s.now.Add(12 * time.Microsecond)
	s.out = s.l.Dequeue(s.now, s.out[:0])
	s.free = append(s.free, s.out...)
}

func TestZeroAllocSteadyState(t *testing.T) {
	s := newSteady(t)
	for range 20000 {
		s.step()
	}
	if a := testing.AllocsPerRun(10000, s.step); a != 0 {
		t.Fatalf("%v allocations per packet", a)
	}
}

func BenchmarkLink(b *testing.B) {
	s := newSteady(b)
	for range 20000 {
		s.step()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.step()
	}
}
