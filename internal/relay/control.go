package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/ferry-vm/ferry/internal/sudp"
)

// Control of a standalone relay (`ferry relay`): its controller (the MMC)
// dials the relay's SUDP control endpoint, which admits only the
// controllers' static keys, and sends one reliable message per request;
// the relay answers each with one reliable message carrying the request's
// sequence number (docs/protocol.md §18.1). Remote is the controller's
// side, an Allocator like an embedded *Relay.

// MaxControlMessage bounds a control request or reply.
const MaxControlMessage = 1024

// Control operations.
const (
	opAllocate = "allocate"
	opRelease  = "release"
)

// Error codes in control replies, each standing for one of the package's
// errors so that a Remote returns the same errors as an embedded Relay.
var controlErrors = map[string]error{
	"limit":   ErrTooManyAllocations,
	"ports":   ErrNoPorts,
	"unknown": ErrUnknownAlloc,
	"closed":  ErrClosed,
}

// ErrControl is a control reply that reports a failure other than the
// package's errors, or a reply that does not parse.
var ErrControl = errors.New("relay: control")

type controlRequest struct {
	Seq  uint64  `json:"seq"`
	Op   string  `json:"op"`
	KeyA []byte  `json:"key_a,omitempty"`
	KeyB []byte  `json:"key_b,omitempty"`
	ID   AllocID `json:"id,omitempty"`
}

type controlReply struct {
	Seq   uint64  `json:"seq"`
	ID    AllocID `json:"id,omitempty"`
	AddrA string  `json:"addr_a,omitempty"`
	AddrB string  `json:"addr_b,omitempty"`
	Error string  `json:"error,omitempty"` // a code of controlErrors, or "bad_request", "internal"
}

// decodeStrict decodes one JSON object of no unknown fields.
func decodeStrict(b []byte, v any) error {
	if len(b) > MaxControlMessage {
		return fmt.Errorf("%w: message of %d bytes", ErrControl, len(b))
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrControl, err)
	}
	if d.More() {
		return fmt.Errorf("%w: trailing data", ErrControl)
	}
	return nil
}

// parseRequest reads and checks a control request.
func parseRequest(b []byte) (controlRequest, error) {
	var r controlRequest
	if err := decodeStrict(b, &r); err != nil {
		return controlRequest{Seq: r.Seq}, err
	}
	switch r.Op {
	case opAllocate:
		if len(r.KeyA) != KeySize || len(r.KeyB) != KeySize || r.ID != 0 {
			return controlRequest{Seq: r.Seq}, fmt.Errorf("%w: allocate needs two %d-byte keys and no id", ErrControl, KeySize)
		}
	case opRelease:
		if r.ID == 0 || r.KeyA != nil || r.KeyB != nil {
			return controlRequest{Seq: r.Seq}, fmt.Errorf("%w: release needs an id and no keys", ErrControl)
		}
	default:
		return controlRequest{Seq: r.Seq}, fmt.Errorf("%w: unknown op %q", ErrControl, r.Op)
	}
	return r, nil
}

// parseReply reads and checks a control reply.
func parseReply(b []byte) (controlReply, error) {
	var r controlReply
	if err := decodeStrict(b, &r); err != nil {
		return controlReply{}, err
	}
	return r, nil
}

// ServeControl answers the control requests of every connection accepted
// on ep (whose Lookup admits the controllers) with a, until ctx ends. It
// returns once every connection's goroutine has stopped.
func ServeControl(ctx context.Context, ep *sudp.Endpoint, a Allocator, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ep.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: control accept: %w", err)
		}
		log.Info("relay: controller connected", "peer", c.RemoteAddr(), "id", c.Session().PeerID)
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveControlConn(ctx, c, a, log)
		}()
	}
}

func serveControlConn(ctx context.Context, c *sudp.Conn, a Allocator, log *slog.Logger) {
	defer c.Close()
	for {
		msg, err := c.ReceiveMessage(ctx, MaxControlMessage)
		if err != nil {
			if ctx.Err() == nil {
				log.Info("relay: controller gone", "peer", c.RemoteAddr(), "err", err)
			}
			return
		}
		rep := handleControl(ctx, a, msg, log)
		clear(msg)
		out, err := json.Marshal(rep)
		if err != nil {
			log.Error("relay: control reply", "err", err)
			return
		}
		if err := c.SendControl(ctx, out); err != nil {
			return
		}
	}
}

// handleControl runs one request.
func handleControl(ctx context.Context, a Allocator, msg []byte, log *slog.Logger) controlReply {
	req, err := parseRequest(msg)
	defer clear(req.KeyA)
	defer clear(req.KeyB)
	if err != nil {
		log.Warn("relay: bad control request", "err", err)
		return controlReply{Seq: req.Seq, Error: "bad_request"}
	}
	rep := controlReply{Seq: req.Seq}
	switch req.Op {
	case opAllocate:
		al, err := a.Allocate(ctx, [KeySize]byte(req.KeyA), [KeySize]byte(req.KeyB))
		if err != nil {
			rep.Error = errorCode(err)
			return rep
		}
		rep.ID, rep.AddrA, rep.AddrB = al.ID, al.AddrA.String(), al.AddrB.String()
	case opRelease:
		if err := a.Release(req.ID); err != nil {
			rep.Error = errorCode(err)
		}
	}
	return rep
}

func errorCode(err error) string {
	for code, e := range controlErrors {
		if errors.Is(err, e) {
			return code
		}
	}
	return "internal"
}

// Remote is a relay reached over a control connection: the controller's
// Allocator for a standalone relay. Requests are sent one at a time.
type Remote struct {
	conn *sudp.Conn

	mu  sync.Mutex // one request at a time; guards seq
	seq uint64
}

// NewRemote uses conn, a connection to a relay's control endpoint.
func NewRemote(conn *sudp.Conn) *Remote { return &Remote{conn: conn} }

// releaseTimeout bounds a remote Release (the Allocator's Release takes no
// context: an embedded release is immediate).
const releaseTimeout = 10 * time.Second

// Allocate asks the relay for an allocation.
func (r *Remote) Allocate(ctx context.Context, keyA, keyB [KeySize]byte) (Allocation, error) {
	defer clear(keyA[:])
	defer clear(keyB[:])
	rep, err := r.call(ctx, controlRequest{Op: opAllocate, KeyA: keyA[:], KeyB: keyB[:]})
	if err != nil {
		return Allocation{}, err
	}
	a, errA := netip.ParseAddrPort(rep.AddrA)
	b, errB := netip.ParseAddrPort(rep.AddrB)
	if rep.ID == 0 || errA != nil || errB != nil {
		return Allocation{}, fmt.Errorf("%w: allocation reply %+v", ErrControl, rep)
	}
	return Allocation{ID: rep.ID, AddrA: a, AddrB: b}, nil
}

// Release asks the relay to end allocation id.
func (r *Remote) Release(id AllocID) error {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	_, err := r.call(ctx, controlRequest{Op: opRelease, ID: id})
	return err
}

var _ Allocator = (*Remote)(nil)

// call sends req and waits for its reply, skipping late replies to earlier
// requests whose caller gave up.
func (r *Remote) call(ctx context.Context, req controlRequest) (controlReply, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	req.Seq = r.seq
	out, err := json.Marshal(req)
	if err != nil {
		return controlReply{}, err
	}
	err = r.conn.SendControl(ctx, out)
	clear(out)
	if err != nil {
		return controlReply{}, fmt.Errorf("relay: control request: %w", err)
	}
	for {
		msg, err := r.conn.ReceiveMessage(ctx, MaxControlMessage)
		if err != nil {
			return controlReply{}, fmt.Errorf("relay: control reply: %w", err)
		}
		rep, err := parseReply(msg)
		if err != nil {
			return controlReply{}, err
		}
		if rep.Seq < req.Seq {
			continue
		}
		if rep.Seq > req.Seq {
			return controlReply{}, fmt.Errorf("%w: reply to request %d while waiting for %d", ErrControl, rep.Seq, req.Seq)
		}
		if rep.Error != "" {
			if e, ok := controlErrors[rep.Error]; ok {
				return rep, e
			}
			return rep, fmt.Errorf("%w: relay says %q", ErrControl, rep.Error)
		}
		return rep, nil
	}
}
