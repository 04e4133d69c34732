package message

import (
	"context"
	"errors"
	"fmt"
)

// ErrUnexpected is a message of a type the receiving side has no
// handler for.
var ErrUnexpected = errors.New("message: unexpected")

// Handlers is one side's table of what to do with each message type it
// accepts on a session. Build it with On; a session loop hands every
// envelope to Dispatch.
type Handlers map[Type]func(context.Context, Envelope) error

// On registers f for messages of T's type. The body is decoded and
// checked first: a malformed one never reaches f (Dispatch returns an
// error wrapping ErrMalformed).
func On[T Body](h Handlers, f func(context.Context, T) error) {
	var zero T
	h[zero.Type()] = func(ctx context.Context, e Envelope) error {
		v, err := Decode[T](e)
		if err != nil {
			return err
		}
		return f(ctx, v)
	}
}

// Dispatch runs e's handler: an error wrapping ErrUnexpected if there is
// none, ErrMalformed if its body does not decode, or the handler's.
func (h Handlers) Dispatch(ctx context.Context, e Envelope) error {
	f, ok := h[e.Type]
	if !ok {
		return fmt.Errorf("%w: %v", ErrUnexpected, e.Type)
	}
	return f(ctx, e)
}
