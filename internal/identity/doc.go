// Package identity holds what makes a Ferry node who it is, and the pure
// functions that turn enrolment secrets into session credentials:
//
//   - a static X25519 key pair per node, created on first start and kept in
//     the node's data directory with mode 0600 (keys.go);
//   - the host facts an agent enrols with — hostname, IP and MAC addresses,
//     machine and disk ids — and their comparison at every login (facts.go);
//   - the registration code M the MMC issues on approval, and the keys
//     derived from it with HKDF-SHA-256: the Noise psk K, bound to M and the
//     stable facts (MAC, disk id), and the re-authentication key (psk.go);
//   - the periodic challenge–response of the paper's Fig. 3, bound to the
//     session's handshake hash (reauth.go);
//   - join tokens for pre-approved enrolment, stored only as hashes
//     (token.go);
//   - the bootstrap bundle an administrator hands to agents: MMC addresses,
//     public keys and the cluster id (bundle.go).
//
// Nothing here does I/O except keys.go's file handling; everything else is
// deterministic and table-tested.
package identity
