package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func testHeader(imageLen int) SnapshotHeader {
	return SnapshotHeader{
		Version:      SnapshotVersion,
		ClusterID:    [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		AppliedIndex: 4242,
		FenceTerm:    7,
		TakenAt:      time.Date(2026, 12, 7, 1, 2, 3, 4, time.UTC),
		ImageLen:     int64(imageLen),
	}
}

// frame is a whole snapshot file of image.
func frame(t testing.TB, image []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	sw, err := NewSnapshotWriter(&buf, testHeader(len(image)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Write(image); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	if sw.Written() != int64(buf.Len()) {
		t.Fatalf("Written %d, wrote %d", sw.Written(), buf.Len())
	}
	return buf.Bytes()
}

func TestSnapshotRoundTrip(t *testing.T) {
	image := bytes.Repeat([]byte("bbolt page "), 1000)
	file := frame(t, image)
	if len(file) != SnapshotHeaderSize+len(image)+SnapshotTrailerSize {
		t.Fatalf("file is %d bytes", len(file))
	}
	var got bytes.Buffer
	info, err := VerifySnapshot(bytes.NewReader(file), &got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), image) {
		t.Fatal("the image changed on the way")
	}
	want := testHeader(len(image))
	if info.SnapshotHeader != want {
		t.Fatalf("header %+v, want %+v", info.SnapshotHeader, want)
	}
	if info.SHA256 != sha256.Sum256(file[:len(file)-SnapshotTrailerSize]) || info.Size != int64(len(file)) {
		t.Fatalf("info %+v", info)
	}
	if info.ClusterIDHex() != "0102030405060708090a0b0c0d0e0f10" {
		t.Fatalf("cluster id %s", info.ClusterIDHex())
	}
}

// Every kind of damage is refused, with an error that says which.
func TestVerifySnapshotRefuses(t *testing.T) {
	image := bytes.Repeat([]byte{0xAB}, 4096)
	good := frame(t, image)
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name string
		file []byte
		want error
	}{
		{"empty", nil, ErrSnapshotTruncated},
		{"half a header", good[:30], ErrSnapshotTruncated},
		{"header only", good[:SnapshotHeaderSize], ErrSnapshotTruncated},
		{"image cut", good[:SnapshotHeaderSize+100], ErrSnapshotTruncated},
		{"no trailer", good[:SnapshotHeaderSize+len(image)], ErrSnapshotTruncated},
		{"trailer cut", good[:len(good)-1], ErrSnapshotTruncated},
		{"a flipped image bit", mut(func(b []byte) []byte { b[SnapshotHeaderSize+2000] ^= 1; return b }), ErrSnapshotChecksum},
		{"a flipped trailer bit", mut(func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }), ErrSnapshotChecksum},
		{"an altered applied index", mut(func(b []byte) []byte { b[39]++; return b }), ErrSnapshotChecksum},
		{"an altered cluster id", mut(func(b []byte) []byte { b[20] ^= 0xFF; return b }), ErrSnapshotChecksum},
		{"version 2", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[8:], 2); return b }), ErrSnapshotVersion},
		{"version 0", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[8:], 0); return b }), ErrSnapshotVersion},
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'G'; return b }), ErrSnapshotMagic},
		{"a bbolt file, unframed", image, ErrSnapshotMagic},
		{"reserved bits", mut(func(b []byte) []byte { b[12] = 1; return b }), ErrSnapshotMalformed},
		{"a huge length", mut(func(b []byte) []byte { binary.BigEndian.PutUint64(b[56:], 1<<62); return b }), ErrSnapshotMalformed},
		{"a longer length", mut(func(b []byte) []byte { binary.BigEndian.PutUint64(b[56:], uint64(len(image)+1)); return b }), ErrSnapshotTruncated},
		{"a shorter length", mut(func(b []byte) []byte { binary.BigEndian.PutUint64(b[56:], uint64(len(image)-1)); return b }), ErrSnapshotChecksum},
		{"trailing data", append(bytes.Clone(good), 0), ErrSnapshotTrailingData},
		{"two snapshots", append(bytes.Clone(good), good...), ErrSnapshotTrailingData},
	}
	for _, tc := range cases {
		_, err := VerifySnapshot(bytes.NewReader(tc.file), nil)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if !errors.Is(err, ErrSnapshot) {
			t.Errorf("%s: %v does not wrap ErrSnapshot", tc.name, err)
		}
	}
}

// The writer refuses an image that does not match its header.
func TestSnapshotWriterLength(t *testing.T) {
	var buf bytes.Buffer
	sw, err := NewSnapshotWriter(&buf, testHeader(4))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Write([]byte("12345")); !errors.Is(err, ErrSnapshotMalformed) {
		t.Fatalf("too long: %v", err)
	}
	if _, err := sw.Write([]byte("123")); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); !errors.Is(err, ErrSnapshotMalformed) {
		t.Fatalf("short: %v", err)
	}
	if _, err := NewSnapshotWriter(&buf, testHeader(-1)); err == nil {
		t.Fatal("a negative length was framed")
	}
}

// The client writes what the server sent, verified; a damaged download
// is an error (the caller discards the file).
func TestClientSnapshot(t *testing.T) {
	file := frame(t, []byte("the store"))
	var serve []byte
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/cluster/snapshot" || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, `{"error":"no"}`, http.StatusUnauthorized)
			return
		}
		w.Write(serve)
	}))
	defer hs.Close()
	cl := &Client{Base: hs.URL, Token: "tok"}
	serve = file
	var got bytes.Buffer
	info, err := cl.Snapshot(context.Background(), &got)
	if err != nil || !bytes.Equal(got.Bytes(), file) || info.AppliedIndex != 4242 {
		t.Fatalf("snapshot: %v, %d bytes, %+v", err, got.Len(), info)
	}
	serve = file[:len(file)-5]
	if _, err := cl.Snapshot(context.Background(), &bytes.Buffer{}); !errors.Is(err, ErrSnapshotTruncated) {
		t.Fatalf("a cut download: %v", err)
	}
	cl.Token = "wrong"
	var se *StatusError
	if _, err := cl.Snapshot(context.Background(), &bytes.Buffer{}); !errors.As(err, &se) || se.Status != http.StatusUnauthorized {
		t.Fatalf("a refusal: %v", err)
	}
}

// FuzzParseSnapshotHeader: any input is refused or parsed, never a
// panic; a parsed header encodes back to the same bytes; and a header
// VerifySnapshot accepts never announces more than the limit.
func FuzzParseSnapshotHeader(f *testing.F) {
	hdr, _ := testHeader(9).AppendBinary(nil)
	f.Add(hdr)
	f.Add(frame(f, []byte("123456789")))
	f.Add([]byte("FERRYSNP"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseSnapshotHeader(b)
		if err != nil {
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("error %v does not wrap ErrSnapshot", err)
			}
			return
		}
		if h.ImageLen < 0 || h.ImageLen > MaxSnapshotImage {
			t.Fatalf("image length %d accepted", h.ImageLen)
		}
		enc, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, b[:SnapshotHeaderSize]) {
			t.Fatalf("re-encoded %x, parsed %x", enc, b[:SnapshotHeaderSize])
		}
		// Verification reads what the header announces at most: a
		// short input ends as truncated or damaged, never by reading on.
		if _, err := VerifySnapshot(bytes.NewReader(b), nil); err == nil && int64(len(b)) != SnapshotHeaderSize+h.ImageLen+SnapshotTrailerSize {
			t.Fatalf("verified %d bytes announcing %d", len(b), h.ImageLen)
		}
	})
}
