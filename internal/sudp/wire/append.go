package wire

// Encoders append one frame to a packet buffer. They never fail: callers size
// frames with the *Len functions before appending, so a packet never exceeds
// its budget.

// AppendPing appends a PING frame.
func AppendPing(b []byte) []byte { return append(b, FramePing) }

// AppendPadding appends n PADDING bytes.
func AppendPadding(b []byte, n int) []byte {
	for i := 0; i < n; i++ {
		b = append(b, FramePadding)
	}
	return b
}

// AppendAck appends an ACK frame for ranges (descending, disjoint, with gaps).
func AppendAck(b []byte, delay uint64, ranges []AckRange) []byte {
	b = append(b, FrameAck)
	b = AppendVarint(b, ranges[0].Largest)
	b = AppendVarint(b, delay)
	b = AppendVarint(b, uint64(len(ranges)-1))
	b = AppendVarint(b, ranges[0].Largest-ranges[0].Smallest)
	prev := ranges[0].Smallest
	for _, r := range ranges[1:] {
		b = AppendVarint(b, prev-r.Largest-2)
		b = AppendVarint(b, r.Largest-r.Smallest)
		prev = r.Smallest
	}
	return b
}

// AckLen is the encoded size of AppendAck's frame.
func AckLen(delay uint64, ranges []AckRange) int {
	n := 1 + VarintLen(ranges[0].Largest) + VarintLen(delay) +
		VarintLen(uint64(len(ranges)-1)) + VarintLen(ranges[0].Largest-ranges[0].Smallest)
	prev := ranges[0].Smallest
	for _, r := range ranges[1:] {
		n += VarintLen(prev-r.Largest-2) + VarintLen(r.Largest-r.Smallest)
		prev = r.Smallest
	}
	return n
}

// AppendClose appends a CLOSE frame.
func AppendClose(b []byte, code uint64, reason string) []byte {
	if len(reason) > MaxCloseReason {
		reason = reason[:MaxCloseReason]
	}
	b = append(b, FrameClose)
	b = AppendVarint(b, code)
	b = AppendVarint(b, uint64(len(reason)))
	return append(b, reason...)
}

// AppendPath appends a PATH_CHALLENGE or PATH_RESPONSE frame.
func AppendPath(b []byte, typ byte, data [8]byte) []byte {
	b = append(b, typ)
	return append(b, data[:]...)
}

// AppendResetToken appends a RESET_TOKEN frame.
func AppendResetToken(b []byte, token [ResetTokenLen]byte) []byte {
	b = append(b, FrameResetToken)
	return append(b, token[:]...)
}

// AppendValue appends a frame whose body is one varint (KEY_UPDATE, MAX_DATA).
func AppendValue(b []byte, typ byte, v uint64) []byte {
	b = append(b, typ)
	return AppendVarint(b, v)
}

// AppendReset appends a RESET_STREAM frame: stream id, application error
// code, final size.
func AppendReset(b []byte, id, code, finalSize uint64) []byte {
	b = append(b, FrameResetStream)
	b = AppendVarint(b, id)
	b = AppendVarint(b, code)
	return AppendVarint(b, finalSize)
}

// AppendStreamValue appends a frame whose body is a stream id and a varint
// (MAX_STREAM_DATA, STOP_SENDING).
func AppendStreamValue(b []byte, typ byte, id, v uint64) []byte {
	b = append(b, typ)
	b = AppendVarint(b, id)
	return AppendVarint(b, v)
}

// StreamHeaderLen is the size of a STREAM frame's header for data of length n.
func StreamHeaderLen(id, offset uint64, n int) int {
	return 1 + VarintLen(id) + VarintLen(offset) + VarintLen(uint64(n))
}

// StreamEndHeaderLen is the size of a STREAM frame header without a
// length (FrameStreamEnd).
func StreamEndHeaderLen(id, offset uint64) int {
	return 1 + VarintLen(id) + VarintLen(offset)
}

// AppendStreamEndHeader appends the header of a STREAM frame whose data
// runs to the end of the packet; the caller appends that data and
// nothing after it.
func AppendStreamEndHeader(b []byte, id, offset uint64, fin bool) []byte {
	t := byte(FrameStreamEnd)
	if fin {
		t = FrameStreamEndFin
	}
	b = append(b, t)
	b = AppendVarint(b, id)
	return AppendVarint(b, offset)
}

// AppendStreamHeader appends a STREAM frame header; the caller appends the n
// data bytes right after it.
func AppendStreamHeader(b []byte, id, offset uint64, n int, fin bool) []byte {
	t := byte(FrameStream)
	if fin {
		t = FrameStreamFin
	}
	b = append(b, t)
	b = AppendVarint(b, id)
	b = AppendVarint(b, offset)
	return AppendVarint(b, uint64(n))
}

// DatagramHeaderLen is the size of a DATAGRAM frame header for n data bytes.
func DatagramHeaderLen(id, index, count uint64, n int) int {
	return 1 + VarintLen(id) + VarintLen(index) + VarintLen(count) + VarintLen(uint64(n))
}

// AppendDatagram appends a DATAGRAM frame carrying fragment index of count.
func AppendDatagram(b []byte, id, index, count uint64, data []byte) []byte {
	b = append(b, FrameDatagram)
	b = AppendVarint(b, id)
	b = AppendVarint(b, index)
	b = AppendVarint(b, count)
	b = AppendVarint(b, uint64(len(data)))
	return append(b, data...)
}
