package replay

// Window geometry, named as in RFC 6479 §2. The bitmap is a ring of RingBlocks
// blocks of BlockBits bits each (8192 bits). One block is always the block
// being filled at the top of the window, so the window that is guaranteed to
// be remembered is one block shorter than the ring: that spare block is what
// lets the window slide a whole block at a time with a single store instead of
// shifting every bit (RFC 6479 §2.2).
const (
	// BlockBits is the size of one bitmap block (one uint64 word).
	BlockBits = 64
	// RingBlocks is the number of blocks in the circular bitmap; a power of
	// two so that a block index is found with a mask.
	RingBlocks = 128
	// RingBits is the total size of the bitmap: 8192 bits.
	RingBits = RingBlocks * BlockBits
	// WindowSize is how far below the highest accepted counter a counter is
	// still checked against the bitmap; anything older is rejected as too old.
	WindowSize = (RingBlocks - 1) * BlockBits

	blockBitLog = 6 // log2(BlockBits)
	ringMask    = RingBlocks - 1
)
