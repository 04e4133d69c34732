package core

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp/wire"
)

// cookieRetryMin is the least time between two initiations sent at once
// on a cookie reply.
const cookieRetryMin = 500 * time.Millisecond

// HandleDatagram processes one datagram the endpoint routed to this
// connection. pkt is decrypted in place and must not be used afterwards.
// Invalid input is counted and dropped; it never changes state.
func (c *Conn) HandleDatagram(now time.Time, from netip.AddrPort, pkt []byte) {
	if c.state == stateClosed || len(pkt) == 0 {
		return
	}
	switch pkt[0] {
	case wire.TypeResponse:
		c.handleResponse(now, pkt)
		return
	case wire.TypeCookieReply:
		if c.state == stateHandshake {
			if err := c.init.HandleCookieReply(now, pkt); err != nil {
				c.stats.DroppedAuth++
				return
			}
			// Retry at once with the cookie in mac2 — once per
			// cookieRetryMin: a reply can be made by anyone who saw the
			// initiation (its key and associated data are public), and
			// each retry costs a fresh ephemeral and its Diffie–Hellman
			// work. The cookie is kept for the next retransmission.
			if now.Before(c.hsCookieRetry) {
				return
			}
			c.hsCookieRetry = now.Add(cookieRetryMin)
			c.hsBackoff = 500 * time.Millisecond
			c.hsLast = nil // the retry carries the cookie: a fresh initiation
			if err := c.sendInitiation(now); err != nil {
				c.stats.DroppedAuth++
			}
		}
		return
	case wire.TypeRekey:
		c.handleRekey(now, from, pkt)
		return
	case wire.TypeData:
	default:
		if !wire.IsShort(pkt[0]) {
			c.stats.DroppedMalformed++
			return
		}
	}
	if c.state == stateHandshake {
		c.stats.DroppedAuth++
		return
	}
	h, err := wire.ParseHeader(pkt)
	if err != nil || !h.Names(c.localCID) {
		if c.statelessReset(pkt) {
			return
		}
		c.stats.DroppedMalformed++
		return
	}
	if h.Short {
		// The full number, which the nonce uses: a wrong recovery (or a
		// forged truncation) fails authentication.
		h.PN = wire.DecodePN(h.PN, h.PNLen, c.replay.Largest())
	}
	if !c.replay.Check(h.PN) {
		c.stats.DroppedReplay++
		return
	}
	k, payload := c.openPacket(h, pkt)
	if k == nil {
		c.stats.DroppedAuth++
		return
	}
	if !c.replay.Accept(h.PN) {
		c.stats.DroppedReplay++
		return
	}
	if k != c.recvCur && k != c.recvPrev {
		c.promoteRecvKey(now, h.PN, k)
	}
	if k == c.recvCur && now.Sub(c.recvKeyStart) >= c.cfg.KeyRejectAfter {
		// The peer kept one key past the hard limit (it must update at
		// KeyUpdateInterval): refuse the key, and the connection with it.
		c.stats.DroppedAuth++
		c.closeLocal(now, CodeKeyExpired, "peer did not update its key", nil)
		return
	}
	if c.epochExpired(now) {
		// A key descending from an expired Diffie–Hellman protects
		// nothing either way: the peer stopped sending under it, so this
		// is stale or forged by someone who holds a leaked key and drops
		// the re-handshake. Only the new epoch's key is accepted (its
		// promotion above renewed the epoch).
		c.stats.DroppedAuth++
		return
	}
	c.stats.PacketsReceived++
	c.stats.BytesReceived += uint64(len(pkt))
	c.lastRecv = now
	if !c.confirmed {
		// The first authenticated packet proves the peer holds the keys
		// and owns its address.
		c.confirmed = true
		c.path.validated = true
		c.respPending = nil
	}
	if c.state == stateClosing || c.state == stateDraining {
		// A closed connection does no more work for its peer (RFC 9000
		// §10.2): a closing one only answers with its CLOSE, a draining
		// one with nothing. Frames a peer sends after the close — a
		// hostile peer still flooding the receive budget that closed it
		// — are neither processed nor counted again.
		if c.state == stateClosing {
			c.closePending = true
		}
		return
	}
	c.notePath(now, from, h.PN, len(pkt))

	eliciting, err := c.handleFrames(now, from, payload)
	if err != nil {
		c.frameError(now, err)
		return
	}
	if h.PN > c.largestRecvPN || c.recvd.empty() {
		c.largestRecvPN = h.PN
		c.largestRecvTime = now
	}
	c.recvd.add(h.PN, h.PN+1)
	c.recvd.keepTop(maxAckRangesSent)
	c.ackPending = true
	if eliciting {
		if c.ackEliciting == 0 {
			c.ackDeadline = now.Add(maxAckDelay)
		}
		c.ackEliciting++
	}
}

func (c *Conn) handleResponse(now time.Time, pkt []byte) {
	if c.state != stateHandshake {
		return // a late duplicate
	}
	s, err := c.init.HandleResponse(now, pkt)
	if err != nil {
		c.stats.DroppedAuth++
		return
	}
	if err := c.install(s, now); err != nil {
		c.stats.DroppedAuth++
		return
	}
	c.state = stateEstablished
	c.confirmed = true
	c.hsPacket, c.hsLast = nil, nil
	c.init = nil
	// The response is authenticated, but its source address is not: the
	// path stays on the address we dialled (a copy raced from elsewhere
	// must not move us).
	c.lastRecv = now
	// Confirm the keys to the responder right away.
	c.pingPending = true
}

// recvKeysFor picks the key generations that may have protected a packet,
// in the order to try them: the phase bit says current or not; a packet
// number below the current generation's first one belongs to the previous
// generation, above it to the next. The next generation is either the
// hash chain's or, after a re-handshake, the new epoch's (rekeyed keys
// follow no phase pattern: the peer may switch to them from any
// generation), so both are candidates. Trying two keys at most bounds
// what a forged packet costs.
func (c *Conn) recvKeysFor(h wire.Header) (a, b *keySet) {
	pending := c.rk.recvPending
	if h.KeyPhase == c.recvCur.phase() {
		return c.recvCur, pending
	}
	if c.recvCur.used && h.PN < c.recvCur.firstPN {
		return c.recvPrev, nil
	}
	if c.recvNext == nil {
		n, err := c.recvCur.next()
		if err != nil {
			return pending, nil
		}
		c.recvNext = n
	}
	if pending != nil {
		return pending, c.recvNext
	}
	return c.recvNext, nil
}

// openPacket decrypts pkt in place with the first candidate key that
// authenticates it, and returns that key (nil: none did).
func (c *Conn) openPacket(h wire.Header, pkt []byte) (*keySet, []byte) {
	a, b := c.recvKeysFor(h)
	if a == nil {
		return nil, nil
	}
	if b == nil {
		payload, err := a.open(pkt, h.Len, h.PN)
		if err != nil {
			return nil, nil
		}
		return a, payload
	}
	// A failed open wipes the buffer it decrypted into (crypto/cipher
	// releases no unauthenticated plaintext): keep the ciphertext for the
	// second try.
	c.rk.scratch = append(c.rk.scratch[:0], pkt...)
	if payload, err := a.open(pkt, h.Len, h.PN); err == nil {
		return a, payload
	}
	copy(pkt, c.rk.scratch)
	payload, err := b.open(pkt, h.Len, h.PN)
	if err != nil {
		return nil, nil
	}
	return b, payload
}

// promoteRecvKey makes k — the hash chain's next generation or a
// re-handshake's — the current receive generation.
func (c *Conn) promoteRecvKey(now time.Time, pn uint64, k *keySet) {
	c.recvPrev.zero()
	c.recvPrev = c.recvCur
	c.recvCur = k
	if k == c.rk.recvPending {
		c.rk.recvPending = nil
		c.recvNext.zero() // the old chain's: never used now
		c.onRekeyConfirmed(now)
	} else {
		c.stats.KeyUpdates++
	}
	c.recvNext = nil
	c.recvCur.firstPN = pn
	c.recvCur.used = true
	c.recvKeyStart = now
	c.prevDiscardAt = now.Add(keyDiscardPTOs * c.rec.pto())
}

func (c *Conn) handleFrames(now time.Time, from netip.AddrPort, payload []byte) (bool, error) {
	eliciting := false
	acks := 0
	c.parse.Reset(payload)
	f := &c.frame
	for {
		ok, err := c.parse.Next(f)
		if err != nil {
			return false, err
		}
		if !ok {
			break
		}
		switch f.Type {
		case wire.FrameAck:
			// One ACK per packet: each one walks the packets in flight, so
			// a peer must not make us do that hundreds of times a packet.
			if acks++; acks > 1 {
				return false, errors.New("sudp: more than one ACK frame in a packet")
			}
			if err := c.onAck(now, &f.Ack); err != nil {
				return false, err
			}
			continue
		case wire.FrameClose:
			if c.state != stateDraining && c.state != stateClosed {
				c.state = stateDraining
				c.err = &CloseError{Code: f.ErrorCode, Reason: string(f.Reason), Remote: true}
				c.drainUntil = now.Add(3 * c.rec.pto())
			}
			continue
		case wire.FramePing:
		case wire.FramePathChallenge:
			c.queuePathResponse(from, f.PathData)
		case wire.FramePathResponse:
			c.onPathResponse(from, f.PathData)
		case wire.FrameResetToken:
			c.onResetToken(f.Token)
		case wire.FrameKeyUpdate:
			if f.Value > c.recvCur.gen {
				return false, fmt.Errorf("sudp: KEY_UPDATE to generation %d in generation %d", f.Value, c.recvCur.gen)
			}
		case wire.FrameMaxData:
			if f.Value > c.connMaxSend {
				c.connMaxSend = f.Value
				// Streams that left the queue blocked on connection
				// credit can send again.
				for _, s := range c.streams {
					if s.sent < s.written {
						c.schedule(s)
					}
				}
			}
		case wire.FrameMaxStreamData:
			// May precede the stream's first STREAM frame: open it.
			s, err := c.peerStream(f.StreamID)
			if err != nil {
				return false, err
			}
			if s != nil && s.ss != sendNone && f.Value > s.maxSend {
				s.maxSend = f.Value
				c.schedule(s)
			}
		case wire.FrameMaxStreamsBidi:
			c.peerMaxStreams[0] = max(c.peerMaxStreams[0], f.Value)
		case wire.FrameMaxStreamsUni:
			c.peerMaxStreams[1] = max(c.peerMaxStreams[1], f.Value)
		case wire.FrameResetStream:
			s, err := c.peerStream(f.StreamID)
			if err != nil {
				return false, err
			}
			if s != nil && s.rs != recvNone && s.rs != recvDone && !s.peerReset {
				if err := c.settleFinalSize(s, f.Value); err != nil {
					return false, err
				}
				s.rs = recvReset
				s.peerReset = true
				s.resetErr = f.ErrorCode
				if s.stopQueued {
					s.resetSeen = true // the application already gave it up
				}
				s.rbuf.drop(s.pool)
				c.maybeSendMaxData()
				c.maybeFree(s)
			}
		case wire.FrameStopSending:
			if s := c.streams[f.StreamID]; s != nil && (s.ss == sendOpen || s.ss == sendFinQ) {
				c.resetSend(s, f.ErrorCode)
			}
		case wire.FrameStream, wire.FrameStreamFin:
			if err := c.onStreamFrame(&f.Stream); err != nil {
				return false, err
			}
		case wire.FrameDatagram:
			c.dg.receive(now, &f.Datagram, &c.stats)
		}
		eliciting = true
	}
	return eliciting, nil
}

// settleFinalSize does the connection-level accounting of a stream whose
// final size just became known (RESET_STREAM, or FIN after we stopped
// reading): bytes the peer sent that we never saw still consumed credit, so
// they are counted received, and everything unread is released.
func (c *Conn) settleFinalSize(s *stream, final uint64) error {
	if s.finalCounted {
		if final != s.finalSize {
			return errFinalSize
		}
		return nil
	}
	hi, _ := s.highestReceived()
	hi = max(hi, s.readOff)
	if final < hi || (s.rs == recvFinKnown && final != s.finalSize) || final > s.maxRecv {
		return errFinalSize
	}
	c.connRecv += final - hi
	if c.connRecv > c.connMaxRecv {
		return errFlowControl
	}
	if s.stopQueued {
		c.connRead += final - hi // [readOff, hi) was released when we stopped
	} else {
		c.connRead += final - s.readOff
	}
	s.finalSize = final
	s.finalCounted = true
	return nil
}

func (c *Conn) onStreamFrame(f *wire.Stream) error {
	s, err := c.peerStream(f.ID)
	if err != nil {
		return err
	}
	if s == nil {
		return nil // already finished and forgotten
	}
	if s.rs == recvNone {
		return fmt.Errorf("sudp: STREAM frame for send-only stream %d", f.ID)
	}
	if s.stopQueued && !s.peerReset {
		// We stopped reading: data is discarded, but a FIN settles the
		// final size (a peer that had finished sends no RESET_STREAM).
		if f.Fin {
			if err := c.settleFinalSize(s, f.Offset+uint64(len(f.Data))); err != nil {
				return err
			}
			c.maybeSendMaxData()
			c.maybeFree(s)
		}
		return nil
	}
	before, _ := s.highestReceived()
	before = max(before, s.readOff)
	ranges := s.got.len()
	err = s.recvData(f.Offset, f.Data, f.Fin)
	c.recvRanges += s.got.len() - ranges
	if err != nil {
		return err
	}
	// The receive budget (docs/protocol.md §7.5.1): flow control bounds how
	// far ahead a peer may send, these bound what its pattern costs us.
	if c.recvRanges > c.cfg.MaxRecvRanges {
		return fmt.Errorf("%w: %d disjoint ranges (limit %d)", errRecvRanges, c.recvRanges, c.cfg.MaxRecvRanges)
	}
	if c.pages.over() {
		return fmt.Errorf("%w: %d bytes in pages (limit %d)", errRecvMemory, c.pages.held*recvPageSize, c.pages.limit*recvPageSize)
	}
	after, _ := s.highestReceived()
	after = max(after, s.readOff)
	if after > before {
		c.connRecv += after - before
		if c.connRecv > c.connMaxRecv {
			return errFlowControl
		}
	}
	if s.rs == recvFinKnown {
		c.maybeFree(s) // may be complete with everything already read
	}
	return nil
}

// peerStream finds the stream for an id in a frame from the peer, opening it
// (and, as in QUIC, every lower-numbered one of its kind) if the peer may.
func (c *Conn) peerStream(id uint64) (*stream, error) {
	if s := c.streams[id]; s != nil {
		return s, nil
	}
	peerOpened := (id&wire.StreamServerBit != 0) == c.client
	kind := 0
	if isUni(id) {
		kind = 1
	}
	seq := id >> 2
	if !peerOpened {
		if seq >= c.nextSeq[kind] {
			return nil, fmt.Errorf("sudp: frame for stream %d we never opened", id)
		}
		return nil, nil
	}
	if seq < c.peerOpened[kind] {
		return nil, nil
	}
	if seq >= c.ourMaxStreams[kind] {
		return nil, fmt.Errorf("sudp: peer exceeded stream limit (%d >= %d)", seq, c.ourMaxStreams[kind])
	}
	for n := c.peerOpened[kind]; n <= seq; n++ {
		sid := n<<2 | id&3
		s := &stream{id: sid, incoming: true, prio: PriorityNormal, window: c.cfg.StreamWindow, maxRecv: InitialStreamWindow, pool: &c.pages}
		if kind == 1 {
			s.ss = sendNone
		} else {
			s.maxSend = InitialStreamWindow
			s.sendLimit = c.cfg.StreamSendBuffer
		}
		// Raise the stream window from the protocol's initial value.
		if c.cfg.StreamWindow > s.maxRecv {
			s.maxRecv = c.cfg.StreamWindow
			s.sendMaxSD = true
			c.pendingCtl = append(c.pendingCtl, sid)
		}
		c.streams[sid] = s
		c.acceptQ[kind] = append(c.acceptQ[kind], sid)
	}
	c.peerOpened[kind] = seq + 1
	return c.streams[id], nil
}
