package console

import (
	"net/netip"
	"sync"
	"time"
)

// Failed logins are limited per source: LoginFailures in LoginWindow, then
// refused until the window ends. Only failures count (an operator's
// logins never lock anyone out), and a source is its /64 on IPv6 (one
// host holds many addresses there). The table holds at most
// maxLimitEntries sources; past it the stalest is forgotten.
const (
	LoginFailures   = 10
	LoginWindow     = time.Minute
	maxLimitEntries = 4096
)

type failures struct {
	mu sync.Mutex
	m  map[netip.Addr]*failWindow
}

type failWindow struct {
	start time.Time
	n     int
}

func newFailures() *failures { return &failures{m: map[netip.Addr]*failWindow{}} }

func limitKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// blocked reports whether ip has used up its failures in this window.
func (f *failures) blocked(ip netip.Addr, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.m[limitKey(ip)]
	return w != nil && now.Sub(w.start) < LoginWindow && w.n >= LoginFailures
}

// fail counts a failed login from ip.
func (f *failures) fail(ip netip.Addr, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := limitKey(ip)
	w := f.m[k]
	if w == nil || now.Sub(w.start) >= LoginWindow {
		if w == nil && len(f.m) >= maxLimitEntries {
			f.evictLocked(now)
		}
		w = &failWindow{start: now}
		f.m[k] = w
	}
	w.n++
}

// evictLocked drops expired windows, or the oldest one if none expired.
func (f *failures) evictLocked(now time.Time) {
	var oldest netip.Addr
	var at time.Time
	for k, w := range f.m {
		if now.Sub(w.start) >= LoginWindow {
			delete(f.m, k)
			continue
		}
		if at.IsZero() || w.start.Before(at) {
			oldest, at = k, w.start
		}
	}
	if len(f.m) >= maxLimitEntries {
		delete(f.m, oldest)
	}
}
