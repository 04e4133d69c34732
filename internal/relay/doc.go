// Package relay forwards SUDP ciphertext between two agents that cannot
// reach each other directly (both behind NATs that defeat hole punching).
//
// It is TURN-like but smaller: for each relayed link the relay holds an
// allocation, a pair of UDP ports (Pa, Pb). Agent A sends its SUDP datagrams
// to relay:Pa, agent B to relay:Pb; for each agent the peer's address simply
// is the relay's port, and SUDP runs end to end between A and B, unchanged.
// The relay never holds a SUDP key: it reads no payload and cannot forge a
// packet that either agent would accept (docs/security.md §6).
//
// Each side first binds its public address — whatever its NAT maps its one
// UDP socket to — by sending a bind datagram (docs/protocol.md §18) from
// that socket to its port. The bind is authenticated with an HMAC under a
// key the MMC gave that agent and the relay for this allocation and side; a
// counter that must grow refuses replays, and a later valid bind moves the
// binding (NAT rebinding). The relay forwards what arrives on Pa from A's
// bound address out of Pb to B's bound address, and the other way round;
// anything else is dropped and counted.
//
// The decisions are a sans-I/O Core (time and datagrams in, actions out);
// Relay is the thin driver owning the sockets, and Client is the agent's
// side, riding on a sudp.Endpoint's socket.
package relay
