package console

import (
	"net/netip"
	"testing"
	"time"
)

// Failed logins: LoginFailures in a window block the source (its /64 on
// IPv6) until the window ends; the table never holds more than
// maxLimitEntries sources, however many addresses fail.
func TestLoginFailures(t *testing.T) {
	f := newFailures()
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr("2001:db8::1")
	sibling := netip.MustParseAddr("2001:db8::ffff")
	for range LoginFailures {
		if f.blocked(a, now) {
			t.Fatal("blocked before its failures were used up")
		}
		f.fail(a, now)
	}
	if !f.blocked(sibling, now) {
		t.Fatal("another address of the same /64 is not blocked")
	}
	if f.blocked(netip.MustParseAddr("192.0.2.1"), now) {
		t.Fatal("an unrelated address is blocked")
	}
	if f.blocked(a, now.Add(LoginWindow)) {
		t.Fatal("still blocked after the window")
	}
	for i := range maxLimitEntries + 500 {
		f.fail(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now.Add(time.Duration(i)*time.Microsecond))
	}
	if n := len(f.m); n > maxLimitEntries {
		t.Fatalf("%d sources held, bound %d", n, maxLimitEntries)
	}
}
