package mmc

// An enrolling or pending host's session carries a few small messages (its
// request with the host's facts, an acknowledgement, the wait for a
// decision), yet the MMC's SUDP endpoint has one receive loop for every
// agent. Anyone with the bundle can open such a session, so its packets are
// capped before decryption (sudp.Conn.LimitReceive): a flood over it costs
// the loop a lookup per packet instead of decryption and frame processing,
// and the approved agents' sessions keep their round trip
// (docs/BENCHMARKS.md §9). The burst takes a whole enrolment at once.
const (
	enrolRecvRate  = 64 << 10  // bytes a second
	enrolRecvBurst = 256 << 10 // bytes
)
