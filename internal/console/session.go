package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"sync"
	"time"
)

// Session lifetimes: an operator who walks away is logged out after
// IdleTimeout; nobody stays logged in past MaxAge, so a stolen cookie
// is worth a bounded time.
const (
	IdleTimeout = 30 * time.Minute
	MaxAge      = 12 * time.Hour
	// MaxSessions bounds the memory sessions take; past it the least
	// recently used session is dropped (only a holder of the admin token
	// can create one, so this is a bound, not a defence).
	MaxSessions = 64
)

// session is one logged-in browser. Its cookie value is never stored:
// the store keys sessions by the value's SHA-256, so a map lookup's
// timing says nothing about a valid value, and a dump of the store
// holds no usable cookie.
type session struct {
	csrf     string // per-session anti-CSRF token, sent back in a header
	created  time.Time
	lastSeen time.Time
	streams  int // open event streams
}

// sessions is the console's session store.
type sessions struct {
	mu sync.Mutex
	m  map[[32]byte]*session
}

func newSessions() *sessions { return &sessions{m: map[[32]byte]*session{}} }

func randomToken() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("console: crypto/rand failed: " + err.Error()) // cannot happen (Go 1.24+: rand.Read never fails)
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// create starts a session at now and returns its cookie value.
func (s *sessions) create(now time.Time) (cookie string, sess *session) {
	cookie = randomToken()
	sess = &session{csrf: randomToken(), created: now, lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	if len(s.m) >= MaxSessions {
		var oldest [32]byte
		var at time.Time
		for k, v := range s.m {
			if at.IsZero() || v.lastSeen.Before(at) {
				oldest, at = k, v.lastSeen
			}
		}
		delete(s.m, oldest)
	}
	s.m[sha256.Sum256([]byte(cookie))] = sess
	return cookie, sess
}

// get returns the live session of cookie (touching it), or nil.
func (s *sessions) get(cookie string, now time.Time) *session {
	if cookie == "" {
		return nil
	}
	k := sha256.Sum256([]byte(cookie))
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.m[k]
	if sess == nil {
		return nil
	}
	if expired(sess, now) {
		delete(s.m, k)
		return nil
	}
	sess.lastSeen = now
	return sess
}

// end removes cookie's session (logout).
func (s *sessions) end(cookie string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, sha256.Sum256([]byte(cookie)))
}

func (s *sessions) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

func (s *sessions) expireLocked(now time.Time) {
	for k, v := range s.m {
		if expired(v, now) {
			delete(s.m, k)
		}
	}
}

func expired(s *session, now time.Time) bool {
	return now.Sub(s.lastSeen) > IdleTimeout || now.Sub(s.created) > MaxAge
}

// checkCSRF compares a request's token with the session's in constant
// time.
func (s *session) checkCSRF(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) == 1
}

// openStream counts an event stream against the session's bound.
func (s *sessions) openStream(sess *session, max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess.streams >= max {
		return false
	}
	sess.streams++
	return true
}

func (s *sessions) closeStream(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.streams--
}

// alive reports whether cookie's session still lives, without counting
// as activity (an open live view does not keep a session from idling
// out).
func (s *sessions) alive(cookie string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.m[sha256.Sum256([]byte(cookie))]
	return sess != nil && !expired(sess, now)
}
