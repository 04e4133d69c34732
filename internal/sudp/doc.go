// Package sudp is Ferry's secure reliable UDP transport ("Safe UDP" of the
// paper): the blocking, goroutine-safe API over the sans-I/O protocol core in
// package core.
//
// One Endpoint owns one UDP socket. A reader goroutine receives batches of
// datagrams and feeds them to the connections they belong to; each Conn has a
// goroutine that turns the core's output into batched, paced sends and runs
// its timers. Applications use:
//
//   - streams: ordered, reliable byte streams implementing net.Conn
//     (OpenStream / AcceptStream);
//   - messages: reliable messages of any size, each on its own
//     unidirectional stream so that messages never wait for each other
//     (SendMessage / OpenMessage / AcceptMessage / ReceiveMessage);
//   - datagrams: best-effort messages, fragmented, never retransmitted
//     (SendDatagram / ReceiveDatagram).
//
// See docs/protocol.md for the wire format and docs/ARCHITECTURE.md for how
// the pieces fit.
package sudp
