// Package zstream frames a migration stream so that each chunk of it may
// cross the link zstd-compressed, and decides chunk by chunk whether to
// compress.
//
// Compression pays only when the link, not the CPU, holds the stream
// back, and only for data that compresses: a guest's memory is part
// text and code (2–4× with zstd), part random or already compressed.
// The Writer therefore compresses a chunk only while a write in the last
// LinkMemory frames had to wait for the link (the stream's send queue
// was full: the link is the bottleneck); a chunk whose bytes look random
// (Random: their entropy estimated from a sample) goes raw untried, and
// after a chunk that did not compress it sends the next ones raw,
// trying again after 1, 2, 4 or 8 chunks (Policy). On a link faster
// than the compressor the writes stop waiting and the chunks go raw; on
// a slow one everything that compresses is compressed. The hypervisor
// is not involved: it writes its stream as always, and sees the link's
// rate in its own (uncompressed) bytes.
//
// Wire format (docs/protocol.md §16.2): frames, each a 4-byte header —
// flags (1 byte: 0 raw, 1 zstd; other bits reserved) and the payload's
// length (3 bytes, big-endian, 1…MaxFrame) — then the payload. A zstd
// payload is zstd data (the Writer sends one frame; the Reader takes
// any frames, skippable ones too) that decodes to 1…MaxFrame bytes. The
// Reader refuses anything else with an error wrapping ErrFrame.
package zstream
