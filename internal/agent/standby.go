package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/ferry-vm/ferry/internal/message"
)

// standbyRetry spaces attempts to open a standby session.
const standbyRetry = 5 * time.Second

// watchLeader keeps a standby session (message.Hello.Standby) at an MMC
// member other than primary, the one serving this agent, until ctx ends.
// When that member says another member leads, watchLeader calls moved
// with it and returns: the agent's session at primary would otherwise
// notice a dead or deposed leader only at its idle timeout (30 s), while
// the other members elect a new one within a few seconds. A cluster of
// one member has no other member to watch from.
func (a *Agent) watchLeader(ctx context.Context, primary mmcMember, psk [32]byte, hello message.Hello, moved func(message.Member)) {
	defer clear(psk[:])
	hello.Standby = true
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = standbyRetry/2 + rand.N(standbyRetry)
		m, ok := a.mmcs.standbyCandidate(primary, time.Now())
		if !ok {
			continue // the member list may grow (message.Members)
		}
		dctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
		c, err := a.ep.Dial(dctx, m.Addr, m.Key, psk)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Debug("agent: standby session: member did not answer", "mmc", m.Addr, "err", err)
			}
			continue
		}
		leader, err := a.standby(ctx, c, hello, primary)
		closeConn(c)
		if err == nil {
			a.metrics.leaderMoves.Inc()
			a.log.Info("agent: the MMC leadership moved; moving to the new leader", "from", primary.Addr, "leader", leader.Addr, "told_by", m.Addr)
			moved(leader)
			return
		}
		if ctx.Err() == nil {
			a.log.Debug("agent: standby session ended", "mmc", m.Addr, "err", err)
		}
	}
}

// standby runs one standby session until it names a leader other than
// primary (returned) or ends (error).
func (a *Agent) standby(ctx context.Context, c interface {
	message.Transport
}, hello message.Hello, primary mmcMember) (message.Member, error) {
	if err := message.Send(ctx, c, hello); err != nil {
		return message.Member{}, err
	}
	for {
		env, err := message.Receive(ctx, c)
		if err != nil {
			return message.Member{}, err
		}
		if env.Type != message.TypeLeader {
			continue // a newer MMC may send more
		}
		l, err := message.Decode[message.Leader](env)
		if err != nil {
			return message.Member{}, err
		}
		if l.Leader.Addr != primary.Addr || [32]byte(l.Leader.Key) != primary.Key {
			return l.Leader, nil
		}
	}
}

// standbyCandidate picks a member to keep a standby session at: any
// other than primary that is not backing off, at random (the agents of a
// cluster spread over its followers).
func (m *mmcs) standbyCandidate(primary mmcMember, now time.Time) (mmcMember, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ok []mmcMember
	for _, x := range m.list {
		if x.Key == primary.Key || now.Before(m.backoff[x.Key].notBefore) {
			continue
		}
		ok = append(ok, x)
	}
	if len(ok) == 0 {
		return mmcMember{}, false
	}
	return ok[rand.N(len(ok))], true
}
