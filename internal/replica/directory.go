package replica

import (
	"slices"

	"github.com/hashicorp/raft"
)

// Addrs lists the members' raft addresses, sorted.
func (m *Members) Addrs() []raft.ServerAddress {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]raft.ServerAddress, 0, len(m.byAddr))
	for a := range m.byAddr {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}
