package wire

// Stateless reset (docs/protocol.md §4.1). An endpoint that receives a data
// packet for a connection id it does not know — it restarted and lost its
// state — answers with a packet shaped like a data packet whose last 16
// bytes are the reset token of that connection id. Only the endpoint's
// stable secret yields the token, and the peer learned it earlier inside
// the encrypted connection (a RESET_TOKEN frame), so the peer can tell a
// genuine reset from noise and close at once instead of waiting for its
// idle timeout.
//
//	0        1        2                                   len-16     len
//	+--------+--------+-----------------------------------+----------+
//	|  0x04  |0000000K| unpredictable bytes (≥ 16)        | token    |
//	+--------+--------+-----------------------------------+----------+
const (
	// ResetTokenLen is the size of a stateless reset token.
	ResetTokenLen = 16
	// MinResetSize is the smallest stateless reset: the size of the
	// smallest data packet (header and tag), so that it parses as one.
	MinResetSize = DataOverhead
)

// ResetToken returns the token a datagram would carry if it were a
// stateless reset: its last ResetTokenLen bytes, for a datagram of the
// data type, at least MinResetSize long and with no reserved flag bit set.
// Whether it is one only the token's comparison can tell.
func ResetToken(b []byte) (token [ResetTokenLen]byte, ok bool) {
	if len(b) < MinResetSize || b[0] != TypeData || b[1]&^flagsKnown != 0 {
		return token, false
	}
	copy(token[:], b[len(b)-ResetTokenLen:])
	return token, true
}
