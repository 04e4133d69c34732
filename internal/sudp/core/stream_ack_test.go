package core

import "testing"

// A range acknowledged twice — in a retransmission and in its original,
// the second ACK arriving after the first released the range — must not
// stop the stream from finishing. Found with ACKs sent less often: the
// late copy's range sat below the released prefix and blocked every later
// release, and the stream was never freed.
func TestStreamAckOfReleasedRange(t *testing.T) {
	s := &stream{id: 4, maxSend: InitialStreamWindow}
	data := make([]byte, 200)
	s.sbuf.ensure(200)
	s.sbuf.write(0, data)
	s.written, s.sent, s.ss, s.finSent = 200, 200, sendFinQ, true

	s.onAcked(0, 184, false) // the retransmission of [0,184)
	s.onAcked(0, 64, false)  // the original's first packet, late
	s.onAcked(184, 16, true) // the rest, with the FIN
	if s.ss != sendDone {
		t.Fatalf("send side %v, released to %d, acked %v: want done", s.ss, s.sbuf.lo, s.acked)
	}
	if s.sbuf.lo != 200 {
		t.Fatalf("released to %d, want 200", s.sbuf.lo)
	}
}
