package mmc

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/store"
)

// GET /v1/cluster/snapshot (`ferry ctl mmcs snapshot FILE`): a backup of
// the cluster's whole state, for disaster recovery (`ferry mmc restore`,
// restore.go). It runs on the leader (forward.go brings it there from any
// member) and is consistent: after a raft barrier every write
// acknowledged before the request is applied to the leader's store, and
// the image is one bbolt read transaction of it.
//
// The image is first copied into a private temporary file in the data
// directory, then streamed from there: an open snapshot holds a read
// transaction, and bbolt cannot grow its memory map while one is open
// (store.Snapshot), so a slow client reading straight from it could
// stall the leader's writes. The copy is local and quick; the client
// then takes as long as it needs.

// handleSnapshot streams the framed snapshot (api.SnapshotHeader).
func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	err := s.repl.node.Barrier(ctx)
	cancel()
	if err != nil {
		writeClusterErr(w, err)
		return
	}
	spool, hdr, err := s.spoolSnapshot()
	if err != nil {
		s.log.Error("mmc: snapshot", "err", err)
		writeInternal(w, err)
		return
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(api.SnapshotHeaderSize+hdr.ImageLen+api.SnapshotTrailerSize, 10))
	sw, err := api.NewSnapshotWriter(w, hdr)
	if err == nil {
		if _, err = io.Copy(sw, spool); err == nil {
			err = sw.Close()
		}
	}
	outcome, detail := "ok", fmt.Sprintf("index=%d fence-term=%d bytes=%d", hdr.AppliedIndex, hdr.FenceTerm, hdr.ImageLen)
	if err != nil {
		// The status line is gone: the client sees a short body, which
		// its verification refuses.
		outcome, detail = "failed", detail+": "+err.Error()
		s.log.Warn("mmc: sending a snapshot", "client", clientAddr(r), "err", err)
	}
	s.audit.add(store.AuditEntry{Actor: "admin", Action: "mmc.snapshot", Source: clientAddr(r), Outcome: outcome, Detail: detail})
}

// spoolSnapshot copies a snapshot of the store into a temporary file
// (0600, in the data directory; the caller removes it) and returns it
// positioned at its start, with the header describing it.
func (s *Server) spoolSnapshot() (*os.File, api.SnapshotHeader, error) {
	var hdr api.SnapshotHeader
	id, err := hex.DecodeString(s.clusterID)
	if err != nil || len(id) != len(hdr.ClusterID) {
		return nil, hdr, fmt.Errorf("snapshot: the cluster id %q is malformed", s.clusterID)
	}
	copy(hdr.ClusterID[:], id)
	f, err := os.CreateTemp(s.cfg.DataDir, "snapshot-*.tmp")
	if err != nil {
		return nil, hdr, fmt.Errorf("snapshot: %w", err)
	}
	fail := func(err error) (*os.File, api.SnapshotHeader, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, hdr, fmt.Errorf("snapshot: %w", err)
	}
	sn, err := s.st.Snapshot()
	if err != nil {
		return fail(err)
	}
	hdr.TakenAt = s.cfg.Now()
	hdr.AppliedIndex, err = sn.AppliedIndex()
	if err == nil {
		hdr.FenceTerm, err = sn.FenceTerm()
	}
	if err == nil {
		hdr.ImageLen, err = sn.WriteTo(f)
	}
	sn.Close()
	if err != nil {
		return fail(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	return f, hdr, nil
}

// removeSnapshotLeftovers deletes the temporary copies of snapshots a
// previous run was sending when it stopped (they hold the whole store).
func removeSnapshotLeftovers(dataDir string, log *slog.Logger) {
	left, _ := filepath.Glob(filepath.Join(dataDir, "snapshot-*.tmp"))
	for _, f := range left {
		if err := os.Remove(f); err != nil {
			log.Warn("mmc: removing a leftover snapshot copy", "file", f, "err", err)
		}
	}
}
