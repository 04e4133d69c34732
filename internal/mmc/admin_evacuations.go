package mmc

import (
	"encoding/json"
	"net/http"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/evacuation"
)

func (s *Server) apiEvacuation(r evacuation.Record) api.Evacuation {
	return api.Evacuation{Record: r, Summary: evacuation.Summarize(r, s.progressOf(r), s.cfg.Now())}
}

func (s *Server) handleEvacuate(w http.ResponseWriter, r *http.Request) {
	var req api.EvacuateRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
		return
	}
	g, err := s.startEvacuation(evacuation.Request{Scope: req.Scope, Source: req.Source, Target: req.To, PerLink: req.PerLink}, req.Options, "admin")
	if err != nil {
		writeMigErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.Created{ID: g.ID})
}

func (s *Server) handleEvacuations(w http.ResponseWriter, _ *http.Request) {
	gs, err := s.evacuations()
	if err != nil {
		writeInternal(w, err)
		return
	}
	out := make([]api.Evacuation, 0, len(gs))
	for _, g := range gs {
		out = append(out, s.apiEvacuation(g))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleEvacuation(w http.ResponseWriter, r *http.Request) {
	g, err := s.st.Evacuation(r.PathValue("id"))
	if err != nil {
		writeMigErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.apiEvacuation(g))
}

func (s *Server) handleCancelEvacuation(w http.ResponseWriter, r *http.Request) {
	g, err := s.cancelEvacuation(r.PathValue("id"), "admin")
	if err != nil {
		writeMigErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.apiEvacuation(g))
}
