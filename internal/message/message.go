// Package message is Ferry's control-message layer over SUDP (the paper's
// "AMP"): typed, versioned messages, each sent as one SUDP message (its own
// unidirectional stream, so a large message never delays a small one).
//
// Encoding: CBOR (RFC 8949) with integer map keys. Like protocol buffers it
// is compact and evolvable — a field is a numbered key, unknown keys are
// skipped, absent keys decode as zero values — but it needs no code
// generator, and the decoder is configured with hard limits (nesting,
// element counts, message size) so a hostile peer cannot make it allocate
// without bound. Every message is an Envelope {1: version, 2: type, 3: body}.
package message

import (
	"context"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Version is the envelope version this code speaks.
const Version = 1

// MaxSize bounds one control message.
const MaxSize = 256 << 10

// Envelope is the outer structure of every message.
type Envelope struct {
	Version uint8           `cbor:"1,keyasint"`
	Type    Type            `cbor:"2,keyasint"`
	Body    cbor.RawMessage `cbor:"3,keyasint"`
}

// ErrMalformed wraps every decoding failure.
var ErrMalformed = errors.New("message: malformed")

// encMode is deterministic (core deterministic encoding), so equal messages
// have equal bytes. Times are RFC 3339 strings with nanoseconds: the core
// options' default (integer Unix seconds) would cut a migration's pause
// and resume times to the second.
var encMode, _ = func() cbor.EncOptions {
	o := cbor.CoreDetEncOptions()
	o.Time = cbor.TimeRFC3339Nano
	return o
}().EncMode()

var decMode, _ = cbor.DecOptions{
	DupMapKey:         cbor.DupMapKeyEnforcedAPF,
	IndefLength:       cbor.IndefLengthForbidden,
	TagsMd:            cbor.TagsForbidden,
	MaxNestedLevels:   8,
	MaxArrayElements:  1024,
	MaxMapPairs:       256,
	ExtraReturnErrors: cbor.ExtraDecErrorNone, // unknown fields are skipped: newer peers may add some
	// No honest peer sends a NaN or an infinity (every rate and share it
	// reports is measured and finite); one that did would poison the
	// MMC's views — JSON has no NaN, so an API listing holding one fails
	// to encode — and comparisons in the policy engine.
	NaN: cbor.NaNDecodeForbidden,
	Inf: cbor.InfDecodeForbidden,
}.DecMode()

// Marshal encodes body as a message of its type.
func Marshal(body Body) ([]byte, error) {
	t := body.Type()
	b, err := encMode.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("message: encode %v: %w", t, err)
	}
	out, err := encMode.Marshal(Envelope{Version: Version, Type: t, Body: b})
	if err != nil {
		return nil, fmt.Errorf("message: encode %v: %w", t, err)
	}
	if len(out) > MaxSize {
		return nil, fmt.Errorf("message: %v is %d bytes, limit %d", t, len(out), MaxSize)
	}
	return out, nil
}

// Unmarshal decodes an envelope.
func Unmarshal(b []byte) (Envelope, error) {
	var e Envelope
	if len(b) > MaxSize {
		return e, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if err := decMode.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if e.Version != Version {
		return e, fmt.Errorf("%w: version %d, want %d", ErrMalformed, e.Version, Version)
	}
	if e.Type == 0 {
		return e, fmt.Errorf("%w: no type", ErrMalformed)
	}
	return e, nil
}

// Decode decodes an envelope's body as T.
func Decode[T any](e Envelope) (T, error) {
	v, err := DecodeBody[T](e.Body)
	if err != nil {
		return v, fmt.Errorf("%v: %w", e.Type, err)
	}
	return v, nil
}

// EncodeBody encodes v as a message body (also the body of blackboard
// entries).
func EncodeBody(v any) ([]byte, error) { return encMode.Marshal(v) }

// DecodeBody decodes and checks a body encoded by EncodeBody.
func DecodeBody[T any](b []byte) (T, error) {
	var v T
	if err := decMode.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if c, ok := any(&v).(interface{ check() error }); ok {
		if err := c.check(); err != nil {
			return v, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
	return v, nil
}

// Transport is what the codec needs of a connection: whole messages
// each way, control messages ahead of bulk data (an SUDP connection;
// anything else in tests).
type Transport interface {
	SendControl(ctx context.Context, b []byte) error
	ReceiveMessage(ctx context.Context, max int) ([]byte, error)
}

// Send sends one message on t.
func Send(ctx context.Context, t Transport, body Body) error {
	b, err := Marshal(body)
	if err != nil {
		return err
	}
	return t.SendControl(ctx, b)
}

// Receive waits for the next message on t and decodes its envelope.
func Receive(ctx context.Context, t Transport) (Envelope, error) {
	b, err := t.ReceiveMessage(ctx, MaxSize)
	if err != nil {
		return Envelope{}, err
	}
	return Unmarshal(b)
}

func isMalformed(err error) bool { return errors.Is(err, ErrMalformed) }
