package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// liveMigrations is how many of the newest migrations the live view
// carries.
const liveMigrations = 50

// stateParts are the API reads one state message gathers: what the
// console's views show live.
var stateParts = []struct{ name, path string }{
	{"agents", "/v1/agents"},
	{"hosts", "/v1/hosts"},
	{"vms", "/v1/vms"},
	{"migrations", "/v1/migrations?limit=" + strconv.Itoa(liveMigrations)},
	{"alarms", "/v1/alarms?order=newest&limit=100"},
	{"decisions", "/v1/policy/decisions"},
	{"policy", "/v1/policy/status"},
}

// handleEvents streams the console's state as server-sent events: a
// "state" event every Tick, until the client goes, the session ends or
// expires. A part the API refuses (an election in progress) is sent as
// an error string in its place; the next tick tries again.
func (c *Console) handleEvents(w http.ResponseWriter, r *http.Request, cookie string, sess *session) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeJSONError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	if !c.sessions.openStream(sess, MaxStreamsPerSession) {
		writeJSONError(w, http.StatusTooManyRequests, fmt.Sprintf("at most %d live views per session", MaxStreamsPerSession))
		return
	}
	defer c.sessions.closeStream(sess)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	t := time.NewTicker(c.cfg.Tick)
	defer t.Stop()
	for {
		if !c.sessions.alive(cookie, c.cfg.Now()) {
			fmt.Fprint(w, "event: logout\ndata: {}\n\n")
			fl.Flush()
			return
		}
		msg, err := c.state(r.Context())
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(w, "event: state\ndata: %s\n\n", msg); err != nil {
			return
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}

// state reads every part through the API and joins them into one JSON
// object.
func (c *Console) state(ctx context.Context) ([]byte, error) {
	out := map[string]json.RawMessage{}
	errs := map[string]string{}
	for _, p := range stateParts {
		body, status, err := c.get(ctx, p.path)
		if err != nil {
			return nil, err
		}
		switch {
		case status != http.StatusOK:
			errs[p.name] = string(bytes.TrimSpace(body))
			continue
		case !json.Valid(body):
			// One part that cannot be read must not end the stream.
			errs[p.name] = "the API sent no valid JSON"
			continue
		}
		out[p.name] = body
	}
	t, _ := json.Marshal(c.cfg.Now().UTC())
	out["time"] = t
	if len(errs) > 0 {
		e, _ := json.Marshal(errs)
		out["errors"] = e
	}
	return json.Marshal(out)
}

// get calls the API in process, as the admin.
func (c *Console) get(ctx context.Context, path string) ([]byte, int, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, 0, err
	}
	req.RemoteAddr = "console"
	req.Header.Set("Authorization", "Bearer "+string(c.cfg.Token))
	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	c.cfg.API.ServeHTTP(rec, req)
	return rec.body.Bytes(), rec.status, nil
}

// recorder is the response of an in-process API call.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}
