package message

// The control protocol's version: what the messages of this package mean
// between an agent and an MMC. A release that changes a message so that
// the other side would misread it raises ProtocolVersion; one that can
// still serve the older peers keeps MinProtocolVersion. An MMC refuses
// the login of an agent outside [MinProtocolVersion, ProtocolVersion]
// with the reason (upgrade order: MMCs first, then agents — so an MMC
// always speaks what its agents speak). Releases within one protocol
// interoperate whatever their version strings; the MMC shows each
// agent's release, and flags those that differ from its own.
const (
	ProtocolVersion    = 1
	MinProtocolVersion = 1
)

// AgentProtocol is the protocol an agent's Hello says it speaks: agents
// from before the field speak protocol 1.
func AgentProtocol(h Hello) uint16 { return max(h.Protocol, 1) }
