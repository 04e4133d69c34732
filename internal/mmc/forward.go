package mmc

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ferry-vm/ferry/internal/replica"
)

// Every member answers the admin API (CLI.md: `ferry ctl` against any
// member works for every command). Only the leader serves it: a follower
// forwards each request, as it came, to the leader over an admin stream
// on the members' authenticated SUDP connection (replica.StreamLayer
// DialAdmin) — no second protocol, no TLS between members to pin — and
// relays the answer. The leader checks the bearer token as for any
// request (the token is cluster-wide). A request that arrived over a
// member stream is never forwarded again: a member that lost the
// leadership in between answers 503 and the client retries. Reads on the
// leader are consistent: it confirms with a majority that it still leads
// before answering (raft VerifyLeader), so a deposed leader behind a
// partition never answers from a stale store.

// forwardTimeout bounds a forwarded request (a migration watch polls; a
// long request is a bug).
const forwardTimeout = 30 * time.Second

// forwardGrace is how long a forwarded request may still be answered
// after the leadership moved.
const forwardGrace = time.Second

// fromMemberKey marks requests that arrived over a member stream.
type fromMemberKey struct{}

// forwardedForHeader carries the client's address from the follower that
// forwarded a request (trusted only on a member stream: the audit log
// names the client, not the follower).
const forwardedForHeader = "X-Ferry-Forwarded-For"

// fromMember reports whether r arrived over a member stream.
func fromMember(r *http.Request) bool {
	v, _ := r.Context().Value(fromMemberKey{}).(bool)
	return v
}

// clientAddr is the address of r's client: the forwarding follower's
// word for a forwarded request, the connection's otherwise.
func clientAddr(r *http.Request) string {
	if fromMember(r) {
		if a := r.Header.Get(forwardedForHeader); a != "" {
			return a
		}
	}
	return r.RemoteAddr
}

// leaderOnly serves h on the leader and forwards everywhere else. Reads
// (GET) on a multi-member cluster first confirm the leadership.
func (s *Server) leaderOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.awaitEstablished(r.Context())
		if !s.leading.Load() {
			s.forward(w, r)
			return
		}
		if r.Method == http.MethodGet {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			err := s.repl.node.VerifyLeader(ctx)
			cancel()
			if err != nil {
				if errors.Is(err, replica.ErrNotLeader) {
					s.forward(w, r)
					return
				}
				writeErr(w, http.StatusServiceUnavailable, "this MMC could not confirm it leads the cluster: "+err.Error())
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// forward relays r to the leader.
func (s *Server) forward(w http.ResponseWriter, r *http.Request) {
	if fromMember(r) {
		writeErr(w, http.StatusServiceUnavailable, "the leadership moved; retry")
		return
	}
	addr, id := s.repl.node.Leader()
	if addr == "" || addr == s.repl.addr {
		w.Header().Set("Retry-After", "1")
		writeErr(w, http.StatusServiceUnavailable, "no MMC leads the cluster right now (an election is under way, or a majority of members is unreachable); retry")
		return
	}
	s.metrics.forwarded.Inc()
	// A leader that dies does not answer: the request would wait for
	// the connection's idle timeout. Once this member knows of another
	// leader, the request gets forwardGrace more to be answered (a live
	// leader that handed over its leadership — transfer-leadership —
	// answers at once), then it is abandoned.
	changed := s.lwatch.changed()
	ctx, cancel := context.WithTimeout(r.Context(), forwardTimeout)
	defer cancel()
	moved := make(chan struct{})
	go func() {
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
		select {
		case <-time.After(forwardGrace):
			close(moved)
			cancel()
		case <-ctx.Done():
		}
	}()
	out, err := http.NewRequestWithContext(ctx, r.Method, "http://mmc"+r.URL.RequestURI(), r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	for _, k := range []string{"Authorization", "Content-Type", "Accept"} {
		if v := r.Header.Get(k); v != "" {
			out.Header.Set(k, v)
		}
	}
	out.Header.Set(forwardedForHeader, r.RemoteAddr)
	out.ContentLength = r.ContentLength
	resp, err := s.forwarder(addr).Do(out)
	if err != nil {
		select {
		case <-moved:
			writeErr(w, http.StatusGatewayTimeout, "the leadership moved while the request was forwarded to "+string(id)+
				"; it may or may not have been applied: check, then retry")
		default:
			writeErr(w, http.StatusBadGateway, "forwarding to the leader "+string(id)+": "+err.Error())
		}
		return
	}
	defer resp.Body.Close()
	for _, k := range []string{"Content-Type", "WWW-Authenticate", "Retry-After"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.Header().Set("X-Ferry-Leader", string(id))
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// forwarder is the HTTP client whose connections are admin streams to the
// member at addr.
func (s *Server) forwarder(addr raft.ServerAddress) *http.Client {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if c, ok := s.fwdClients[addr]; ok {
		return c
	}
	if s.fwdClients == nil {
		s.fwdClients = map[raft.ServerAddress]*http.Client{}
	}
	layer := s.repl.layer
	c := &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return layer.DialAdmin(ctx, addr)
			},
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     30 * time.Second,
		},
		// The leader's redirects are its business, never followed here.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       forwardTimeout,
	}
	s.fwdClients[addr] = c
	return c
}

// closeForwarders drops the forwarders' idle connections.
func (s *Server) closeForwarders() {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	for _, c := range s.fwdClients {
		c.CloseIdleConnections()
	}
}

// serveMemberAdmin serves the admin API on the admin streams other
// members open (their forwarded requests, and their calls for this
// member's status), until ctx ends.
func (s *Server) serveMemberAdmin(ctx context.Context, h http.Handler) error {
	ln := s.repl.layer.AdminListener()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), fromMemberKey{}, true)
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if ctx.Err() != nil || isClosedListener(err) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-errc
	return nil
}

func isClosedListener(err error) bool {
	return errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "closed")
}

// establishWait bounds how long a request or a login waits for this
// member to take up a leadership it has just won (establish: a barrier
// and a write), rather than being turned away while no member serves.
const establishWait = 3 * time.Second

// awaitEstablished waits while this member has won an election but not
// yet taken up the leadership.
func (s *Server) awaitEstablished(ctx context.Context) {
	if s.leading.Load() || s.repl == nil || s.repl.node.State() != raft.Leader {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, establishWait)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !s.leading.Load() && s.repl.node.State() == raft.Leader {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
