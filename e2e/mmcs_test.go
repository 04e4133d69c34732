package e2e

import (
	"fmt"
	"testing"

	"github.com/ferry-vm/ferry/internal/identity"
)

// TestAgentDialsEveryMember: the bundle names two MMCs and the first is
// down (nothing listens there); a real agent process enrols and comes
// online through the second.
func TestAgentDialsEveryMember(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	b, err := identity.ParseBundle(c.bundle)
	if err != nil {
		t.Fatal(err)
	}
	dead := b.MMCs[0]
	dead.Addr = fmt.Sprintf("127.0.0.1:%d", freePort(t, "udp"))
	b.MMCs = append([]identity.MMCRef{dead}, b.MMCs...)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create"); err != nil {
		t.Fatal(err)
	}
	c.startAgent("m1", "--token", tok.Token, "--bundle", b.Encode())
	c.waitFor("agent online through the second MMC of its bundle", func() bool { a, _ := c.agent("m1"); return a.Online })
}
