// Package console is the MMC's web console: a page served from the binary
// (no build step, no third-party script) on the admin listener, a client
// of the admin API like `ferry ctl`.
//
// Security model. The login takes the admin token (the API's credential)
// and gives the browser a session cookie — HttpOnly (no script reads it),
// SameSite=Strict (no other site's page sends it), Secure when the admin
// API is TLS — that names a server-side session; the token itself never
// reaches the browser again. Every state-changing request also carries the
// session's anti-CSRF token in a header, compared in constant time, and
// an Origin header, when present, must be this listener's. Pages are sent
// with a Content-Security-Policy that allows only the console's own script
// and style (no inline script, no eval, no framing), so an injected string
// cannot run. Requests the console forwards to the API carry the admin
// token server-side; the API applies its own checks and audit as for any
// client, and on a follower forwards them to the leader.
package console

import (
	"bytes"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// CookieName is the session cookie's name.
const CookieName = "ferry_console"

// CSRFHeader carries the session's anti-CSRF token on every request that
// changes something.
const CSRFHeader = "X-CSRF-Token"

// CSP is the Content-Security-Policy of every console response: the
// console's own script, style and connections, nothing inline, no frames.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Config wires a console to its MMC.
type Config struct {
	// API is the admin API's handler (its /v1 routes); Token its admin
	// token: the login's credential, and what forwarded calls present.
	API   http.Handler
	Token []byte
	// Secure marks the cookie Secure (the admin listener is TLS).
	Secure bool
	// Audit records logins, logouts and refusals.
	Audit  func(action, outcome, source, detail string)
	Now    func() time.Time
	Logger *slog.Logger
	// Tick is how often an event stream sends the state (default 1 s).
	Tick time.Duration
}

// Console serves the web console.
type Console struct {
	cfg      Config
	sessions *sessions
	failed   *failures
	pages    *template.Template
	static   fs.FS
}

// MaxStreamsPerSession bounds the event streams one session holds open
// (a few tabs).
const MaxStreamsPerSession = 4

// New returns a console for cfg.
func New(cfg Config) *Console {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = func(string, string, string, string) {}
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	static, err := fs.Sub(assets, "assets/static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	return &Console{
		cfg:      cfg,
		sessions: newSessions(),
		failed:   newFailures(),
		pages:    template.Must(template.ParseFS(assets, "assets/*.html")),
		static:   static,
	}
}

// Prefix is where the console lives on the admin listener.
const Prefix = "/ui/"

// Handler serves everything under Prefix.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ui/{$}", c.handleIndex)
	mux.HandleFunc("GET /ui/login", c.handleLoginPage)
	mux.HandleFunc("POST /ui/login", c.handleLogin)
	mux.HandleFunc("POST /ui/logout", c.withSession(true, c.handleLogout))
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(c.static)))
	mux.HandleFunc("GET /ui/events", c.withSession(false, c.handleEvents))
	// The API calls the page makes, and only those: a stolen cookie (or
	// a script that got in) cannot mint join tokens, remove members or
	// take a snapshot through the console. Reads the live view needs go
	// in process (stream.go), not through here.
	api := func(pattern string, target func(*http.Request) (string, bool)) {
		mux.HandleFunc(pattern, c.withSession(true, func(w http.ResponseWriter, r *http.Request, _ string, _ *session) {
			path, ok := target(r)
			if !ok {
				writeJSONError(w, http.StatusNotFound, "not available from the console")
				return
			}
			c.forward(w, r, path)
		}))
	}
	api("GET /ui/api/audit", fixed("/v1/audit"))
	api("POST /ui/api/migrations", fixed("/v1/migrations"))
	api("POST /ui/api/agents/{id}/{action}", named("/v1/agents/", "id", "approve", "reject"))
	api("POST /ui/api/migrations/{id}/{action}", named("/v1/migrations/", "id", "cancel", "bandwidth"))
	api("POST /ui/api/alarms/{id}/{action}", named("/v1/alarms/", "id", "ack"))
	mux.HandleFunc("/ui/api/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSONError(w, http.StatusNotFound, "not available from the console")
	})
	mux.HandleFunc("/ui/", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no such page", http.StatusNotFound)
	})
	return headers(mux)
}

// headers sets what every console response carries.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", CSP)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: with no-referrer a browser sends
		// "Origin: null" on form posts, which the origin check must refuse.
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/ui/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

func (c *Console) session(r *http.Request) (string, *session) {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return "", nil
	}
	return ck.Value, c.sessions.get(ck.Value, c.cfg.Now())
}

// withSession requires a live session; with changes, also the session's
// CSRF token (for every method but GET and HEAD) and a same-origin
// Origin header when the browser sends one.
func (c *Console) withSession(changes bool, h func(http.ResponseWriter, *http.Request, string, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cookie, sess := c.session(r)
		if sess == nil {
			c.cfg.Audit("console.request", "denied", source(r), "no session: "+r.Method+" "+r.URL.Path)
			writeJSONError(w, http.StatusUnauthorized, "not logged in (or the session expired): log in at /ui/login")
			return
		}
		if changes && r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !sameOrigin(r) || !sess.checkCSRF(r.Header.Get(CSRFHeader)) {
				c.cfg.Audit("console.request", "denied", source(r), "bad CSRF token or origin: "+r.Method+" "+r.URL.Path)
				writeJSONError(w, http.StatusForbidden, "missing or wrong CSRF token (reload the console)")
				return
			}
		}
		h(w, r, cookie, sess)
	}
}

// sameOrigin: a request's Origin, if it has one, names this listener.
// Browsers send Origin on every cross-origin request and on same-origin
// POSTs; a request without it came from no page.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func (c *Console) handleIndex(w http.ResponseWriter, r *http.Request) {
	_, sess := c.session(r)
	if sess == nil {
		http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
		return
	}
	c.render(w, http.StatusOK, "index.html", map[string]string{"CSRF": sess.csrf})
}

func (c *Console) handleLoginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "login.html", map[string]string{})
}

// handleLogin checks the admin token (constant time, throttled per
// source) and starts a session.
func (c *Console) handleLogin(w http.ResponseWriter, r *http.Request) {
	src := source(r)
	if !sameOrigin(r) {
		c.cfg.Audit("console.login", "denied", src, "cross-origin login form")
		c.render(w, http.StatusForbidden, "login.html", map[string]string{"Error": "This login came from another site's page."})
		return
	}
	ip, _ := netip.ParseAddr(src)
	now := c.cfg.Now()
	if c.failed.blocked(ip, now) {
		c.cfg.Audit("console.login", "denied", src, "throttled: too many failed logins from this address")
		c.render(w, http.StatusTooManyRequests, "login.html", map[string]string{"Error": "Too many failed attempts from this address; wait a minute."})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if tok == "" || subtle.ConstantTimeCompare([]byte(tok), c.cfg.Token) != 1 {
		c.failed.fail(ip, now)
		c.cfg.Audit("console.login", "denied", src, "wrong admin token")
		c.render(w, http.StatusUnauthorized, "login.html", map[string]string{"Error": "Wrong admin token (it is in the MMC's DATA_DIR/admin.token)."})
		return
	}
	cookie, _ := c.sessions.create(c.cfg.Now())
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: cookie, Path: "/ui/", HttpOnly: true, Secure: c.cfg.Secure,
		SameSite: http.SameSiteStrictMode, MaxAge: int(MaxAge / time.Second)})
	c.cfg.Audit("console.login", "ok", src, "")
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

func (c *Console) handleLogout(w http.ResponseWriter, r *http.Request, cookie string, _ *session) {
	c.sessions.end(cookie)
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/ui/", HttpOnly: true, Secure: c.cfg.Secure,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	c.cfg.Audit("console.logout", "ok", source(r), "")
	w.WriteHeader(http.StatusNoContent)
}

// segment is what an id in a console URL may be: the MMC's agent ids,
// migration ids and alarm numbers all are; no "/", no "." or ".."
// segment, so the forwarded path is exactly the one named.
var segment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func fixed(path string) func(*http.Request) (string, bool) {
	return func(*http.Request) (string, bool) { return path, true }
}

// named is prefix + id + "/" + action, for an id that is one plain
// segment and one of the actions allowed.
func named(prefix, idName string, actions ...string) func(*http.Request) (string, bool) {
	return func(r *http.Request) (string, bool) {
		id, action := r.PathValue(idName), r.PathValue("action")
		if !segment.MatchString(id) || !slices.Contains(actions, action) {
			return "", false
		}
		return prefix + id + "/" + action, true
	}
}

// forward passes r to the admin API at path with the admin token; the
// browser's cookie and CSRF token go no further.
func (c *Console) forward(w http.ResponseWriter, r *http.Request, path string) {
	r2 := r.Clone(r.Context())
	r2.URL.Path = path
	r2.URL.RawPath = ""
	r2.RequestURI = ""
	r2.Header.Del("Cookie")
	r2.Header.Del(CSRFHeader)
	r2.Header.Set("Authorization", "Bearer "+string(c.cfg.Token))
	c.cfg.API.ServeHTTP(w, r2)
}

func (c *Console) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := c.pages.ExecuteTemplate(&buf, name, data); err != nil {
		c.cfg.Logger.Error("console: rendering a page", "page", name, "err", err)
		http.Error(w, "console: page error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]string{"error": msg})
	_, _ = w.Write(append(b, '\n'))
}

func source(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
