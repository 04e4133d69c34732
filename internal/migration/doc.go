// Package migration is the live-migration protocol as data: its
// vocabulary (states, agent job phases, roles, ops), the one record that
// the admin API, the store and the orchestrator share, the orders and
// reports that travel between the MMC and the migration agents, and the
// orchestrator itself as a pure state machine (Machine).
//
// Nothing here does I/O. The MMC's driver (internal/mmc) feeds a Machine
// what happened — a reply to an order, a phase an agent posted, a write
// that landed, the clock — and carries out the commands it returns:
// persist the record, send an op to a host, post a note. That is the
// shape of etcd raft's Step/Ready and of this repository's sudp/core and
// policy.Engine.Observe: every protocol decision is table-tested here in
// milliseconds, without agents, sockets or hypervisors.
package migration
