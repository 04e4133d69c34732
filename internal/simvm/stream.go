package simvm

// The simulated VM's migration stream: format, encoder and the strict
// decoder the destination uses. All integers are big-endian.
//
// Header (once, at the start):
//
//	 0                8         10          14                    22         24
//	+----------------+---------+-----------+---------------------+----------+------------------+
//	| magic FERRYMIG | version | page size | page count          | spec len | spec (JSON)      |
//	| 8 bytes        | u16 = 1 | u32 = 4096| u64 (1 … 2^32)      | u16 ≤4096| hypervisor.Spec  |
//	+----------------+---------+-----------+---------------------+----------+------------------+
//
// Then records, each a type byte and a body length:
//
//	+------+------------+---------------------------+
//	| type | length u32 | body (length bytes)       |
//	+------+------------+---------------------------+
//
//	type 1 PAGES   body ≤ 3 + 256×9 + 256×4096 bytes: a batch of 1–256 pages
//	+-----------+----------+--------------------------------------+-------------------------+
//	| count u16 | flags u8 | count × entry, 9 bytes each:         | payload: the data pages |
//	| 1 … 256   | bit 0:   |  page u32 · kind u8 · CRC32C u32     | in entry order, raw     |
//	|           |   zstd   |  kind 0: zero page (CRC of zeros),   | (n×4096 bytes) or one   |
//	|           |          |  kind 1: data page (4096 B payload)  | zstd frame of them      |
//	+-----------+----------+--------------------------------------+-------------------------+
//
//	type 2 ROUND   body = round u32: round 1, 2, 3, … has ended
//	type 3 DEVICE  body = JSON deviceState, 1 … 65536 bytes
//	type 4 END     body = SHA-256 over the sender's table of each page's CRC32C
//	               (4 bytes big-endian per page, page 0 first), 32 bytes
//
// Order: header, then PAGES and ROUND records (rounds numbered from 1,
// each ending with its ROUND), then DEVICE right after the last ROUND,
// then END right after DEVICE. Round 1 carries every page (an untouched
// page as a 9-byte zero entry, never as 4096 zeros); later rounds carry
// the pages dirtied since they were last sent; the last round is the
// stop-and-copy, sent with the guest paused. A compressed payload must be
// smaller than the raw one (the sender sends raw otherwise). The decoder
// rejects anything else — unknown type, page number out of range, wrong
// or oversized length, bad zstd, a data page whose CRC32C does not match,
// records out of order — with an error, and never allocates more than one
// record's bound.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

// Stream constants.
const (
	streamMagic   = "FERRYMIG"
	streamVersion = 1
	headerLen     = 24
	maxSpecLen    = 4096
	maxPages      = 1 << 32 // page numbers are u32

	recPages  = 1
	recRound  = 2
	recDevice = 3
	recEnd    = 4

	recHeaderLen  = 5
	maxBatch      = 256 // pages per PAGES record
	entryLen      = 9
	pagesPrefix   = 3 // count + flags
	flagZstd      = 1
	kindZero      = 0
	kindData      = 1
	maxPagesBody  = pagesPrefix + maxBatch*entryLen + maxBatch*PageSize
	maxDeviceBody = 64 << 10
)

// deviceState is the DEVICE record: what the destination needs, beyond
// memory, to continue the guest exactly where the source stopped it.
type deviceState struct {
	Workload hypervisor.Workload `json:"workload"`
	// Stamp is the dirtier's counter (the next write stamps Stamp+1) and
	// RNG its generator's state (math/rand/v2 PCG, MarshalBinary), so the
	// destination dirties the same pages with the same values.
	Stamp uint64 `json:"stamp"`
	RNG   []byte `json:"rng"`
	// Touched is the count of pages the guest ever wrote (memory in use).
	Touched uint64 `json:"touched"`
	// DirtyBytes and NetBytes are the guest's lifetime counters.
	DirtyBytes uint64 `json:"dirty_bytes"`
	NetBytes   uint64 `json:"net_bytes"`
}

// streamHeader is the decoded header.
type streamHeader struct {
	Version  uint16
	PageSize uint32
	Pages    uint64
	Spec     hypervisor.Spec
}

// zstd coders are shared (EncodeAll/DecodeAll are safe for concurrent
// use): each one holds buffers worth reusing across batches and streams.
var (
	zstdEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(4),
			zstd.WithEncoderCRC(false)) // every page carries its own CRC32C
	})
	zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil, zstd.WithDecoderConcurrency(4), zstd.WithDecoderMaxMemory(maxBatch*PageSize),
			zstd.WithDecodeAllCapLimit(true))
	})
)

// encoder writes a stream to w, batching pages into PAGES records and
// reusing its buffers (nothing is allocated per page or per batch).
type encoder struct {
	w        io.Writer
	compress bool
	zenc     *zstd.Encoder
	rec      []byte // record header, PAGES prefix and entries of the batch being built
	data     []byte // the batch's data pages, maxBatch*PageSize
	zbuf     []byte
	count    int // pages in the batch
	ndata    int // data pages in the batch
}

func newEncoder(w io.Writer, compress bool) (*encoder, error) {
	e := &encoder{w: w, compress: compress,
		rec:  make([]byte, recHeaderLen+pagesPrefix, recHeaderLen+pagesPrefix+maxBatch*entryLen),
		data: make([]byte, maxBatch*PageSize)}
	if compress {
		z, err := zstdEncoder()
		if err != nil {
			return nil, fmt.Errorf("simvm: zstd: %w", err)
		}
		e.zenc, e.zbuf = z, make([]byte, 0, maxBatch*PageSize)
	}
	return e, nil
}

func (e *encoder) writeHeader(pages uint64, spec hypervisor.Spec) error {
	js, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if len(js) > maxSpecLen {
		return fmt.Errorf("simvm: spec is %d bytes, over %d", len(js), maxSpecLen)
	}
	b := make([]byte, headerLen, headerLen+len(js))
	copy(b, streamMagic)
	binary.BigEndian.PutUint16(b[8:], streamVersion)
	binary.BigEndian.PutUint32(b[10:], PageSize)
	binary.BigEndian.PutUint64(b[14:], pages)
	binary.BigEndian.PutUint16(b[22:], uint16(len(js)))
	_, err = e.w.Write(append(b, js...))
	return err
}

// full reports whether the batch must be flushed before adding a page.
func (e *encoder) full() bool { return e.count == maxBatch }

func (e *encoder) entry(p uint64, kind byte, crc uint32) {
	e.rec = binary.BigEndian.AppendUint32(e.rec, uint32(p))
	e.rec = append(e.rec, kind)
	e.rec = binary.BigEndian.AppendUint32(e.rec, crc)
	e.count++
}

// addZero adds page p as a zero page.
func (e *encoder) addZero(p uint64) { e.entry(p, kindZero, zeroCRC) }

// slot is where the next data page's content goes before addData.
func (e *encoder) slot() []byte { return e.data[e.ndata*PageSize : (e.ndata+1)*PageSize] }

// addData adds page p, whose content is in slot(), with its CRC32C.
func (e *encoder) addData(p uint64, crc uint32) {
	e.entry(p, kindData, crc)
	e.ndata++
}

// flush writes the batch as one PAGES record (nothing if it is empty).
func (e *encoder) flush() error {
	if e.count == 0 {
		return nil
	}
	payload := e.data[:e.ndata*PageSize]
	var flags byte
	if e.compress && e.ndata > 0 {
		z := e.zenc.EncodeAll(payload, e.zbuf[:0])
		if len(z) < len(payload) {
			payload, flags = z, flagZstd
		}
		e.zbuf = z[:0]
	}
	e.rec[0] = recPages
	binary.BigEndian.PutUint32(e.rec[1:], uint32(len(e.rec)-recHeaderLen+len(payload)))
	binary.BigEndian.PutUint16(e.rec[5:], uint16(e.count))
	e.rec[7] = flags
	_, err := e.w.Write(e.rec)
	if err == nil && len(payload) > 0 {
		_, err = e.w.Write(payload)
	}
	e.rec = e.rec[:recHeaderLen+pagesPrefix]
	e.count, e.ndata = 0, 0
	return err
}

func (e *encoder) record(typ byte, body []byte) error {
	if err := e.flush(); err != nil {
		return err
	}
	b := make([]byte, recHeaderLen, recHeaderLen+len(body))
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)))
	_, err := e.w.Write(append(b, body...))
	return err
}

func (e *encoder) writeRound(r uint32) error {
	return e.record(recRound, binary.BigEndian.AppendUint32(nil, r))
}

func (e *encoder) writeDevice(d deviceState) error {
	js, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if len(js) > maxDeviceBody {
		return fmt.Errorf("simvm: device state is %d bytes, over %d", len(js), maxDeviceBody)
	}
	return e.record(recDevice, js)
}

func (e *encoder) writeEnd(digest [32]byte) error { return e.record(recEnd, digest[:]) }

// pageEntry is one page of a PAGES record.
type pageEntry struct {
	Page uint32
	Kind byte
	CRC  uint32
}

// record is one decoded record; its slices alias the decoder's buffers
// and are valid until the next call to next.
type record struct {
	Type    byte
	Entries []pageEntry // PAGES
	Data    []byte      // PAGES: the data pages' contents, in entry order
	Round   uint32      // ROUND
	Device  deviceState // DEVICE
	Digest  [32]byte    // END
}

// decoder reads a stream strictly. Its buffers grow to at most one
// record's bound (about 1 MiB), whatever the input claims.
type decoder struct {
	r       io.Reader
	pages   uint64
	state   int // decoder states below
	round   uint32
	hdr     [recHeaderLen]byte
	body    []byte
	data    []byte
	entries []pageEntry
	rec     record
}

// recordNames name record types in errors (a table: no formatting per record).
var recordNames = [...]string{recPages: "a PAGES record", recRound: "a ROUND record", recDevice: "a DEVICE record", recEnd: "the END record"}

const (
	decHeader   = iota // expecting the header
	decRecords         // PAGES and ROUND
	decRoundEnd        // just after a ROUND: DEVICE allowed
	decDevice          // after DEVICE: only END
	decDone            // after END
)

// errStream marks the stream's own faults (as opposed to I/O errors).
var errStream = errors.New("simvm: migration stream")

func streamErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errStream}, a...)...)
}

func newDecoder(r io.Reader) *decoder { return &decoder{r: r} }

// readFull is io.ReadFull that calls a stream cut short by EOF what it is.
func (d *decoder) readFull(b []byte, what string) error {
	if _, err := io.ReadFull(d.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: stream ended inside %s (before END)", errStream, what)
		}
		return fmt.Errorf("simvm: reading %s: %w", what, err)
	}
	return nil
}

func (d *decoder) readHeader() (streamHeader, error) {
	var h streamHeader
	if d.state != decHeader {
		return h, streamErr("header already read")
	}
	var b [headerLen]byte
	if err := d.readFull(b[:], "the header"); err != nil {
		return h, err
	}
	if string(b[:8]) != streamMagic {
		return h, streamErr("bad magic %q", b[:8])
	}
	h.Version = binary.BigEndian.Uint16(b[8:])
	h.PageSize = binary.BigEndian.Uint32(b[10:])
	h.Pages = binary.BigEndian.Uint64(b[14:])
	specLen := int(binary.BigEndian.Uint16(b[22:]))
	if h.Version != streamVersion {
		return h, streamErr("version %d, want %d", h.Version, streamVersion)
	}
	if h.PageSize != PageSize {
		return h, streamErr("page size %d, want %d", h.PageSize, PageSize)
	}
	if h.Pages == 0 || h.Pages > maxPages {
		return h, streamErr("page count %d out of range", h.Pages)
	}
	if specLen == 0 || specLen > maxSpecLen {
		return h, streamErr("spec length %d out of range", specLen)
	}
	spec := make([]byte, specLen)
	if err := d.readFull(spec, "the header's spec"); err != nil {
		return h, err
	}
	if err := strictJSON(spec, &h.Spec); err != nil {
		return h, streamErr("spec: %v", err)
	}
	if h.Spec.Memory/PageSize != h.Pages {
		return h, streamErr("spec memory %d bytes is not %d pages", h.Spec.Memory, h.Pages)
	}
	if err := checkWorkload(h.Spec.Workload); err != nil {
		return h, streamErr("spec: %v", err)
	}
	d.pages, d.state = h.Pages, decRecords
	return h, nil
}

// strictJSON decodes exactly one JSON value with no unknown fields.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func checkWorkload(w hypervisor.Workload) error {
	if w.CPU < 0 || w.CPU > 1 || w.Dirty < 0 || w.Net < 0 {
		return fmt.Errorf("invalid workload %+v", w)
	}
	return nil
}

// next returns the next record. After END it returns io.EOF.
func (d *decoder) next() (*record, error) {
	switch d.state {
	case decHeader:
		return nil, streamErr("header not read")
	case decDone:
		return nil, io.EOF
	}
	if err := d.readFull(d.hdr[:], "a record header"); err != nil {
		return nil, err
	}
	typ, n := d.hdr[0], binary.BigEndian.Uint32(d.hdr[1:])
	var limit uint32
	switch typ {
	case recPages:
		limit = maxPagesBody
	case recRound:
		limit = 4
	case recDevice:
		limit = maxDeviceBody
	case recEnd:
		limit = 32
	default:
		return nil, streamErr("unknown record type %d", typ)
	}
	if n > limit || n == 0 {
		return nil, streamErr("record type %d: length %d out of range (1 … %d)", typ, n, limit)
	}
	if uint32(cap(d.body)) < n {
		d.body = make([]byte, n)
	}
	body := d.body[:n]
	if err := d.readFull(body, recordNames[typ]); err != nil {
		return nil, err
	}
	d.rec = record{Type: typ}
	rec := &d.rec
	switch typ {
	case recPages:
		if d.state != decRecords && d.state != decRoundEnd {
			return nil, streamErr("PAGES after DEVICE")
		}
		if err := d.pagesRecord(body, rec); err != nil {
			return nil, err
		}
		d.state = decRecords
	case recRound:
		if d.state != decRecords && d.state != decRoundEnd {
			return nil, streamErr("ROUND after DEVICE")
		}
		if n != 4 {
			return nil, streamErr("ROUND length %d, want 4", n)
		}
		rec.Round = binary.BigEndian.Uint32(body)
		if rec.Round != d.round+1 {
			return nil, streamErr("ROUND %d after round %d", rec.Round, d.round)
		}
		d.round, d.state = rec.Round, decRoundEnd
	case recDevice:
		if d.state != decRoundEnd {
			return nil, streamErr("DEVICE not right after a ROUND")
		}
		if err := strictJSON(body, &rec.Device); err != nil {
			return nil, streamErr("DEVICE: %v", err)
		}
		if err := d.checkDevice(&rec.Device); err != nil {
			return nil, err
		}
		d.state = decDevice
	case recEnd:
		if d.state != decDevice {
			return nil, streamErr("END not right after DEVICE")
		}
		if n != 32 {
			return nil, streamErr("END length %d, want 32", n)
		}
		copy(rec.Digest[:], body)
		d.state = decDone
	}
	return rec, nil
}

func (d *decoder) checkDevice(s *deviceState) error {
	if err := checkWorkload(s.Workload); err != nil {
		return streamErr("DEVICE: %v", err)
	}
	if s.Touched > d.pages {
		return streamErr("DEVICE: %d touched pages of %d", s.Touched, d.pages)
	}
	if err := new(rand.PCG).UnmarshalBinary(s.RNG); err != nil {
		return streamErr("DEVICE: generator state: %v", err)
	}
	return nil
}

// pagesRecord parses and checks a PAGES body: entries in range, lengths
// exact, payload decompressed within its bound, every page's CRC32C.
func (d *decoder) pagesRecord(body []byte, rec *record) error {
	if len(body) < pagesPrefix {
		return streamErr("PAGES length %d too short", len(body))
	}
	count := int(binary.BigEndian.Uint16(body))
	flags := body[2]
	if count == 0 || count > maxBatch {
		return streamErr("PAGES count %d out of range (1 … %d)", count, maxBatch)
	}
	if flags&^flagZstd != 0 {
		return streamErr("PAGES flags %#x unknown", flags)
	}
	if len(body) < pagesPrefix+count*entryLen {
		return streamErr("PAGES length %d too short for %d entries", len(body), count)
	}
	es := body[pagesPrefix : pagesPrefix+count*entryLen]
	d.entries = d.entries[:0]
	ndata := 0
	for i := 0; i < count; i++ {
		b := es[i*entryLen:]
		e := pageEntry{Page: binary.BigEndian.Uint32(b), Kind: b[4], CRC: binary.BigEndian.Uint32(b[5:])}
		if uint64(e.Page) >= d.pages {
			return streamErr("page %d out of range (%d pages)", e.Page, d.pages)
		}
		switch e.Kind {
		case kindZero:
			if e.CRC != zeroCRC {
				return streamErr("zero page %d with CRC32C %08x", e.Page, e.CRC)
			}
		case kindData:
			ndata++
		default:
			return streamErr("page %d: unknown kind %d", e.Page, e.Kind)
		}
		d.entries = append(d.entries, e)
	}
	payload := body[pagesPrefix+count*entryLen:]
	want := ndata * PageSize
	if flags&flagZstd == 0 {
		if len(payload) != want {
			return streamErr("PAGES payload %d bytes, want %d for %d data pages", len(payload), want, ndata)
		}
		rec.Data = payload
	} else {
		if ndata == 0 || len(payload) == 0 || len(payload) >= want {
			return streamErr("compressed PAGES payload %d bytes for %d data pages", len(payload), ndata)
		}
		z, err := zstdDecoder()
		if err != nil {
			return fmt.Errorf("simvm: zstd: %w", err)
		}
		if cap(d.data) < want {
			d.data = make([]byte, maxBatch*PageSize)
		}
		out, err := z.DecodeAll(payload, d.data[:0:want])
		if err != nil {
			return streamErr("bad zstd payload: %v", err)
		}
		if len(out) != want {
			return streamErr("zstd payload decodes to %d bytes, want %d", len(out), want)
		}
		rec.Data = out
	}
	k := 0
	for _, e := range d.entries {
		if e.Kind != kindData {
			continue
		}
		if c := crc32.Checksum(rec.Data[k*PageSize:(k+1)*PageSize], castagnoli); c != e.CRC {
			return streamErr("page %d: CRC32C %08x, entry says %08x (corrupted in transit)", e.Page, c, e.CRC)
		}
		k++
	}
	rec.Entries = d.entries
	return nil
}
