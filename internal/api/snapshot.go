package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"
	"time"
)

// A snapshot of the MMC cluster's store (`ferry ctl mmcs snapshot`,
// GET /v1/cluster/snapshot) is a file `ferry mmc restore` turns back into
// a data directory. It is the bbolt database as of one commit, framed so
// that a restore can check, before it writes anything, that the file is
// whole, unaltered by accident and of a format it knows:
//
//	offset  size  field
//	0       8     magic "FERRYSNP"
//	8       2     format version, big-endian (SnapshotVersion)
//	10      6     reserved, zero
//	16      16    cluster id (the MMC's cluster.id, raw)
//	32      8     raft applied index of the image
//	40      8     fencing term of the image (store.FenceTerm)
//	48      8     taken at, Unix nanoseconds (the leader's clock)
//	56      8     image length L in bytes
//	64      L     image: the database file (store.Snapshot.WriteTo)
//	64+L    32    SHA-256 of bytes [0, 64+L): header and image
//
// The trailer lets the leader stream the image as it reads it and the
// reader verify it as it writes it. The hash detects damage, not an
// adversary: whoever can rewrite the file can rewrite the hash (the file
// holds every agent's key: keep it where only the operator can read it).

// SnapshotHeaderSize is the fixed header's length.
const SnapshotHeaderSize = 64

// SnapshotTrailerSize is the trailer's length (a SHA-256).
const SnapshotTrailerSize = sha256.Size

// SnapshotVersion is the only format version this build reads and writes.
const SnapshotVersion = 1

// MaxSnapshotImage bounds the image length a header may announce (a
// header is parsed before the image is read: a corrupt length must not
// make a restore wait for, or a reader allocate, terabytes).
const MaxSnapshotImage = 1 << 40

// snapshotMagic opens every snapshot file.
var snapshotMagic = [8]byte{'F', 'E', 'R', 'R', 'Y', 'S', 'N', 'P'}

// Errors of ParseSnapshotHeader and VerifySnapshot; every failure wraps
// ErrSnapshot.
var (
	ErrSnapshot             = errors.New("snapshot")
	ErrSnapshotMagic        = fmt.Errorf("%w: not a Ferry MMC snapshot (bad magic)", ErrSnapshot)
	ErrSnapshotVersion      = fmt.Errorf("%w: unsupported format version", ErrSnapshot)
	ErrSnapshotTruncated    = fmt.Errorf("%w: truncated", ErrSnapshot)
	ErrSnapshotChecksum     = fmt.Errorf("%w: SHA-256 mismatch (the file is damaged)", ErrSnapshot)
	ErrSnapshotMalformed    = fmt.Errorf("%w: malformed header", ErrSnapshot)
	ErrSnapshotTrailingData = fmt.Errorf("%w: data after the checksum", ErrSnapshot)
)

// SnapshotHeader describes a snapshot's image.
type SnapshotHeader struct {
	Version      uint16
	ClusterID    [16]byte
	AppliedIndex uint64
	FenceTerm    uint64
	TakenAt      time.Time
	ImageLen     int64
}

// ClusterIDHex is the cluster id as the MMC's cluster.id file holds it.
func (h SnapshotHeader) ClusterIDHex() string { return fmt.Sprintf("%x", h.ClusterID[:]) }

// AppendBinary appends the encoded header (SnapshotHeaderSize bytes).
func (h SnapshotHeader) AppendBinary(b []byte) ([]byte, error) {
	if h.ImageLen < 0 || h.ImageLen > MaxSnapshotImage {
		return b, fmt.Errorf("%w: image length %d out of range", ErrSnapshotMalformed, h.ImageLen)
	}
	b = append(b, snapshotMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, SnapshotVersion)
	b = append(b, make([]byte, 6)...)
	b = append(b, h.ClusterID[:]...)
	b = binary.BigEndian.AppendUint64(b, h.AppliedIndex)
	b = binary.BigEndian.AppendUint64(b, h.FenceTerm)
	b = binary.BigEndian.AppendUint64(b, uint64(h.TakenAt.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(h.ImageLen))
	return b, nil
}

// ParseSnapshotHeader decodes the fixed header at the start of b (b may
// hold more). It refuses another magic, another version, non-zero
// reserved bytes and an image length out of range.
func ParseSnapshotHeader(b []byte) (SnapshotHeader, error) {
	var h SnapshotHeader
	if len(b) < SnapshotHeaderSize {
		if !bytes.HasPrefix(snapshotMagic[:], b[:min(len(b), len(snapshotMagic))]) {
			return h, ErrSnapshotMagic
		}
		return h, ErrSnapshotTruncated
	}
	if !bytes.Equal(b[:8], snapshotMagic[:]) {
		return h, ErrSnapshotMagic
	}
	h.Version = binary.BigEndian.Uint16(b[8:10])
	if h.Version != SnapshotVersion {
		return h, fmt.Errorf("%w %d (this build reads version %d)", ErrSnapshotVersion, h.Version, SnapshotVersion)
	}
	if !bytes.Equal(b[10:16], make([]byte, 6)) {
		return h, fmt.Errorf("%w: reserved bytes are not zero", ErrSnapshotMalformed)
	}
	copy(h.ClusterID[:], b[16:32])
	h.AppliedIndex = binary.BigEndian.Uint64(b[32:40])
	h.FenceTerm = binary.BigEndian.Uint64(b[40:48])
	h.TakenAt = time.Unix(0, int64(binary.BigEndian.Uint64(b[48:56]))).UTC()
	n := binary.BigEndian.Uint64(b[56:64])
	if n > MaxSnapshotImage {
		return h, fmt.Errorf("%w: image length %d above the limit %d", ErrSnapshotMalformed, n, int64(MaxSnapshotImage))
	}
	h.ImageLen = int64(n)
	return h, nil
}

// SnapshotWriter frames an image: NewSnapshotWriter writes the header,
// Write the image (exactly ImageLen bytes), Close the trailer.
type SnapshotWriter struct {
	w       io.Writer
	sum     hash.Hash
	left    int64
	written int64
}

// NewSnapshotWriter writes h's header to w and returns the writer of the
// image.
func NewSnapshotWriter(w io.Writer, h SnapshotHeader) (*SnapshotWriter, error) {
	hdr, err := h.AppendBinary(make([]byte, 0, SnapshotHeaderSize))
	if err != nil {
		return nil, err
	}
	sw := &SnapshotWriter{w: w, sum: sha256.New(), left: h.ImageLen}
	sw.sum.Write(hdr)
	if _, err := w.Write(hdr); err != nil {
		return nil, err
	}
	sw.written = int64(len(hdr))
	return sw, nil
}

// Write writes image bytes; more than the header announced is an error.
func (sw *SnapshotWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > sw.left {
		return 0, fmt.Errorf("%w: image longer than the %d bytes announced", ErrSnapshotMalformed, sw.written-SnapshotHeaderSize+sw.left)
	}
	n, err := sw.w.Write(p)
	sw.sum.Write(p[:n])
	sw.left -= int64(n)
	sw.written += int64(n)
	return n, err
}

// Close writes the trailer; the image must be complete.
func (sw *SnapshotWriter) Close() error {
	if sw.left != 0 {
		return fmt.Errorf("%w: image %d bytes short", ErrSnapshotMalformed, sw.left)
	}
	n, err := sw.w.Write(sw.sum.Sum(nil))
	sw.written += int64(n)
	return err
}

// Written is how many bytes went to the underlying writer.
func (sw *SnapshotWriter) Written() int64 { return sw.written }

// SnapshotInfo is a verified snapshot.
type SnapshotInfo struct {
	SnapshotHeader
	SHA256 [32]byte // the trailer
	Size   int64    // the whole file's length
}

// VerifySnapshot reads a whole snapshot from r, writes its image to
// image (nil: discarded) as it goes, and checks its framing and hash.
// Nothing of the image can be trusted unless it returns nil: a caller
// writing the image somewhere discards it on error. It reads at most
// the announced length plus one byte past the trailer (to refuse
// trailing data).
func VerifySnapshot(r io.Reader, image io.Writer) (SnapshotInfo, error) {
	var info SnapshotInfo
	if image == nil {
		image = io.Discard
	}
	hdr := make([]byte, SnapshotHeaderSize)
	if n, err := io.ReadFull(r, hdr); err != nil {
		if _, perr := ParseSnapshotHeader(hdr[:n]); perr != nil && !errors.Is(perr, ErrSnapshotTruncated) {
			return info, perr
		}
		return info, readErr(err)
	}
	h, err := ParseSnapshotHeader(hdr)
	if err != nil {
		return info, err
	}
	info.SnapshotHeader = h
	sum := sha256.New()
	sum.Write(hdr)
	if _, err := io.CopyN(io.MultiWriter(image, sum), r, h.ImageLen); err != nil {
		return info, readErr(err)
	}
	var trailer [SnapshotTrailerSize]byte
	if _, err := io.ReadFull(r, trailer[:]); err != nil {
		return info, readErr(err)
	}
	if subtle.ConstantTimeCompare(sum.Sum(nil), trailer[:]) != 1 {
		return info, ErrSnapshotChecksum
	}
	var extra [1]byte
	if n, _ := io.ReadFull(r, extra[:]); n > 0 {
		return info, ErrSnapshotTrailingData
	}
	info.SHA256 = trailer
	info.Size = SnapshotHeaderSize + h.ImageLen + SnapshotTrailerSize
	return info, nil
}

// readErr names a short read as truncation.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrSnapshotTruncated
	}
	return fmt.Errorf("%w: %w", ErrSnapshot, err)
}

// SnapshotTimeout bounds a snapshot download (the API's other calls are
// bounded by 30 s; a large store over a slow link takes longer).
const SnapshotTimeout = 10 * time.Minute

// Snapshot downloads a consistent snapshot of the cluster's store (taken
// by the leader after a raft barrier: every write acknowledged before
// the call is in it) and writes it, verified, to w. w receives the
// bytes as they arrive: on error its content must be discarded.
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (SnapshotInfo, error) {
	hc := http.Client{}
	if c.HTTP != nil {
		hc = *c.HTTP
	}
	hc.Timeout = SnapshotTimeout
	hc.CheckRedirect = refuseRedirect
	retryUntil := time.Now().Add(c.retryFor())
	var resp *http.Response
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(c.Base, "/")+"/v1/cluster/snapshot", nil)
		if err != nil {
			return SnapshotInfo{}, err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		if resp, err = hc.Do(req); err != nil {
			return SnapshotInfo{}, fmt.Errorf("admin API: %w", err)
		}
		wait, retry := retryAfter(resp)
		if !retry || time.Now().Add(wait).After(retryUntil) {
			break
		}
		resp.Body.Close()
		select {
		case <-ctx.Done():
			return SnapshotInfo{}, fmt.Errorf("admin API: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e Error
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return SnapshotInfo{}, &StatusError{Status: resp.StatusCode, Message: e.Error}
	}
	// The image goes to w with the header and trailer around it: the
	// file is what the leader sent, verified on the way.
	info, err := VerifySnapshot(io.TeeReader(resp.Body, w), nil)
	if err != nil {
		return info, fmt.Errorf("admin API: %w", err)
	}
	return info, nil
}
