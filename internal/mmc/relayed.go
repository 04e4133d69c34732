package mmc

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/message"
	"github.com/ferry-vm/ferry/internal/punch"
	"github.com/ferry-vm/ferry/internal/relay"
	"github.com/ferry-vm/ferry/internal/store"
)

// RelayConfig runs a relay inside the MMC: two UDP ports per relayed link
// from [PortLo, PortHi] on IP (which agents must reach; the firewall
// opens that range inbound).
type RelayConfig struct {
	IP             netip.Addr
	PortLo, PortHi uint16
	Limits         relay.Limits
}

// openRelay starts the embedded relay, if configured. Its address
// defaults to the MMC's SUDP listen address.
func (s *Server) openRelay() error {
	rc := s.cfg.Relay
	if rc == nil {
		return nil
	}
	ip := rc.IP
	if !ip.IsValid() || ip.IsUnspecified() {
		ip = s.ep.LocalAddr().Addr()
	}
	if ip.IsUnspecified() {
		return errors.New("mmc: the relay needs an address agents reach (--relay-ip): the MMC listens on every address")
	}
	r, err := relay.New(relay.Config{ListenIP: ip, Advertise: ip, PortLo: rc.PortLo, PortHi: rc.PortHi, Limits: rc.Limits, Logger: s.log})
	if err != nil {
		return fmt.Errorf("mmc: relay: %w", err)
	}
	s.linkRelay = r
	return nil
}

// relayedLinks are the relay allocations of open jobs, by topic, released
// when the job ends (the relay's idle expiry is the backstop).
type relayedLinks struct {
	mu    sync.Mutex
	alloc map[string]relay.AllocID
}

// allocate reserves relay ports for topic's link: a for the dialer, b for
// the listener, with their bind keys.
func (s *Server) allocateRelay(ctx context.Context, topic string) (al relay.Allocation, keyA, keyB [relay.KeySize]byte, err error) {
	if _, err = rand.Read(keyA[:]); err != nil {
		return
	}
	if _, err = rand.Read(keyB[:]); err != nil {
		return
	}
	if al, err = s.linkRelay.Allocate(ctx, keyA, keyB); err != nil {
		return
	}
	s.releaseRelay(topic) // a retried introduction replaces its allocation
	s.relayed.mu.Lock()
	defer s.relayed.mu.Unlock()
	if s.relayed.alloc == nil {
		s.relayed.alloc = map[string]relay.AllocID{}
	}
	s.relayed.alloc[topic] = al.ID
	return
}

// releaseRelay frees topic's relay ports, if it has any.
func (s *Server) releaseRelay(topic string) {
	if s.linkRelay == nil {
		return
	}
	s.relayed.mu.Lock()
	id, ok := s.relayed.alloc[topic]
	delete(s.relayed.alloc, topic)
	s.relayed.mu.Unlock()
	if ok {
		_ = s.linkRelay.Release(id)
	}
}

// DefaultLinkUpgradeEvery is how often the MMC tries to move a relayed
// link to a direct path while it lives (Config.LinkUpgradeEvery).
const DefaultLinkUpgradeEvery = 30 * time.Second

// upgradeLink makes one attempt at moving topic's relayed link to a
// direct path: both agents punch at one moment, as for an introduction;
// the listener punches (peer.punch), the dialer probes the listener's
// public address on the link (peer.upgrade) and answers once the link
// moved. A fresh ticket only derives the punches' token: the link keeps
// its keys.
func (s *Server) upgradeLink(ctx context.Context, topic string, ls, ds *session) error {
	var ticket [32]byte
	if _, err := rand.Read(ticket[:]); err != nil {
		return err
	}
	defer clear(ticket[:])
	now := s.cfg.Now()
	punchAt, window := punchTiming(now, ls, ds)
	lkey, dkey := ls.c.Session().PeerStatic, ds.c.Session().PeerStatic
	expires := now.Add(introTTL).UnixNano()
	// Both at once, as for an introduction (punch.Start).
	punched := make(chan error, 1)
	go func() {
		_, err := s.actSession(ctx, ls, message.Action{Op: "peer.punch", Intro: &message.Introduction{Topic: topic, PeerID: ds.id,
			PeerAddr: ds.c.RemoteAddr().String(), PeerKey: dkey[:], Ticket: ticket[:], Expires: expires, PunchAt: punchAt, Window: window}})
		punched <- err
	}()
	_, uerr := s.actSession(ctx, ds, message.Action{Op: "peer.upgrade", Intro: &message.Introduction{Topic: topic, PeerID: ls.id,
		PeerAddr: ls.c.RemoteAddr().String(), PeerKey: lkey[:], Ticket: ticket[:], Expires: expires, PunchAt: punchAt, Window: window}})
	if err := errors.Join(<-punched, uerr); err != nil {
		return err
	}
	s.metrics.links.WithLabelValues("upgraded").Inc()
	_ = s.postAsMMC(ctx, topic, board.KindNote, board.Note{Text: "the relayed link moved to a direct path"})
	s.audit.add(store.AuditEntry{Actor: "mmc", Action: "peer.upgrade", Target: topic, Outcome: "ok", Detail: ds.id + " → " + ls.id + " (direct)"})
	return nil
}

// punchTiming is when listener ls and dialer ds start punching (Unix ns,
// MMC clock) and for how long (ns), from their sessions' RTTs.
func punchTiming(now time.Time, ls, ds *session) (at, window int64) {
	lrtt, drtt := ls.c.Stats().SmoothedRTT, ds.c.Stats().SmoothedRTT
	return punch.Start(now, lrtt, drtt).UnixNano(), int64(punch.Window(lrtt, drtt))
}
