// Package wire encodes and decodes SUDP data packets and the frames they
// carry. It holds no state and does no I/O: every function is a pure codec, so
// it can be fuzzed in isolation. The byte layout is specified in
// docs/protocol.md; names here follow that document.
//
// Handshake messages (types 0x01–0x03) are encoded by package handshake; this
// package owns the data packet (type 0x04) header and the frame grammar inside
// its encrypted payload, and the re-handshake message (type 0x06) framing
// around its Noise KK payload.
package wire
