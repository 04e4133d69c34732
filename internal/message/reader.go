package message

import (
	"context"
	"fmt"
	"time"
)

// Reader receives a connection's messages on its own goroutine and hands
// them over a channel, so that a session loop can select on messages and
// timers together. The goroutine ends when the connection closes or the
// context given to NewReader ends; Stop waits for that.
type Reader struct {
	C    <-chan Envelope // messages in arrival order
	Done <-chan struct{} // closed when the reader stopped; Err says why
	err  error
	stop context.CancelFunc
}

// NewReader starts reading c.
func NewReader(ctx context.Context, c Transport) *Reader {
	ctx, cancel := context.WithCancel(ctx)
	msgs := make(chan Envelope)
	done := make(chan struct{})
	r := &Reader{C: msgs, Done: done, stop: cancel}
	go func() {
		defer close(done)
		for {
			e, err := Receive(ctx, c)
			if err != nil {
				r.err = err
				return
			}
			select {
			case msgs <- e:
			case <-ctx.Done():
				r.err = ctx.Err()
				return
			}
		}
	}()
	return r
}

// Err is why the reader stopped; valid once Done is closed.
func (r *Reader) Err() error { return r.err }

// Stop ends the reader and waits for its goroutine. The caller closes the
// connection (which also ends a Receive in progress).
func (r *Reader) Stop() {
	r.stop()
	<-r.Done
}

// First waits up to timeout for a session's first message, which must be
// a T, and decodes it. kind classifies a failure for counting:
// "malformed", "unexpected", or "" when the peer merely went away.
func First[T Body](ctx context.Context, c Transport, timeout time.Duration) (v T, kind string, err error) {
	want := v.Type()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	env, err := Receive(ctx, c)
	switch {
	case err != nil && isMalformed(err):
		return v, "malformed", err
	case err != nil:
		return v, "", err
	case env.Type != want:
		return v, "unexpected", fmt.Errorf("%v, want %v", env.Type, want)
	}
	v, err = Decode[T](env)
	if err != nil {
		return v, "malformed", err
	}
	return v, "", nil
}
