package wire

import "errors"

// Variable-length integers use the QUIC encoding (RFC 9000 §16): the two most
// significant bits of the first byte give the length (1, 2, 4 or 8 bytes) and
// the remaining bits hold the value, big-endian. It keeps ACK and stream frames
// small for small numbers without limiting offsets.

// MaxVarint is the largest value a varint can carry (2^62-1).
const MaxVarint = 1<<62 - 1

var errVarint = errors.New("wire: truncated varint")

// VarintLen is the number of bytes AppendVarint uses for v.
func VarintLen(v uint64) int {
	switch {
	case v <= 63:
		return 1
	case v <= 16383:
		return 2
	case v <= 1073741823:
		return 4
	default:
		return 8
	}
}

// AppendVarint appends v (which must be <= MaxVarint) to b.
func AppendVarint(b []byte, v uint64) []byte {
	switch {
	case v <= 63:
		return append(b, byte(v))
	case v <= 16383:
		return append(b, byte(v>>8)|0x40, byte(v))
	case v <= 1073741823:
		return append(b, byte(v>>24)|0x80, byte(v>>16), byte(v>>8), byte(v))
	default:
		return append(b, byte(v>>56)|0xc0, byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
}

// ReadVarint decodes a varint from the start of b and returns it and its length.
func ReadVarint(b []byte) (uint64, int, error) {
	if len(b) == 0 {
		return 0, 0, errVarint
	}
	n := 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0, errVarint
	}
	v := uint64(b[0] & 0x3f)
	for i := 1; i < n; i++ {
		v = v<<8 | uint64(b[i])
	}
	return v, n, nil
}
