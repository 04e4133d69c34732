// Package replay implements the sliding anti-replay window of SUDP data
// packets, in the style of RFC 6479 ("IPsec Anti-Replay Algorithm without Bit
// Shifting").
//
// A receiver remembers the highest packet number it accepted and a bitmap of
// the WindowSize numbers below it. Packets may arrive reordered within the
// window; a packet number seen before, or older than the window, is refused.
//
// The intended use separates the cheap question from the commitment:
//
//	if !f.Check(pn) { drop }          // before spending an AEAD open
//	if !aead.Open(...) { drop }       // never mark a forged number as seen
//	if !f.Accept(pn) { drop }         // a duplicate that raced us is caught here
//
// Marking a number only after authentication matters: an attacker who could
// mark numbers without the key could make the receiver refuse genuine packets.
//
// A Filter is not safe for concurrent use; the SUDP endpoint serialises all
// packet processing of a session, as the sans-I/O core does for everything.
package replay

// Filter is an anti-replay window. The zero value is ready to use and has seen
// nothing; in particular packet number 0 is accepted once.
type Filter struct {
	// last is the highest number accepted so far (0 when nothing has been
	// accepted, which is consistent: 0 is then simply "not yet seen").
	last uint64
	// ring holds one bit per number, number n at bit n%64 of block
	// (n/64)%RingBlocks. Blocks above last's block are stale until the window
	// slides over them, which clears them.
	ring [RingBlocks]uint64
}

// Check reports whether n would be accepted now: it is above the window, or
// inside it and not yet seen. It does not modify the filter, so it can run
// before the packet is authenticated.
func (f *Filter) Check(n uint64) bool {
	if n > f.last {
		return true
	}
	if f.last-n > WindowSize {
		return false
	}
	return f.ring[(n>>blockBitLog)&ringMask]&(1<<(n&(BlockBits-1))) == 0
}

// Accept marks n as seen and reports whether it was acceptable. Call it only
// after the packet authenticated; it returns false for a replay or a number
// that fell out of the window, so a duplicate that passed Check concurrently
// with the original is still refused.
func (f *Filter) Accept(n uint64) bool {
	block := n >> blockBitLog
	if n > f.last {
		// Slide the window: every block strictly above the old top block
		// up to n's block holds bits of numbers RingBits older, clear them.
		// A jump of a whole ring or more clears everything, so the loop
		// never runs more than RingBlocks times.
		top := f.last >> blockBitLog
		diff := block - top
		if diff > RingBlocks {
			diff = RingBlocks
		}
		for i := top + 1; i <= top+diff; i++ {
			f.ring[i&ringMask] = 0
		}
		f.last = n
	} else if f.last-n > WindowSize {
		return false
	}
	idx := block & ringMask
	bit := uint64(1) << (n & (BlockBits - 1))
	if f.ring[idx]&bit != 0 {
		return false
	}
	f.ring[idx] |= bit
	return true
}

// Largest is the highest number accepted so far (0 when none was): what
// a truncated packet number is recovered against.
func (f *Filter) Largest() uint64 { return f.last }

// Reset forgets everything, as for a new key: the filter is again the zero
// value.
func (f *Filter) Reset() {
	*f = Filter{}
}
