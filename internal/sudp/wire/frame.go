package wire

import (
	"errors"
	"fmt"
)

// Frame types (docs/protocol.md §5). A packet's plaintext is a sequence of
// frames; an unknown type makes the whole packet invalid, because a receiver
// cannot know the length of a frame it does not understand.
const (
	FramePadding        = 0x00
	FramePing           = 0x01
	FrameAck            = 0x02
	FrameClose          = 0x03
	FramePathChallenge  = 0x04
	FramePathResponse   = 0x05
	FrameKeyUpdate      = 0x06
	FrameMaxData        = 0x07
	FrameMaxStreamData  = 0x08
	FrameResetStream    = 0x09
	FrameStopSending    = 0x0a
	FrameDatagram       = 0x0b
	FrameMaxStreamsBidi = 0x0c
	FrameMaxStreamsUni  = 0x0d
	FrameResetToken     = 0x0e // the sender's stateless reset token (reset.go)
	FrameStream         = 0x10 // 0x10 | FIN bit
	FrameStreamFin      = 0x11
	// FrameStreamEnd is a STREAM frame without a length: its data runs
	// to the end of the packet, so it is always a packet's last frame
	// (the sender's bulk frames, which fill their packets).
	FrameStreamEnd    = 0x12 // 0x12 | FIN bit
	FrameStreamEndFin = 0x13
)

// Stream ID layout: the two low bits say who opened the stream and whether it
// is a bidirectional byte stream or a unidirectional message.
const (
	StreamServerBit = 0x1 // set: opened by the responder
	StreamUniBit    = 0x2 // set: unidirectional (a reliable message)
)

// MaxAckRanges bounds how many ranges an ACK frame may carry; more is treated
// as malformed so that a peer cannot make us allocate or loop without limit.
const MaxAckRanges = 256

// MaxCloseReason bounds the reason text of a CLOSE frame.
const MaxCloseReason = 256

// ErrFrame reports a malformed frame.
var ErrFrame = errors.New("wire: malformed frame")

// AckRange is an inclusive range of packet numbers [Smallest, Largest].
type AckRange struct{ Smallest, Largest uint64 }

// Ack is an ACK frame. Ranges are in descending order, non-overlapping and
// separated by at least one missing packet number.
type Ack struct {
	Delay  uint64 // microseconds the receiver held the ACK
	Ranges []AckRange
}

// Stream is a STREAM frame: bytes [Offset, Offset+len(Data)) of a stream.
type Stream struct {
	ID     uint64
	Offset uint64
	Data   []byte
	Fin    bool
}

// Datagram is one fragment of a best-effort message.
type Datagram struct {
	ID    uint64 // message id, unique per direction
	Index uint64 // fragment index
	Count uint64 // number of fragments in the message
	Data  []byte
}

// Frame is a decoded frame. Only the fields of Type are meaningful; slices
// alias the packet buffer and are valid until it is reused.
type Frame struct {
	Type byte

	Ack      Ack
	Stream   Stream
	Datagram Datagram

	// CLOSE, RESET_STREAM, STOP_SENDING
	ErrorCode uint64
	Reason    []byte
	// PATH_CHALLENGE / PATH_RESPONSE
	PathData [8]byte
	// RESET_TOKEN
	Token [ResetTokenLen]byte
	// KEY_UPDATE: generation; MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS: limit;
	// RESET_STREAM: final size.
	Value uint64
	// MAX_STREAM_DATA, RESET_STREAM, STOP_SENDING
	StreamID uint64
}

// Parser walks the frames of a decrypted payload without allocating: Ack
// ranges are decoded into a buffer that the Parser reuses.
type Parser struct {
	b      []byte
	ranges []AckRange
}

// Reset starts parsing payload.
func (p *Parser) Reset(payload []byte) { p.b = payload }

// Next decodes the next frame into f. It returns false with a nil error at the
// end of the payload.
func (p *Parser) Next(f *Frame) (bool, error) {
	for len(p.b) > 0 && p.b[0] == FramePadding {
		p.b = p.b[1:]
	}
	if len(p.b) == 0 {
		return false, nil
	}
	t := p.b[0]
	b := p.b[1:]
	f.Type = t
	var err error
	switch t {
	case FramePing:
	case FrameAck:
		b, err = p.parseAck(b, &f.Ack)
	case FrameClose:
		if f.ErrorCode, b, err = varint(b); err != nil {
			break
		}
		var n uint64
		if n, b, err = varint(b); err != nil {
			break
		}
		if n > MaxCloseReason || n > uint64(len(b)) {
			err = ErrFrame
			break
		}
		f.Reason, b = b[:n], b[n:]
	case FramePathChallenge, FramePathResponse:
		if len(b) < 8 {
			err = ErrFrame
			break
		}
		copy(f.PathData[:], b[:8])
		b = b[8:]
	case FrameResetToken:
		if len(b) < ResetTokenLen {
			err = ErrFrame
			break
		}
		copy(f.Token[:], b[:ResetTokenLen])
		b = b[ResetTokenLen:]
	case FrameKeyUpdate, FrameMaxData, FrameMaxStreamsBidi, FrameMaxStreamsUni:
		f.Value, b, err = varint(b)
	case FrameMaxStreamData:
		if f.StreamID, b, err = varint(b); err != nil {
			break
		}
		f.Value, b, err = varint(b)
	case FrameResetStream:
		if f.StreamID, b, err = varint(b); err != nil {
			break
		}
		if f.ErrorCode, b, err = varint(b); err != nil {
			break
		}
		f.Value, b, err = varint(b)
	case FrameStopSending:
		if f.StreamID, b, err = varint(b); err != nil {
			break
		}
		f.ErrorCode, b, err = varint(b)
	case FrameStream, FrameStreamFin:
		b, err = parseStream(b, &f.Stream, false)
		f.Stream.Fin = t == FrameStreamFin
	case FrameStreamEnd, FrameStreamEndFin:
		b, err = parseStream(b, &f.Stream, true)
		f.Stream.Fin = t == FrameStreamEndFin
		f.Type = t &^ (FrameStreamEnd ^ FrameStream) // one STREAM frame, as its receiver sees it
	case FrameDatagram:
		b, err = parseDatagram(b, &f.Datagram)
	default:
		err = fmt.Errorf("%w: unknown frame type 0x%02x", ErrFrame, t)
	}
	if err != nil {
		p.b = nil
		return false, err
	}
	p.b = b
	return true, nil
}

func varint(b []byte) (uint64, []byte, error) {
	v, n, err := ReadVarint(b)
	if err != nil {
		return 0, nil, ErrFrame
	}
	return v, b[n:], nil
}

func (p *Parser) parseAck(b []byte, a *Ack) ([]byte, error) {
	largest, b, err := varint(b)
	if err != nil {
		return nil, err
	}
	if a.Delay, b, err = varint(b); err != nil {
		return nil, err
	}
	count, b, err := varint(b)
	if err != nil {
		return nil, err
	}
	if count >= MaxAckRanges {
		return nil, ErrFrame
	}
	first, b, err := varint(b)
	if err != nil {
		return nil, err
	}
	if first > largest {
		return nil, ErrFrame
	}
	ranges := append(p.ranges[:0], AckRange{Smallest: largest - first, Largest: largest})
	smallest := largest - first
	for i := uint64(0); i < count; i++ {
		var gap, length uint64
		if gap, b, err = varint(b); err != nil {
			return nil, err
		}
		if length, b, err = varint(b); err != nil {
			return nil, err
		}
		// The next range ends gap+2 below the previous smallest (at least one
		// missing packet between ranges), and spans length+1 packets.
		if smallest < gap+2 {
			return nil, ErrFrame
		}
		hi := smallest - gap - 2
		if hi < length {
			return nil, ErrFrame
		}
		smallest = hi - length
		ranges = append(ranges, AckRange{Smallest: smallest, Largest: hi})
	}
	p.ranges = ranges
	a.Ranges = ranges
	return b, nil
}

// parseStream reads a STREAM frame's fields; toEnd: it has no length,
// its data is the rest of the packet.
func parseStream(b []byte, s *Stream, toEnd bool) ([]byte, error) {
	var err error
	if s.ID, b, err = varint(b); err != nil {
		return nil, err
	}
	if s.Offset, b, err = varint(b); err != nil {
		return nil, err
	}
	n := uint64(len(b))
	if !toEnd {
		if n, b, err = varint(b); err != nil {
			return nil, err
		}
	}
	if n > uint64(len(b)) || s.Offset+n > MaxVarint {
		return nil, ErrFrame
	}
	s.Data = b[:n]
	return b[n:], nil
}

func parseDatagram(b []byte, d *Datagram) ([]byte, error) {
	var err error
	if d.ID, b, err = varint(b); err != nil {
		return nil, err
	}
	if d.Index, b, err = varint(b); err != nil {
		return nil, err
	}
	if d.Count, b, err = varint(b); err != nil {
		return nil, err
	}
	if d.Count == 0 || d.Index >= d.Count {
		return nil, ErrFrame
	}
	n, b, err := varint(b)
	if err != nil {
		return nil, err
	}
	if n > uint64(len(b)) {
		return nil, ErrFrame
	}
	d.Data = b[:n]
	return b[n:], nil
}
