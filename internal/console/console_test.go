package console

import (
	"bufio"
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

const testToken = "s3cret-admin-token"

// fakeAPI records what reaches the API and answers every GET with [].
type fakeAPI struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+testToken {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`[]`))
}

func (f *fakeAPI) last() *http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return nil
	}
	return f.reqs[len(f.reqs)-1]
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type harness struct {
	t      *testing.T
	srv    *httptest.Server
	api    *fakeAPI
	clock  *clock
	audit  []string
	amu    sync.Mutex
	client *http.Client
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, api: &fakeAPI{}, clock: &clock{now: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)}}
	c := New(Config{API: h.api, Token: []byte(testToken), Now: h.clock.Now, Tick: 20 * time.Millisecond,
		Audit: func(action, outcome, source, detail string) {
			h.amu.Lock()
			h.audit = append(h.audit, action+" "+outcome+" "+detail)
			h.amu.Unlock()
		}})
	h.srv = httptest.NewServer(c.Handler())
	t.Cleanup(h.srv.Close)
	jar, _ := cookiejar.New(nil)
	h.client = &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return h
}

func (h *harness) do(method, path string, hdr map[string]string) *http.Response {
	h.t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	res.Body.Close()
	return res
}

func (h *harness) login(token string) *http.Response {
	h.t.Helper()
	res, err := h.client.PostForm(h.srv.URL+"/ui/login", url.Values{"token": {token}})
	if err != nil {
		h.t.Fatal(err)
	}
	res.Body.Close()
	return res
}

var csrfMeta = regexp.MustCompile(`name="csrf-token" content="([^"]+)"`)

// csrf reads the token the index page hands the script.
func (h *harness) csrf() string {
	h.t.Helper()
	res, err := h.client.Get(h.srv.URL + "/ui/")
	if err != nil {
		h.t.Fatal(err)
	}
	defer res.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
	}
	m := csrfMeta.FindStringSubmatch(b.String())
	if m == nil {
		h.t.Fatalf("no CSRF token in the index page (status %d)", res.StatusCode)
	}
	return m[1]
}

// TestConsoleAuth: without a session nothing but the login page is
// served; a wrong token gets no session; the session cookie is HttpOnly
// and SameSite=Strict; every response carries the CSP.
func TestConsoleAuth(t *testing.T) {
	h := newHarness(t)
	for path, want := range map[string]int{"/ui/": http.StatusSeeOther, "/ui/api/audit": http.StatusUnauthorized, "/ui/events": http.StatusUnauthorized} {
		res := h.do("GET", path, nil)
		if res.StatusCode != want {
			t.Errorf("GET %s without a session: %d, want %d", path, res.StatusCode, want)
		}
		if res.Header.Get("Content-Security-Policy") != CSP || res.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: security headers %v", path, res.Header)
		}
	}
	if h.api.last() != nil {
		t.Fatal("a request without a session reached the API")
	}
	if res := h.login("wrong"); res.StatusCode != http.StatusUnauthorized || len(res.Cookies()) != 0 {
		t.Fatalf("wrong token: %d, cookies %v", res.StatusCode, res.Cookies())
	}
	// LoginFailures wrong tokens in a window: then even the right one is
	// refused until the window ends.
	for range LoginFailures - 1 {
		h.login("wrong")
	}
	if res := h.login(testToken); res.StatusCode != http.StatusTooManyRequests || len(res.Cookies()) != 0 {
		t.Fatalf("login after %d failures: %d, cookies %v", LoginFailures, res.StatusCode, res.Cookies())
	}
	h.clock.add(LoginWindow)
	res := h.login(testToken)
	if res.StatusCode != http.StatusSeeOther || len(res.Cookies()) != 1 {
		t.Fatalf("login: %d, cookies %v", res.StatusCode, res.Cookies())
	}
	ck := res.Cookies()[0]
	if ck.Name != CookieName || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Value == testToken || len(ck.Value) < 40 {
		t.Fatalf("session cookie %+v", ck)
	}
	if res := h.do("GET", "/ui/api/audit?order=newest", nil); res.StatusCode != http.StatusOK {
		t.Fatalf("GET through the console: %d", res.StatusCode)
	}
	got := h.api.last()
	if got.URL.Path != "/v1/audit" || got.URL.RawQuery != "order=newest" || got.Header.Get("Cookie") != "" {
		t.Fatalf("the API got %s with cookie %q", got.URL.Path, got.Header.Get("Cookie"))
	}
}

// TestConsoleCSRF: a request that changes something needs the session's
// CSRF token and, if it has an Origin, this listener's.
func TestConsoleCSRF(t *testing.T) {
	h := newHarness(t)
	h.login(testToken)
	tok := h.csrf()
	n := len(h.api.reqs)
	for name, hdr := range map[string]map[string]string{
		"no token":     nil,
		"wrong token":  {CSRFHeader: strings.Repeat("A", len(tok))},
		"cross origin": {CSRFHeader: tok, "Origin": "https://evil.example"},
	} {
		if res := h.do("POST", "/ui/api/agents/x/approve", hdr); res.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, res.StatusCode)
		}
	}
	if len(h.api.reqs) != n {
		t.Fatal("a refused request reached the API")
	}
	if res := h.do("POST", "/ui/api/agents/x/approve", map[string]string{CSRFHeader: tok, "Origin": h.srv.URL}); res.StatusCode != http.StatusOK {
		t.Fatalf("with the token: %d", res.StatusCode)
	}
	if r := h.api.last(); r.Method != "POST" || r.URL.Path != "/v1/agents/x/approve" || r.Header.Get(CSRFHeader) != "" {
		t.Fatalf("forwarded %s %s (csrf header %q)", r.Method, r.URL.Path, r.Header.Get(CSRFHeader))
	}
	// A login form posted from another site's page is refused.
	req, _ := http.NewRequest("POST", h.srv.URL+"/ui/login", strings.NewReader("token="+testToken))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden || len(res.Cookies()) != 0 {
		t.Fatalf("cross-origin login: %d %v", res.StatusCode, res.Cookies())
	}
	h.amu.Lock()
	defer h.amu.Unlock()
	denied := 0
	for _, a := range h.audit {
		if strings.Contains(a, "denied") {
			denied++
		}
	}
	if denied < 4 {
		t.Fatalf("refusals audited: %v", h.audit)
	}
}

// TestConsoleSessionLifetime: a session idles out, ends at logout, and
// the store never holds more than MaxSessions.
func TestConsoleSessionLifetime(t *testing.T) {
	h := newHarness(t)
	h.login(testToken)
	h.clock.add(IdleTimeout - time.Minute)
	if res := h.do("GET", "/ui/api/audit", nil); res.StatusCode != http.StatusOK {
		t.Fatalf("active session: %d", res.StatusCode)
	}
	h.clock.add(IdleTimeout + time.Second)
	if res := h.do("GET", "/ui/api/audit", nil); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("idle session: %d", res.StatusCode)
	}
	h.login(testToken)
	tok := h.csrf()
	if res := h.do("POST", "/ui/logout", map[string]string{CSRFHeader: tok}); res.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d", res.StatusCode)
	}
	if res := h.do("GET", "/ui/api/audit", nil); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout: %d", res.StatusCode)
	}

	s := newSessions()
	now := time.Now()
	first, _ := s.create(now)
	for i := range MaxSessions + 10 {
		s.create(now.Add(time.Duration(i+1) * time.Millisecond))
	}
	if s.len() != MaxSessions || s.get(first, now.Add(time.Second)) != nil {
		t.Fatalf("sessions: %d (the oldest still there: %v)", s.len(), s.get(first, now) != nil)
	}
	cookie, _ := s.create(now)
	if s.get(cookie, now.Add(MaxAge+time.Second)) != nil {
		t.Fatal("a session outlived MaxAge")
	}
}

// TestConsoleEvents: the stream sends the API's state as "state" events,
// and a session holds at most MaxStreamsPerSession streams.
func TestConsoleEvents(t *testing.T) {
	h := newHarness(t)
	h.login(testToken)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bodies []*bufio.Reader
	for range MaxStreamsPerSession {
		req, _ := http.NewRequestWithContext(ctx, "GET", h.srv.URL+"/ui/events", nil)
		res, err := h.client.Do(req)
		if err != nil || res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("stream: %v %v", res, err)
		}
		defer res.Body.Close()
		bodies = append(bodies, bufio.NewReader(res.Body))
	}
	if res := h.do("GET", "/ui/events", nil); res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("stream past the bound: %d", res.StatusCode)
	}
	line, err := bodies[0].ReadString('\n')
	if err != nil || line != "event: state\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	data, err := bodies[0].ReadString('\n')
	for _, part := range []string{`"agents":[]`, `"migrations":[]`, `"alarms":[]`, `"time":`} {
		if err != nil || !strings.Contains(data, part) {
			t.Fatalf("state %q lacks %s (%v)", data, part, err)
		}
	}
	// The session ends: the stream says so and closes.
	h.clock.add(MaxAge + time.Minute)
	for {
		l, err := bodies[1].ReadString('\n')
		if err != nil {
			t.Fatalf("the stream ended without a logout event: %v", err)
		}
		if l == "event: logout\n" {
			break
		}
	}
}

// Only the calls the page makes pass: no join tokens, member removal,
// snapshots or policy changes through a session; an id is one plain
// segment, so an encoded "/" or ".." cannot reach another object.
func TestConsoleAllowlist(t *testing.T) {
	h := newHarness(t)
	h.login(testToken)
	tok := h.csrf()
	hdr := map[string]string{CSRFHeader: tok}
	n := len(h.api.reqs)
	for _, path := range []string{
		"/ui/api/cluster/join-tokens", "/ui/api/tokens", "/ui/api/policy",
		"/ui/api/agents/x/revoke", "/ui/api/agents/x%2F..%2F..%2Fvictim/reject",
		"/ui/api/migrations/m1/delete", "/ui/api/alarms/1%2F..%2F2/ack",
	} {
		if res := h.do("POST", path, hdr); res.StatusCode != http.StatusNotFound {
			t.Errorf("POST %s: %d, want 404", path, res.StatusCode)
		}
	}
	for _, path := range []string{"/ui/api/cluster/snapshot", "/ui/api/agents", "/ui/api/..%2Fmetrics"} {
		if res := h.do("GET", path, nil); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, res.StatusCode)
		}
	}
	if len(h.api.reqs) != n {
		t.Fatalf("%d refused calls reached the API", len(h.api.reqs)-n)
	}
	for path, want := range map[string]string{
		"/ui/api/agents/3f2a9c1b7d4e5f60/approve": "/v1/agents/3f2a9c1b7d4e5f60/approve",
		"/ui/api/migrations/m12/bandwidth":        "/v1/migrations/m12/bandwidth",
		"/ui/api/alarms/42/ack":                   "/v1/alarms/42/ack",
		"/ui/api/migrations":                      "/v1/migrations",
	} {
		if res := h.do("POST", path, hdr); res.StatusCode != http.StatusOK || h.api.last().URL.Path != want {
			t.Errorf("POST %s: %d, forwarded to %s (want %s)", path, res.StatusCode, h.api.last().URL.Path, want)
		}
	}
}
