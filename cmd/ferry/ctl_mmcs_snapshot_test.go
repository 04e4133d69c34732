package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
)

// `ferry ctl mmcs snapshot FILE` writes exactly what the leader sent,
// 0600, only once verified; a damaged download leaves no file (and no
// temporary one) behind and exits 1.
func TestCtlMMCsSnapshot(t *testing.T) {
	var file bytes.Buffer
	image := []byte("a bbolt database")
	sw, err := api.NewSnapshotWriter(&file, api.SnapshotHeader{ClusterID: [16]byte{0xab}, AppliedIndex: 99, FenceTerm: 3,
		TakenAt: time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC), ImageLen: int64(len(image))})
	if err != nil {
		t.Fatal(err)
	}
	sw.Write(image)
	sw.Close()
	serve := file.Bytes()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/cluster/snapshot" || r.Header.Get("Authorization") != "Bearer snap-tok" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Write(serve)
	}))
	defer hs.Close()
	tf := writeToken(t, "snap-tok")
	dir := t.TempDir()
	path := filepath.Join(dir, "c.snap")

	out, errOut, code := runFerryStreams(t, "ctl", "--admin", hs.URL, "--token-file", tf, "mmcs", "snapshot", path, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var v snapshotView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%v: %q", err, out)
	}
	if v.File != path || v.AppliedIndex != 99 || v.FenceTerm != 3 || v.Bytes != int64(len(serve)) || len(v.SHA256) != 64 ||
		v.ClusterID != "ab000000000000000000000000000000" {
		t.Fatalf("view %+v", v)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, serve) {
		t.Fatalf("the file differs from what was sent: %v", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}

	serve = append(bytes.Clone(serve[:len(serve)-1]), serve[len(serve)-1]^1)
	bad := filepath.Join(dir, "bad.snap")
	_, errOut, code = runFerryStreams(t, "ctl", "--admin", hs.URL, "--token-file", tf, "mmcs", "snapshot", bad)
	if code != 1 || !strings.Contains(errOut, "SHA-256 mismatch") {
		t.Fatalf("a damaged download: exit %d, %q", code, errOut)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("the directory holds %v, want only the good snapshot", ents)
	}
}
