package agent

import (
	"context"
	"crypto/rand"

	"github.com/ferry-vm/ferry/internal/sudp"
)

// DialForTest lets a test make from's endpoint dial another agent directly
// with a made-up ticket, as an agent the MMC never introduced would.
func DialForTest(from *Agent) func(ctx context.Context, to *Agent) (*sudp.Conn, error) {
	return func(ctx context.Context, to *Agent) (*sudp.Conn, error) {
		var key, psk [32]byte
		copy(key[:], to.static.Public)
		_, _ = rand.Read(psk[:])
		return from.ep.Dial(ctx, to.ep.LocalAddr().String(), key, psk)
	}
}

// CutLinkForTest ends the direct link of topic abruptly, as a failed path
// would (both sides see it end).
func CutLinkForTest(a *Agent, topic string) bool {
	l := a.peers.link(topic)
	if l == nil {
		return false
	}
	_ = l.c.CloseWithError(1, "link cut by a test")
	return true
}

// LinkForTest is the open direct link of topic (nil if none).
func LinkForTest(a *Agent, topic string) *sudp.Conn {
	if l := a.peers.link(topic); l != nil {
		return l.c
	}
	return nil
}
